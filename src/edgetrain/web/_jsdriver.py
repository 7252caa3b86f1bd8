"""The JavaScript driver a web export carries: the browser entry of the ``edgetrain`` npm package.

There is one driver, the package in ``js/`` of the source tree (Node.js, browsers, React
Native share its core); ``export-web`` copies the files the browser needs next to the page, so
the page and an app using the package run the same code. ``edgetrain.js`` in the export is a
one-line module that re-exports the browser entry, so pages keep importing ``./edgetrain.js``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import EdgetrainError

#: The package files the browser entry (``web.js``) imports, directly or not.
JS_FILES = ("web.js", "core.js", "checkpoint.js", "schema.js", "schemas.js", "storage-idb.js")
ENTRY = "edgetrain.js"
SHIM = (b"// The edgetrain driver of this page: the browser entry of the edgetrain JS package.\n"
        b"export * from './web.js';\n")


def find_js_driver(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The ``src`` folder of the edgetrain JS package.

    ``explicit`` if given (nothing else); otherwise ``$EDGETRAIN_JS``, ``js/`` of the source
    tree, then ``node_modules/edgetrain`` of the working directory.
    """
    here = Path(__file__).resolve()
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(Path(explicit))
    else:
        if os.environ.get("EDGETRAIN_JS"):
            candidates.append(Path(os.environ["EDGETRAIN_JS"]))
        candidates += [here.parents[3] / "js", Path.cwd() / "node_modules" / "edgetrain"]
    for c in candidates:
        src = c / "src" if (c / "src").is_dir() else c
        if all((src / f).is_file() for f in JS_FILES):
            return src
    looked = ", ".join(str(c) for c in candidates)
    raise EdgetrainError(f"the edgetrain JS driver was not found (looked in {looked}); it is "
                         "js/ of the edgetrain source tree, or point $EDGETRAIN_JS at it")


def driver_files(explicit: str | os.PathLike[str] | None = None) -> dict[str, bytes | Path]:
    """The files ``export-web`` writes for the driver: the package's and ``edgetrain.js``."""
    src = find_js_driver(explicit)
    files: dict[str, bytes | Path] = {name: src / name for name in JS_FILES}
    files[ENTRY] = SHIM
    return files
