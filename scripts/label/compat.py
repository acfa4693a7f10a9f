"""Running MONAI Label 0.8.5 beside this project's pins (pydicom 3, numpy 2).

MONAI Label's app base class imports ``pydicom_seg`` (its DICOM-SEG datastore), whose last release
(0.4.1, 2022) imports ``pydicom._storage_sopclass_uids``, a private module pydicom 3 removed (the
same UIDs are public in ``pydicom.uid``), and declares ``numpy<2`` and ``jsonschema<4``: a plain
``pip install monailabel`` therefore downgrades numpy and jsonschema and still fails to import.
``requirements-monailabel.txt`` installs MONAI Label and its import-time dependencies with
``--no-deps`` (nothing of the project's pins moves); :func:`alias_pydicom_uids` gives
``pydicom_seg`` the module it looks for. Nothing else is patched.
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["alias_pydicom_uids", "main"]


def alias_pydicom_uids() -> None:
    """Make ``pydicom._storage_sopclass_uids`` importable (as ``pydicom.uid``) when pydicom no longer has it."""
    try:
        importlib.import_module("pydicom._storage_sopclass_uids")
    except ModuleNotFoundError:
        import pydicom.uid

        sys.modules["pydicom._storage_sopclass_uids"] = pydicom.uid


def main(argv: list[str] | None = None) -> None:
    """``python -m scripts.label.compat start_server --app bundles/monailabel_app --studies DIR [...]``: MONAI Label's
    own command line (``monailabel start_server ...``), run after :func:`alias_pydicom_uids` in the same process."""
    alias_pydicom_uids()
    from monailabel.main import Main

    sys.argv = ["monailabel", *(sys.argv[1:] if argv is None else argv)]
    Main().run()


if __name__ == "__main__":
    main()
