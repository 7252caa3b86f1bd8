"""Import timm where torchvision cannot load.

timm imports torchvision at import time (its data pipeline, and ``FrozenBatchNorm2d`` for
its freezing helpers) but none of the models built here uses it. The torchvision wheel on
PyPI is built against CUDA torch and cannot load next to the CPU build of torch 2.13 this
project pins, so when ``import torchvision`` fails, a placeholder package stands in: every
name in it is a class that raises when used, so a model that really needed torchvision fails
loudly instead of computing something else.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from typing import Any

_MESSAGE = "torchvision is not installed here; timm's {} is a placeholder"


class _PlaceholderMeta(type):
    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{cls.__qualname__}.{name}")


def _placeholder(name: str) -> type:
    def fail(self: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(_MESSAGE.format(name))

    return _PlaceholderMeta(name, (), {"__init__": fail, "__call__": fail})


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder(f"{self.__name__}.{name}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any, target: Any = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def import_timm() -> Any:
    """``timm``, importing through the torchvision placeholder only if torchvision cannot load.

    The placeholder leaves again once timm is imported (timm keeps the names it bound), so
    other libraries that probe for torchvision (transformers' image processors) see none.
    """
    if "timm" in sys.modules:
        return sys.modules["timm"]
    try:
        import torchvision  # noqa: F401
    except Exception:
        _drop_torchvision()
        finder = _Finder()
        sys.meta_path.insert(0, finder)
        try:
            import timm
        finally:
            sys.meta_path.remove(finder)
            _drop_torchvision()
        return timm
    import timm

    return timm


def _drop_torchvision() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
