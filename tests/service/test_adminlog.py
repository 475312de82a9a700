"""The shared admin log of a ``--workers N`` server: lines someone else wrote, failures while applying or recording."""

from __future__ import annotations

import asyncio
import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from service.adminlog import AdminLog, AdminLogError
from service.metrics import Metrics
from service.registry import Registry, RegistryConfig


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


@pytest.mark.parametrize("short", [False, True], ids=["disk-full", "torn-write"])
def test_a_reload_the_log_cannot_record_is_not_applied(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch, short: bool
) -> None:
    """A worker that cannot append its reload keeps the old model (the others would never load the new one),
    leaves the file as it was, and says so; once the disk has room, the same reload goes through."""
    log_path = tmp_path / "admin.jsonl"
    log_path.write_bytes(_line(**{**GOOD_A, "slot": "other"}))  # a line another worker wrote earlier

    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        # Only the admin log's disk is full: every other write (pytest's capture, logging) goes through.
        if os.readlink(f"/proc/self/fd/{fd}") != str(log_path.resolve()):
            return real_write(fd, data)
        if not short:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data[:10])  # part of the line reached the disk before it filled

    async def scenario() -> None:
        metrics = Metrics(None)
        registry = Registry([("lin", model_dir / "lin.onnx")], RegistryConfig(threads=1), metrics)
        await registry.load_all()

        def events(result: str) -> float | None:
            labels = {"slot": "lin", "model": "linear", "version": "2", "event": "reload", "result": result}
            return metrics.registry.get_sample_value("dispatch_model_events_total", labels)

        admin = AdminLog(log_path, registry, worker=0)
        before = log_path.read_bytes()
        with monkeypatch.context() as m:
            m.setattr("service.adminlog.os.write", full)
            with pytest.raises(AdminLogError, match=r"cannot record the reload \(.*\); not applied"):
                await admin.reload("lin", str(model_dir / "lin2.onnx"))
        assert registry.get("lin").version == "1"  # the old model serves on
        assert log_path.read_bytes() == before  # no torn line for the other workers to trip on
        assert events("error") == 1 and events("ok") is None  # counted as the refusal it was
        assert metrics.registry.get_sample_value("dispatch_queue_depth", {"model": "linear", "version": "2"}) is None
        model, previous = await admin.reload("lin", str(model_dir / "lin2.onnx"))
        assert (model.version, previous, registry.get("lin").version) == ("2", "1", "2")
        assert events("ok") == 1
        last = json.loads(log_path.read_bytes().splitlines()[-1])
        assert (last["slot"], last["path"]) == ("lin", str(model_dir / "lin2.onnx"))
        await registry.close()

    asyncio.run(scenario())
