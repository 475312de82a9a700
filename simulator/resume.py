"""Resuming work in a folder made earlier: which of its recorded arguments differ from the ones given now."""

from __future__ import annotations

from typing import Any


def differences(then: Any, now: dict[str, Any]) -> str:
    """The arguments that differ, as ``key: then → now`` (nested keys dotted), for an error message.

    ``then`` is what the folder's manifest recorded, which may be anything a damaged file holds.
    """
    if not isinstance(then, dict):
        return f"the folder records {then!r} instead of its arguments"
    out: list[str] = []
    for key in sorted(set(then) | set(now), key=str):
        a, b = then.get(key, "<unset>"), now.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            inner = differences(a, b)
            out += [f"{key}.{part}" for part in inner.split("; ")] if inner else []
        elif a != b:
            out.append(f"{key}: {a!r} then, {b!r} now")
    return "; ".join(out)
