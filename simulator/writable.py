"""Whether an output path can be written, checked before long work starts, so a run never ends in a traceback.

Each function returns why the path cannot take the output, in a few words, or None when it can. The check
creates (and at once removes) a hidden probe file in the nearest existing folder instead of trusting
``os.access``: root passes ``os.access`` on folders it still cannot write (``/proc``), and a read-only mount
or a full quota only shows when a file is made.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
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


# Larger than any output a command here replaces in place; a bigger file is not read to find out whether it is one.
REPLACEABLE_BYTES = 64 * 2**20


def replace_problem(path: Path, earlier: Callable[[bytes], bool], what: str) -> str | None:
    """Why the file ``path`` cannot take a new output, or None: ``file_problem``, and an existing file must be
    an earlier output of the same kind (``earlier(its bytes)``), so that a mistyped name never replaces a
    model's manifest, a dataset's or anything else. ``what`` names the kind, for the message."""
    if problem := file_problem(path):
        return problem
    if os.path.lexists(path):
        try:
            ours = path.stat().st_size <= REPLACEABLE_BYTES and earlier(path.read_bytes())
        except OSError:
            ours = False
        if not ours:
            return f"exists and is not {what}; remove it or give another name"
    return None


# The file each command keeps at the top of its --out folder, and what it marks the folder as.
OUTPUT_MARKERS = {
    "ab.json": "an A/B run (dispatch ab)",
    "replay.json": "a replay (dispatch replay)",
    "manifest.json": "a log dataset (dispatch logs generate)",
    "config.json": "a training run (dispatch train)",
}


def foreign_output(path: Path, own: str | None) -> str | None:
    """Why the folder ``path`` belongs to another command's output, or None.

    ``own`` is the marker file of the command asking (None: it has none, as ``simulate``), so a command
    may resume in its own folder but never writes its files among another's (one report replacing
    another's, or solution folders inside a dataset that training then reads around).
    """
    for marker, what in OUTPUT_MARKERS.items():
        if marker != own and (path / marker).is_file():
            return f"holds {what} ({marker}); give a folder of its own"
    return None
