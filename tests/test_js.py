"""The JavaScript driver (js/, the npm package ``edgetrain``) against Python, with Node.js.

Python writes the fixtures (``tests/js_fixtures.py``: ``edgetrain export-web`` folders, 50 batches,
Python's losses and checkpoints); ``node --test`` in ``js/`` runs the package's tests against
onnxruntime-node from npm; then Python checks what Node left behind: the losses equal Python's to
1e-5 over 50 steps, and the checkpoint Node saved restores in Python (Node restores Python's in
``js/test/contract.test.js``). Without node or ``npm ci --prefix js`` these tests skip, or fail
when CI=true (``.ci/web-setup.sh`` installs both).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgetrain as et
import js_fixtures
from edgetrain import format as fmt
from edgetrain.web._export import WEB_FORMAT_VERSION
from edgetrain.web._jsdriver import JS_FILES, find_js_driver

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "js"


def _require_node() -> None:
    missing = []
    if shutil.which("node") is None:
        missing.append("node (Debian package nodejs)")
    if not (JS / "node_modules" / "onnxruntime-node").is_dir():
        missing.append("onnxruntime-node (ONNXRUNTIME_NODE_INSTALL=skip npm ci --prefix js)")
    if missing:
        msg = f"the JS driver tests need {', '.join(missing)}; run .ci/web-setup.sh"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def node_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Fixtures written by Python, then ``node --test`` in js/ on them: (fixtures, out, log)."""
    _require_node()
    fixtures = js_fixtures.write_fixtures(tmp_path_factory.mktemp("js-fixtures"))
    out = tmp_path_factory.mktemp("js-out")
    proc = subprocess.run(["node", "--test"], cwd=JS, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "EDGETRAIN_JS_FIXTURES": str(fixtures),
                                            "EDGETRAIN_JS_OUT": str(out)})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"node --test failed:\n{log[-6000:]}"
    return fixtures, out, log


@pytest.mark.slow
def test_node_test_runs_the_package_tests(node_run: tuple[Path, Path, str]) -> None:
    """Every test file of the package ran, and none failed or was skipped silently."""
    _, _, log = node_run
    counts = {k: int(v) for k, v in re.findall(r"^# (tests|pass|fail|skipped|cancelled) (\d+)$",
                                               log, re.M)}
    assert counts["fail"] == 0 and counts["cancelled"] == 0, log[-3000:]
    assert counts["pass"] == counts["tests"] >= 30, counts
    for name in ("contract", "format", "schema", "entries", "types"):
        assert (JS / "test" / f"{name}.test.js").is_file()
    for title in ("mlp: 50 steps equal Python's losses", "cnn: 50 steps equal Python's losses",
                  "commit rule: a counter that does not go up by exactly one",
                  "train_steps: K steps in one call equal Python's K losses",
                  "browser entry with onnxruntime-web", "React Native entry",
                  "the types compile with the contract"):
        assert re.search(rf"^ok \d+ - {re.escape(title)}", log, re.M), title


@pytest.mark.slow
@pytest.mark.parametrize("model", js_fixtures.MODELS)
def test_node_losses_equal_python(node_run: tuple[Path, Path, str], model: str) -> None:
    fixtures, out, _ = node_run
    python = json.loads((fixtures / model / "python.json").read_text())
    node = json.loads((out / model / "node.json").read_text())
    assert len(node["losses"]) == len(python["losses"]) == js_fixtures.STEPS
    np.testing.assert_allclose(node["losses"], python["losses"], rtol=1e-5, atol=1e-6)
    # Node resumed from Python's checkpoint at step RESTORE_AT and went on as Python did.
    np.testing.assert_allclose(node["resumed"], python["losses"][js_fixtures.RESTORE_AT:],
                               rtol=1e-5, atol=1e-6)
    assert np.mean(node["losses"][-10:]) < 0.75 * np.mean(node["losses"][:10])  # it learns


@pytest.mark.slow
@pytest.mark.parametrize("model", js_fixtures.MODELS)
def test_node_checkpoint_restores_in_python(node_run: tuple[Path, Path, str], model: str,
                                            tmp_path: Path) -> None:
    fixtures, out, _ = node_run
    node = json.loads((out / model / "node.json").read_text())
    ck = out / model / "node.safetensors"
    meta = _checkpoint_meta(ck)
    assert meta["producer"].startswith("edgetrain-js ")
    assert meta["format_version"] == str(fmt.FORMAT_VERSION) and meta["checksum_version"] == "2"
    m = et.load(fixtures / model / "model.onnx")
    assert meta["architecture"] == fmt.identify(m.proto, m.meta).architecture
    m.restore(ck)
    assert m.step == js_fixtures.STEPS
    probe = np.frombuffer((fixtures / model / "data.bin").read_bytes(), dtype=np.float32)
    arrays = json.loads((fixtures / model / "python.json").read_text())["arrays"]
    shape = next(a["shape"] for a in arrays if a["name"] == "probe")
    probe = probe[-int(np.prod(shape)):].reshape(shape)
    name = m.signatures["infer"].inputs[0].name
    np.testing.assert_allclose(m.run("infer", **{name: probe})["logits"].ravel(),
                               node["probe_after"], rtol=1e-5, atol=1e-6)
    # A byte changed anywhere in Node's file: Python refuses it and keeps its state.
    bad = tmp_path / "bad.safetensors"
    raw = bytearray(ck.read_bytes())
    raw[-5] ^= 0x10
    bad.write_bytes(bytes(raw))
    before = m.state()
    with pytest.raises(et.CheckpointError, match="fails its checksum"):
        m.restore(bad)
    for k, v in m.state().items():
        np.testing.assert_array_equal(v, before[k])


