"""The argparse type of every file or folder argument: a path, never an empty one.

``Path("")`` is the current folder, so an empty value (an unset shell variable, ``--out "$OUT"``) would
otherwise write a run's files among whatever the current folder holds, or fail later with a traceback.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def path_arg(text: str) -> Path:
    """``text`` as a Path; an empty or blank value is an argparse error naming the option."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (is a shell variable unset?)")
    return Path(text)


def path_text(text: str) -> str:
    """As :func:`path_arg`, for an option kept as text (a path recorded verbatim in a run's config)."""
    path_arg(text)
    return text
