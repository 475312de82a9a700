"""Whether an output path can be written, checked before long work starts, so a run never ends in a traceback.

Each function returns why the path cannot take the output, in a few words, or None when it can. The check
creates (and at once removes) a hidden probe file in the nearest existing folder instead of trusting
``os.access``: root passes ``os.access`` on folders it still cannot write (``/proc``), and a read-only mount
or a full quota only shows when a file is made.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists, a broken symbolic link included (the folder that
    would hold what is created, or what stands in its way)."""
    here = path.absolute()
    while not os.path.lexists(here) and here != here.parent:
        here = here.parent
    return here


def _probe(folder: Path) -> str | None:
    """None when a file can be created in ``folder``, else why not."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as exc:
        return f"cannot write in {folder} ({exc.strerror or exc})"
    return None


def folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be (created as) a folder and filled, or None."""
    base = _nearest_existing(path)
    if base.is_symlink() and not base.exists():
        return f"{base} is a broken symbolic link"
    if base == path.absolute() and not base.is_dir():
        return "exists and is not a folder"
    if not base.is_dir():
        return f"{base} is a file, not a folder"
    return _probe(base)


def file_problem(path: Path) -> str | None:
    """Why a file cannot be written at ``path`` (its folders created if missing), or None."""
    if path.is_dir():
        return "is a folder; give a file name"
    parent = path.absolute().parent
    problem = folder_problem(parent)
    return f"{parent} is a file, not a folder" if problem == "exists and is not a folder" else problem