def _checkpoint_meta(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    meta: dict[str, Any] = json.loads(raw[8:8 + n])["__metadata__"]
    return meta


def _format_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((ROOT / "src" / "edgetrain" / "format" /
                                         "schema.json").read_text())
    return schema


#: (old, new, steps) cases of the commit rule, both sides of every boundary.
COMMIT_CASES = [(0, 1, 1), (41, 42, 1), (3, 3, 1), (3, 5, 1), (3, 2, 1), (10, 14, 4),
                (10, 13, 4), (10, 15, 4), (10, 11, 4), (0, 0, 0), (2**53 - 1, 2**53, 1)]


def test_js_and_python_agree_on_the_format() -> None:
    """No format constant is restated by hand: the package's schema copy is Python's generated
    schema byte for byte, src/schemas.js embeds it, and the driver's version, checksum version
    and commit rule (one step or K) are Python's."""
    python = (ROOT / "src" / "edgetrain" / "format" / "schema.json").read_bytes()
    assert (JS / "schema" / "format.schema.json").read_bytes() == python
    if shutil.which("node") is None:
        pytest.skip("node (Debian package nodejs) is needed to load the driver's modules")
    subprocess.run(["node", "scripts/sync-schemas.mjs", "--check"], cwd=JS, check=True,
                   timeout=60)
    script = (
        "import * as c from './src/core.js';"
        "import { formatVersion } from './src/checkpoint.js';"
        "const cases = JSON.parse(process.argv[1]);"
        "console.log(JSON.stringify({schema: c.FORMAT_SCHEMA, version: formatVersion(),"
        " checksum: c.CHECKSUM_VERSION, kind: c.CHECKPOINT_KIND,"
        " commits: cases.map(([a, b, k]) => c.committed(BigInt(a), BigInt(b), k))}));")
    out = subprocess.run(["node", "--input-type=module", "-e", script, json.dumps(COMMIT_CASES)],
                         cwd=JS, capture_output=True, text=True, timeout=60, check=True)
    js = json.loads(out.stdout)
    assert js["schema"] == json.loads(python)
    assert js["version"] == fmt.FORMAT_VERSION == 3
    from edgetrain.format import _integrity

    assert js["checksum"] == _integrity.CHECKSUM_VERSION and js["kind"] == fmt.CHECKPOINT_KIND
    assert js["commits"] == [fmt.committed(a, b, k) for a, b, k in COMMIT_CASES]
    assert any(js["commits"]) and not all(js["commits"])


def test_versions_are_stated_once() -> None:
    """The JS driver reads the versions from the schemas; they are Python's constants."""
    spec = _format_schema()["properties"]["format_version"]
    assert spec.get("maximum", spec.get("const")) == fmt.FORMAT_VERSION
    manifest = json.loads((JS / "schema" / "web-manifest.schema.json").read_text())
    assert manifest["properties"]["format_version"] == {"const": WEB_FORMAT_VERSION}
    assert manifest["properties"]["meta"] == {"$ref": "format.schema.json"}
    package = json.loads((JS / "package.json").read_text())
    assert package["name"] == "edgetrain" and package["devDependencies"]["onnxruntime-node"] == \
        "1.30.0"
    lock = json.loads((JS / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/onnxruntime-node"]["version"] == "1.30.0"


def test_export_carries_the_package_driver(tmp_path: Path) -> None:
    """One driver: the browser files of an export are the package's, byte for byte."""
    src = find_js_driver()
    assert src == JS / "src"
    assert not (ROOT / "src" / "edgetrain" / "web" / "static" / "edgetrain.js").exists()
    for name in JS_FILES:
        assert (src / name).is_file()
    from edgetrain.web._jsdriver import driver_files

    files = driver_files()
    for name in JS_FILES:
        assert files[name] == src / name
    assert files["edgetrain.js"] == b"// The edgetrain driver of this page: the browser entry " \
        b"of the edgetrain JS package.\nexport * from './web.js';\n"
    with pytest.raises(et.EdgetrainError, match="JS driver was not found"):
        find_js_driver(tmp_path)
