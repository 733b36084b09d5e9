"""Not the onnxcam package: the root of an onnxcam source checkout.

Python started in the folder that holds a checkout named `onnxcam` finds this folder first when it runs
`import onnxcam` (the current folder leads sys.path). Without this file it would import the folder as an empty
namespace package (`module 'onnxcam' has no attribute 'Explainer'`). Instead, the real package inside it,
onnxcam/onnxcam/, is loaded in its place, with a one-line note on stderr when it is not the onnxcam that pip
installed (an editable install of this same checkout needs no note).
"""

import importlib.util as _util
import os as _os
import sys as _sys

if __name__ == "onnxcam":  # only when this checkout was imported under the package's name
    _inner = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "onnxcam")

    def _installed_here() -> bool:
        """pip's record of the installed onnxcam points at this checkout (an editable install of it)."""
        import json
        from importlib import metadata
        from urllib.parse import unquote, urlparse

        try:
            record = json.loads(metadata.distribution("onnxcam").read_text("direct_url.json") or "{}")
        except (metadata.PackageNotFoundError, ValueError):
            return False
        path = unquote(urlparse(record.get("url", "")).path)
        return bool(path) and _os.path.realpath(path) == _os.path.realpath(_os.path.dirname(_inner))

    if not _installed_here():
        print(f"note: 'import onnxcam' found the source checkout {_os.path.dirname(_inner)} (Python was started in "
              "the folder above it); using its package onnxcam/onnxcam/. Start Python elsewhere to use the "
              "installed onnxcam.", file=_sys.stderr)
    _spec = _util.spec_from_file_location("onnxcam", _os.path.join(_inner, "__init__.py"),
                                          submodule_search_locations=[_inner])
    assert _spec is not None and _spec.loader is not None
    _module = _util.module_from_spec(_spec)
    _sys.modules["onnxcam"] = _module  # submodules (onnxcam.explainer, ...) now resolve inside the real package
    _spec.loader.exec_module(_module)
