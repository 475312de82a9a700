"""The shared admin log of a ``--workers N`` server: lines someone else wrote, and failures while applying."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from service.adminlog import AdminLog


class _Registry:
    """The part of Registry the admin log uses; ``reload`` fails for the slots in ``fail``."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.paths = {"a": Path("/m/a.onnx"), "b": Path("/m/b.onnx")}
        self.fail = fail or set()
        self.reloaded: list[tuple[str, str]] = []

    async def reload(self, slot: str, path: str) -> tuple[Any, str]:
        if slot in self.fail:
            raise RuntimeError(f"cannot reload {slot}")
        self.reloaded.append((slot, path))

        class Model:
            version = "2"

        return Model(), "1"


def _line(**op: object) -> bytes:
    return (json.dumps(op) + "\n").encode()


GOOD_A = {"slot": "a", "path": "/m/a2.onnx", "version": "2", "worker": 0}
GOOD_B = {"slot": "b", "path": "/m/b2.onnx", "version": "2", "worker": 1}


def test_lines_of_the_wrong_shape_are_skipped(tmp_path: Path) -> None:
    """Wrongly typed fields or nesting too deep to parse skip that line only, and never raise."""
    path = tmp_path / "admin.jsonl"
    path.write_bytes(
        _line(**GOOD_A)
        + _line(slot=["a"], path="/x.onnx", version="2", worker=0)
        + _line(slot="a", path={"p": 1}, version="2", worker=0)
        + _line(slot="a", path="/x.onnx", version="2", worker="0")
        + b"[" * 100_000
        + b"]" * 100_000
        + b"\n"
        + b"[1, 2]\n"
        + _line(**GOOD_B)
    )
    admin = AdminLog(path, _Registry(), worker=2)  # type: ignore[arg-type]
    assert admin.start_paths() == {"a": Path("/m/a2.onnx"), "b": Path("/m/b2.onnx")}
    assert admin._offset == path.stat().st_size
    assert admin._read_new() == []


def test_a_failed_change_does_not_drop_the_ones_after_it(tmp_path: Path) -> None:
    """The lines are consumed before they are applied: one failing must not lose the rest of the batch."""
    path = tmp_path / "admin.jsonl"
    path.write_bytes(_line(**GOOD_A) + _line(**GOOD_B))
    registry = _Registry(fail={"a"})
    asyncio.run(AdminLog(path, registry, worker=2).catch_up())  # type: ignore[arg-type]
    assert registry.reloaded == [("b", "/m/b2.onnx")]
