"""Run the conformance suites and write docs/coverage.md (and their JSON results).

    python tools/coverage.py                       # run all three suites (~1 h on 2 cores)
    python tools/coverage.py --suites onnx_ops     # run one, reuse the others' JSON
    python tools/coverage.py --from-results        # only rewrite the doc from the JSON

The JSON results go to build/conformance/ (``EDGETRAIN_CONFORMANCE_RESULTS`` overrides it);
the slow floor tests of tests/test_conformance_*.py write the same files.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import re
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from conformance import _common, onnx_ops, real_files, zoo  # noqa: E402
from conformance._common import Result  # noqa: E402

SUITES = {"onnx_ops": onnx_ops, "zoo": zoo, "real_files": real_files}
DOC = ROOT / "docs" / "coverage.md"
COMMAND = "python tools/coverage.py"
GOALS = {"onnx_ops": 0.95, "zoo": 0.95, "real_files": 1.0}
TITLES = {"onnx_ops": "ONNX operator test cases", "zoo": "Model zoo",
          "real_files": "Files shipped in PyPI wheels"}
BAD = ("wrong", "crash")


def run(suite: str, progress: bool) -> tuple[list[Result], dict[str, Any]]:
    """Run one suite in this process and store its JSON."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = SUITES[suite].run_all(progress=progress)
    meta = {"seconds": round(time.perf_counter() - start, 1)}
    _common.write_results(suite, results, meta)
    return results, meta


# -- markdown ----------------------------------------------------------------------------------

def _cell(text: Any, limit: int = 160) -> str:
    return _common.one_line(str(text), limit).replace("|", "\\|")


def _pct(n: int, d: int) -> str:
    return f"{n / d:.1%}" if d else "–"


