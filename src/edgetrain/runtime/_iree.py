"""IREE: each signature's graph compiled ahead of time into a module, run by iree-base-runtime.

A graph goes through IREE's ONNX importer (``iree.compiler.tools.import_onnx``) and
``iree-compile`` (both from iree-base-compiler), each in its own process with a time limit, so
a compiler crash is an error and never takes the caller down. ``backend="iree"`` compiles for
the machine it runs on (llvm-cpu, ``--iree-llvmcpu-target-cpu=host``) and keeps the modules in
a cache keyed by the graph's bytes, the compiler version and the flags, so only the first load
of a file compiles. ``edgetrain export-iree`` (:mod:`._iree_export`) builds the same modules for
devices: Android and iOS on arm64, Vulkan and Metal GPUs.

float64 stays float64 on CPU targets (``--iree-input-demote-f64-to-f32=false``); the step
graphs of float32 models contain no float64 arithmetic (see ``optim._bias_corrections``), so
the flag only matters for float64 models. GPU targets have no 64-bit types: their modules are
built with float64 and int64 demoted to 32 bits (see ``TARGETS``).
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from .. import format as fmt
from ..errors import BackendError
from ._native import NativeBackend, Runner

#: iree-compile flags per target. Every CPU target uses llvm-cpu; iOS forbids code that is
#: mapped executable at run time, so its kernels are a static library (a Mach-O object to link
#: into the app) next to the module, as IREE's iOS deployment does.
_LLVM_CPU = ["--iree-hal-target-device=local", "--iree-hal-local-target-device-backends=llvm-cpu"]
_GPU = ["--iree-input-demote-i64-to-i32", "--iree-input-demote-f64-to-f32"]
TARGETS: dict[str, list[str]] = {
    "host": [*_LLVM_CPU, "--iree-llvmcpu-target-cpu=host",
             "--iree-input-demote-f64-to-f32=false"],
    "android-arm64": [*_LLVM_CPU, "--iree-llvmcpu-target-triple=aarch64-linux-android30",
                      "--iree-input-demote-f64-to-f32=false"],
    "ios-arm64": [*_LLVM_CPU, "--iree-llvmcpu-target-triple=arm64-apple-ios",
                  "--iree-llvmcpu-link-embedded=false", "--iree-llvmcpu-link-static",
                  "--iree-input-demote-f64-to-f32=false"],
    "vulkan": ["--iree-hal-target-device=vulkan", *_GPU],
    "metal": ["--iree-hal-target-device=metal", *_GPU],
}
#: Targets whose code generation needs every shape static (IREE's Metal backend cannot yet
#: reduce over a dynamic batch): their graphs are built for one batch size.
STATIC_BATCH_TARGETS = frozenset({"metal"})
#: Seconds one import or compile may take before it counts as failed.
TIMEOUT = 1800.0


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("iree-base-compiler", "iree-base-runtime"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def compile_graph(model: onnx.ModelProto, target: str, workdir: str, name: str = "module",
                  extra_flags: Sequence[str] = ()) -> list[str]:
    """Import and compile one graph for ``target`` into ``workdir``; returns the files written
    (``name.vmfb``, and for iOS the static library ``name.o`` and its header ``name.h``)."""
    if target not in TARGETS:
        raise BackendError(f"unknown IREE target {target!r}; choose one of {sorted(TARGETS)}")
    from iree.compiler.tools.binaries import find_tool

    src = os.path.join(workdir, f"{name}.onnx")
    mlir = os.path.join(workdir, f"{name}.mlir")
    vmfb = os.path.join(workdir, f"{name}.vmfb")
    with open(src, "wb") as f:
        f.write(model.SerializeToString())
    _tool([sys.executable, "-m", "iree.compiler.tools.import_onnx", src, "-o", mlir],
          "the IREE ONNX importer")
    flags = list(TARGETS[target]) + list(extra_flags)
    written = [vmfb]
    if target == "ios-arm64":
        lib = os.path.join(workdir, f"{name}.o")
        flags.append(f"--iree-llvmcpu-static-library-output-path={lib}")
        written += [lib, os.path.join(workdir, f"{name}.h")]
    _tool([find_tool("iree-compile"), *flags, mlir, "-o", vmfb], "iree-compile")
    for tmp in (src, mlir):
        os.unlink(tmp)
    return written


def _tool(cmd: list[str], what: str) -> None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise BackendError(f"{what} took longer than {TIMEOUT:.0f} s") from e
    if p.returncode != 0:
        lines = [ln.strip() for ln in (p.stderr or p.stdout).splitlines() if "error" in ln]
        detail = lines[0] if lines else (p.stderr or p.stdout).strip()[-300:]
        raise BackendError(f"{what} failed: {detail[:500]}")


def module_cache_dir(path: str | os.PathLike[str] | None = None) -> str:
    """The module cache: ``path``, else $EDGETRAIN_CACHE_DIR/iree, else ~/.cache/edgetrain/iree.

    A module holds machine code that the runtime executes, so the folder must be the user's
    own and closed to others (mode 0700); a cache that is not is refused, not used.
    """
    if path is None:
        base = os.environ.get("EDGETRAIN_CACHE_DIR") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgetrain")
        path = os.path.join(base, "iree")
    path = os.fspath(path)
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise BackendError(f"the IREE module cache {path!r} is not private to this user "
                           "(owner or group/other write permission); fix it with chmod 700 "
                           "or pass cache_dir=")
    return path


def maxpool_indices_per_plane(cache: str) -> bool:
    """Whether this IREE's MaxPool ``Indices`` count within each (n, c) plane, not over the
    whole tensor as ONNX specifies: a 2×2 pool over a [1, 2, 2, 2] input, compiled once per
    compiler version (cached) and run. Asked rather than assumed so that a fixed IREE works."""
    import iree.runtime as rt
    from onnx import TensorProto, helper

    node = helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2])
    graph = helper.make_graph(
        [node], "maxpool_probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                [1, 2, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 1, 1]),
         helper.make_tensor_value_info("i", TensorProto.INT64, [1, 2, 1, 1])])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    config = rt.Config("local-sync")
    module = rt.VmModule.copy_buffer(config.vm_instance, cached_module(probe, cache))
    fn = rt.SystemContext(vm_modules=[module], config=config).modules.module["maxpool_probe"]
    _, idx = fn(np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2))
    flat = idx.to_host().reshape(-1).tolist()
    if flat == [3, 7]:
        return False
    if flat == [3, 3]:
        return True
    raise BackendError(f"IREE's MaxPool returned indices {flat} for a probe whose ONNX "
                       "indices are [3, 7]; its pooling gradients cannot be trusted")


def cached_module(graph: onnx.ModelProto, cache: str) -> bytes:
    """The host module of ``graph``: from the cache, or compiled and then cached."""
    key = hashlib.sha256(graph.SerializeToString())
    key.update(repr((versions(), TARGETS["host"])).encode())
    path = os.path.join(cache, f"{key.hexdigest()}.vmfb")
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read()
    with tempfile.TemporaryDirectory(prefix="edgetrain-iree-") as tmp:
        (vmfb, *_) = compile_graph(graph, "host", tmp)
        with open(vmfb, "rb") as f:
            module = f.read()
    fmt.atomic_write(path, module)
    return module


class IreeBackend(NativeBackend):
    """iree-base-runtime on the host CPU (local-task driver), modules compiled on first use."""

    name = "iree"
    requires = ("iree.runtime", "iree.compiler")
    shapes = "fallback"
    extra = "iree"
    #: One step per call in ``fit`` unless asked (``Model.steps_per_call``): IREE's call costs
    #: little, and its build of the unrolled K-step graph runs each step of the seed MLP
    #: slower (W1: 1.12x one call per step at K = 16, W3: 0.94x; benchmarks/results/ksteps/
    #: native) and takes seconds per K (W3: 6 s at 16).
    steps_per_call = 1

    def __init__(self, model: onnx.ModelProto, meta: fmt.Metadata,
                 threads: int | None = None, cache_dir: str | os.PathLike[str] | None = None,
                 target: str = "host") -> None:
        super().__init__(model, meta)
        if target not in ("host",):
            raise BackendError("backend 'iree' runs modules built for this machine "
                               "(target='host'); build device modules with edgetrain export-iree")
        import iree.runtime as rt

        self._rt = rt
        self._cache = module_cache_dir(cache_dir)
        if threads == 1:
            driver = "local-sync"
        else:
            if threads:
                rt.flags.parse_flags(f"--task_topology_max_group_count={int(threads)}")
            driver = "local-task"
        self._config = rt.Config(driver)
        self.driver = driver
        self.plane_indices = maxpool_indices_per_plane(self._cache)

    def compile(self, sig: str, graph: onnx.ModelProto) -> Runner:
        rt = self._rt
        data = cached_module(graph, self._cache)
        vm_module = rt.VmModule.copy_buffer(self._config.vm_instance, data)
        ctx = rt.SystemContext(vm_modules=[vm_module], config=self._config)
        fn = ctx.modules.module[graph.graph.name]
        n_out = len(graph.graph.output)

        def run(args: Sequence[Any]) -> Sequence[Any]:
            out = fn(*args)
            return out if n_out > 1 else (out,)

        run.context = ctx  # type: ignore[attr-defined]  # keeps the module alive
        return run

    def to_numpy(self, value: Any) -> np.ndarray:
        return value.to_host() if hasattr(value, "to_host") else np.asarray(value)
