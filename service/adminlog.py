"""Model admin changes shared by the worker processes of a ``--workers N`` server.

A Reload reaches one worker (the kernel spreads connections, not calls). That worker loads the new
model and, only when it loaded, appends the change to an append-only JSON-lines file in the
supervisor's private folder, then swaps it in; every other worker polls the file (every ``POLL_S``)
and applies what it has not seen yet. A refused reload is never written, and one that cannot be
written (a full disk) is not applied, so every worker keeps its old model, as a single process does.

Ordering: a worker holds an exclusive ``flock`` on the file from catching up with it, through its own
reload, to the append, so admin changes are serialised across workers and every worker applies them
in the file's order (two concurrent reloads of one slot end with the same model everywhere).
Readers take no lock: an append is one ``write`` of one line, and a reader consumes whole lines only.

A worker started later (a restart) loads the latest path of every slot from the file instead of its
command-line ``--model`` path, so it serves what the others serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from dispatch.model import ModelError
from service.registry import LoadedModel, Registry, UnknownModel

log = logging.getLogger(__name__)

# How often a worker looks for changes made through another worker: the bulk of the consistency window
# (plus the time the model takes to load).
POLL_S = 0.2


@dataclass(frozen=True)
class AdminOp:
    """One applied reload: the slot, the file it was loaded from, and who made it (for the logs)."""

    slot: str
    path: str
    version: str
    worker: int


def _op(body: object) -> AdminOp:
    """An AdminOp from one parsed line; TypeError naming the field when the line is not one."""
    if not isinstance(body, dict):
        raise TypeError(f"not an object: {type(body).__name__}")
    op = AdminOp(**body)
    for name, kind in (("slot", str), ("path", str), ("version", str), ("worker", int)):
        value = getattr(op, name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TypeError(f"field {name!r} is not a {kind.__name__}: {value!r:.60}")
    return op


class AdminLogError(RuntimeError):
    """The admin log could not record a reload (a full disk, say): the reload is not applied anywhere."""


class AdminLog:
    """The shared admin log as seen by one worker (``worker`` is its index)."""

    def __init__(self, path: Path, registry: Registry, worker: int) -> None:
        self.path = path
        self.registry = registry
        self.worker = worker
        self._offset = 0  # bytes of the file this worker has applied
        self._lock = asyncio.Lock()  # one catch-up or reload at a time in this process

    def _read_new(self) -> list[AdminOp]:
        """Complete lines appended since the last read (a line being written is left for the next one)."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        ops = []
        for line in data[: data.rfind(b"\n") + 1].splitlines(keepends=True):
            self._offset += len(line)  # past this line whatever it holds: a bad line is skipped once, not forever
            if not line.strip():
                continue
            try:
                ops.append(_op(json.loads(line)))
            # Not JSON (or nested too deep to parse), or not an AdminOp: someone else wrote here.
            except (ValueError, TypeError, RecursionError) as exc:
                log.error("admin log %s: unreadable line skipped (%s): %r", self.path, exc, line[:200])
        return ops

    def start_paths(self) -> dict[str, Path]:
        """The latest path of every slot changed so far (for a worker about to load its models)."""
        return {op.slot: Path(op.path) for op in self._read_new() if op.slot in self.registry.paths}

    async def catch_up(self) -> None:
        """Apply the changes other workers made since the last call."""
        async with self._lock:
            await self._apply_new()

    async def _apply_new(self) -> None:
        for op in self._read_new():
            try:
                model, _ = await self.registry.reload(op.slot, op.path)
            except (ModelError, UnknownModel) as exc:
                # Loaded fine in worker op.worker, refused here (file changed or gone since): keep the old model.
                log.error("reload of slot %r from worker %d not applied here: %s", op.slot, op.worker, exc)
                continue
            except Exception:
                # The lines are consumed already: an escaping error would drop the changes after this one for good.
                log.exception("reload of slot %r from worker %d failed here", op.slot, op.worker)
                continue
            log.info("applied reload of slot %r (version %s) from worker %d", op.slot, model.version, op.worker)

    async def follow(self, interval_s: float = POLL_S) -> None:
        """Apply other workers' changes as they appear (runs until cancelled; an error ends one poll only)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.catch_up()
            except Exception:  # a failed poll must not stop this worker following the others for good
                log.exception("admin log %s: catching up failed; retrying", self.path)

    async def reload(self, slot: str = "", path: str | Path | None = None) -> tuple[LoadedModel, str]:
        """``Registry.reload`` for every worker: applied here, then logged for the others on success."""
        # Shielded: a caller that gives up must not leave the file locked or a change applied but unlogged.
        return await asyncio.shield(self._reload(slot, path))

    async def _reload(self, slot: str, path: str | Path | None) -> tuple[LoadedModel, str]:
        async with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                await asyncio.get_running_loop().run_in_executor(None, fcntl.flock, fd, fcntl.LOCK_EX)
                await self._apply_new()
                # Recorded before the swap: a change this worker cannot log is not applied either, so no
                # worker serves a model the others will never load.
                model, previous = await self.registry.reload(slot, path, before_swap=lambda m: self._record(fd, m))
                # Nobody else appends while we hold the lock: everything up to here is applied (ours included).
                self._offset = os.fstat(fd).st_size
                return model, previous
            finally:
                os.close(fd)  # releases the lock

    def _record(self, fd: int, model: LoadedModel) -> None:
        """Append the reload of ``model`` as one line; AdminLogError, with the file as it was, when it cannot."""
        op = AdminOp(model.slot, str(model.path), model.version, self.worker)
        line = (json.dumps(asdict(op)) + "\n").encode()
        size = -1
        try:
            size = os.fstat(fd).st_size
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(f"wrote {written} of {len(line)} bytes")
        except OSError as exc:
            # A torn line would glue itself to the next worker's append and make the others skip that one.
            if size >= 0:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
            why = exc.strerror or str(exc)
            raise AdminLogError(f"admin log {self.path}: cannot record the reload ({why}); not applied") from None
