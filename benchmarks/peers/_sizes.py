"""Disk size of installed distributions, run inside the interpreter whose packages it measures.

    python _sizes.py DIST [DIST ...]

Prints JSON: the size of each named distribution, their total, and the total of their
dependency closure (requirements followed transitively, extras ignored, only what is
installed). An editable install (the edgetrain checkout) is measured by its package folder.
Standard library only.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import re
import sys

_OTHER_OS = re.compile(r"(platform_system|sys_platform|os_name)\s*==\s*['\"]"
                       r"(Windows|win32|nt|Darwin|darwin|cygwin)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _tree_bytes(path: str) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files
                     if not os.path.islink(os.path.join(root, f)))
    return total


def dist_bytes(dist: md.Distribution, seen: set[str] | None = None) -> int:
    """Bytes of a distribution's files; ``seen`` skips files already counted (two
    distributions may own the same files, e.g. tensorflow and tensorflow-cpu)."""
    seen = set() if seen is None else seen
    total = 0
    for f in dist.files or []:
        p = os.path.realpath(f.locate())
        if p not in seen and os.path.isfile(p):
            seen.add(p)
            total += os.path.getsize(p)
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    if direct.get("dir_info", {}).get("editable"):
        top = (dist.read_text("top_level.txt") or dist.metadata["Name"]).split()
        for name in top:
            spec = importlib.util.find_spec(name)
            if spec and spec.submodule_search_locations:
                for p in spec.submodule_search_locations:
                    if p not in seen:
                        seen.add(p)
                        total += _tree_bytes(p)
    return total


def closure(names: list[str]) -> dict[str, md.Distribution]:
    seen: dict[str, md.Distribution] = {}
    todo = list(names)
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = dist
        for req in dist.requires or []:
            if re.search(r"extra\s*==", req) or _OTHER_OS.search(req):
                continue
            todo.append(re.split(r"[\s;<>=!~\[(]", req.strip(), maxsplit=1)[0])
    return seen


def main() -> None:
    names = sys.argv[1:]
    own: dict[str, int | None] = {}
    counted: set[str] = set()
    for n in names:
        try:
            own[n] = dist_bytes(md.distribution(n), counted)
        except md.PackageNotFoundError:
            own[n] = None
    deps = closure(names)
    counted = set()
    print(json.dumps({"packages": own, "total_bytes": sum(v or 0 for v in own.values()),
                      "closure": sorted(deps),
                      "closure_bytes": sum(dist_bytes(d, counted) for d in deps.values()),
                      "prefix": sys.prefix}))


if __name__ == "__main__":
    main()
