"""Small helpers the A/B and replay reports share: atomic writes, JSON-safe values, number format."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def clean(v: Any) -> Any:
    """JSON-safe copy: NaN and infinities become None."""
    if isinstance(v, float):
        return v if np.isfinite(v) else None
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [clean(x) for x in v]
    return v


def write_text(path: Path, text: str) -> None:
    """Write a file atomically (temp + rename), so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, payload: Any, indent: int | None = None) -> None:
    """Atomic JSON (NaN written as null)."""
    write_text(path, json.dumps(clean(payload), indent=indent, allow_nan=False, default=str))


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when absent or unreadable."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def fmt(v: float | None, digits: int = 3) -> str:
    """A number for a Markdown table ('–' for missing)."""
    if v is None or not np.isfinite(float(v)):
        return "–"
    return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"


def out_problem(exc: OSError) -> str:
    """Why a report folder could not be made or written (``exc`` from mkdir or the first write), in a few words."""
    if isinstance(exc, FileExistsError):
        return "exists and is not a folder"
    if isinstance(exc, NotADirectoryError):
        return "a parent of it is a file, not a folder"
    return f"cannot create or write it: {exc.strerror or exc}"