def summary(all_results: dict[str, tuple[list[Result], dict[str, Any]]]) -> list[str]:
    lines = ["| suite | in scope | correct | refused-correctly | refused | wrong | crash | "
             "export-failed | correct share | goal | out of scope | run time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for suite, (results, meta) in all_results.items():
        c = _common.counts(results)
        in_scope = len(results) - c["out-of-scope"]
        good = c["correct"] + c["refused-correctly"]
        secs = meta.get("seconds")
        lines.append(
            f"| {TITLES[suite]} | {in_scope} | {c['correct']} | {c['refused-correctly']} | "
            f"{c['refused']} | {c['wrong']} | {c['crash']} | {c['export-failed']} | "
            f"**{_pct(good, in_scope)}** | ≥ {GOALS[suite]:.0%} | {c['out-of-scope']} | "
            f"{f'{secs / 60:.0f} min' if secs else '–'} |")
    return lines


def onnx_section(results: list[Result]) -> list[str]:
    out = [f"## {TITLES['onnx_ops']}", "",
           _doc_paragraph(onnx_ops.__doc__, "The training problem", "Reading the gradient",
                          "Precision", "Finite differences", "Tolerance", "Kinks",
                          "Not differentiable", "Scope rule"), ""]
    scope = Counter(_rule(r.detail) for r in results if r.status == "out-of-scope")
    out += ["### Out of scope", "", "| rule | cases |", "|---|---:|"]
    out += [f"| {_cell(k)} | {v} |" for k, v in scope.most_common()]
    in_scope = [r for r in results if r.status != "out-of-scope"]
    regimes = Counter(r.info.get("regime", "?") for r in in_scope)
    out += ["", f"In scope: {len(in_scope)} cases ({regimes.get('float64', 0)} in float64, "
            f"{regimes.get('float32', 0)} in float32 where the op's schema has no double).", ""]
    out += _bad_list(in_scope)
    out += ["### Per op", "", "| op | cases | correct | refused-correctly | refused | wrong | "
            "crash | first error |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    by_op: dict[str, list[Result]] = defaultdict(list)
    for r in in_scope:
        by_op[r.group].append(r)
    for op in sorted(by_op):
        rs = by_op[op]
        c = _common.counts(rs)
        first = next((r for r in rs if r.status in ("wrong", "crash", "refused")), None)
        out.append(f"| {op} | {len(rs)} | {c['correct']} | {c['refused-correctly']} | "
                   f"{c['refused']} | {c['wrong']} | {c['crash']} | "
                   f"{_cell(f'{first.name}: {first.detail}') if first else ''} |")
    return out


def _rule(detail: str) -> str:
    """The scope rule of an out-of-scope detail (its text up to the first colon; opsets
    grouped)."""
    head = re.sub(r"^opset \S+ < (\d+)", r"opset below \1", detail.split(":")[0])
    return head if len(head) < 90 else head[:90] + "…"


def _bad_list(results: list[Result]) -> list[str]:
    bad = [r for r in results if r.status in BAD]
    if not bad:
        return ["No wrong gradient and no crash.", ""]
    out = ["### Wrong gradients and crashes", "", "| item | status | detail |", "|---|---|---|"]
    out += [f"| {r.name} | {r.status} | {_cell(r.detail, 300)} |" for r in bad]
    return out + [""]


def zoo_section(results: list[Result]) -> list[str]:
    out = [f"## {TITLES['zoo']}", "",
           _doc_paragraph(zoo.__doc__, "Precision", "The step", "One function", "Torch's",
                          "Matching", "Tolerance"), ""]
    out += _bad_list(results)
    out += ["| model | source | family | config | params | status | detail |",
            "|---|---|---|---|---:|---|---|"]
    for r in results:
        detail = r.detail
        if r.status == "correct":
            worst = max((v.get("worst", 0.0) for k, v in r.info.items()
                         if k in ("frozen", "train") and isinstance(v, dict)), default=0.0)
            modes = "+".join(k for k in ("frozen", "train") if k in r.info)
            detail = f"batch norm {modes}; worst relative error {worst:.1e}"
        out.append(f"| {r.name} | {r.info.get('source', '')} | {r.group} | "
                   f"{_cell(r.info.get('config', ''), 60)} | {r.info.get('params', '')} | "
                   f"{r.status} | {_cell(detail, 220)} |")
    return out


def real_section(results: list[Result]) -> list[str]:
    out = [f"## {TITLES['real_files']}", "",
           _doc_paragraph(real_files.__doc__, "A file is"), ""]
    out += ["| file | package | MB | status | detail |", "|---|---|---:|---|---|"]
    for r in results:
        detail = r.detail or (f"slope ratio {r.info.get('slope_ratio')}, losses "
                              f"{r.info.get('losses')}")
        pkg = f"{r.info.get('dist', '')} {r.info.get('version', '')}"
        out.append(f"| {Path(r.info.get('path', r.name)).name} | {pkg} | "
                   f"{r.info.get('size_mb', '')} | {r.status} | {_cell(detail, 220)} |")
    return out


def refusals_section(all_results: dict[str, tuple[list[Result], dict[str, Any]]]
                     ) -> list[str]:
    """Refusals whose message does not name the op and the node (the error standard)."""
    rs = [r for results, _ in all_results.values() for r in results
          if r.status in ("refused", "refused-correctly")]
    vague = Counter(r.detail for r in rs if r.info.get("names_op_and_node") is False)
    out = ["## Refusals that do not name the op and the node", ""]
    if not vague:
        return out + ["None."]
    out += ["| message | cases |", "|---|---:|"]
    return out + [f"| {_cell(k)} | {v} |" for k, v in vague.most_common()]


def _doc_paragraph(doc: str | None, *headings: str) -> str:
    """The first paragraph of a harness module's docstring (the method in one breath) and the
    paragraphs that open with the given bold headings, each on its own."""
    text = re.sub(r":(?:func|class|mod):`~?([^`]+)`", r"`\1`", doc or "")
    paras = [" ".join(p.split()) for p in text.strip().split("\n\n")]
    chosen = [paras[0]] + [p for h in headings for p in paras
                           if p.startswith(f"**{h}") or p.startswith(h)]
    return "\n\n".join(chosen)


def versions() -> str:
    names = ("edgetrain", "onnx", "onnxruntime", "torch", "transformers", "timm")
    found = []
    for n in names:
        try:
            found.append(f"{n} {importlib.metadata.version(n)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def render(all_results: dict[str, tuple[list[Result], dict[str, Any]]]) -> str:
    today = datetime.date.today().isoformat()
    lines = ["# Gradient coverage", "",
             f"*Generated by `{COMMAND}` on {today} ({versions()}); do not edit by hand. "
             "The suites live in `tests/conformance/` and run as "
             "`tests/test_conformance_*.py`: a default `pytest` run takes a fixed sample of "
             "the operator cases and zoo models (`-m slow`; CI's time budget), "
             "`EDGETRAIN_CONFORMANCE=full python -m pytest -m slow tests/test_conformance_*.py` "
             "takes every one, as this report does.*", "",
             "A result is **correct** when edgetrain's gradient equals the independent "
             "oracle's, or when edgetrain refuses, with a clear error, an op that has nothing "
             "to differentiate (**refused-correctly**). **refused** is a clear error where a "
             "gradient exists (a coverage gap), **wrong** a gradient that differs, **crash** "
             "anything else. The goal: every suite at or above its goal share, zero wrong "
             "gradients, every refusal naming its op and node.", ""]
    lines += summary(all_results) + [""]
    sections = {"onnx_ops": onnx_section, "zoo": zoo_section, "real_files": real_section}
    for suite, (results, _) in all_results.items():
        lines += sections[suite](results) + [""]
    lines += refusals_section(all_results)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suites", nargs="*", choices=list(SUITES), default=None,
                   help="suites to run (default: all); the others are read from their JSON")
    p.add_argument("--from-results", action="store_true",
                   help="run nothing: write the doc from the stored JSON results")
    p.add_argument("--allow-missing", action="store_true",
                   help="leave out a suite that has no stored results instead of failing")
    p.add_argument("--out", default=str(DOC))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    to_run = [] if args.from_results else (args.suites or list(SUITES))
    ran = {suite: run(suite, progress=not args.quiet) for suite in to_run}
    all_results: dict[str, tuple[list[Result], dict[str, Any]]] = {}
    for suite in SUITES:
        if suite in ran:
            all_results[suite] = ran[suite]
            continue
        stored = _common.read_results(suite)
        if stored is None:
            print(f"no stored results for {suite} in {_common.RESULTS_DIR}; run "
                  f"`{COMMAND} --suites {suite}`", file=sys.stderr)
            if args.allow_missing:
                continue
            return 2
        all_results[suite] = stored
    Path(args.out).write_text(render(all_results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
