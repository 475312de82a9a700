"""Micro-batching: concurrent snapshots for one model ride in one ONNX Runtime run.

A batch forms from whatever waits when the inference thread is free (so a lone request never waits
for company), optionally held up to ``max_delay_s`` for more; a batch of at most ``inline_max_rows``
couriers runs on the event loop itself; the queue is bounded and refuses new
work (QueueFull → RESOURCE_EXHAUSTED) instead of letting latency grow without limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from dispatch.features import Encoded
from dispatch.onnx_policy import pad_batch

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The batch queue holds its maximum; the caller sheds the request."""


class BatcherClosed(RuntimeError):
    """The model behind this batcher was replaced; the caller picks the current one again."""


class ModelRunError(RuntimeError):
    """ONNX Runtime failed on a batch."""


@dataclass(frozen=True)
class BatchResult:
    """One snapshot's share of a batch run."""

    logits: np.ndarray
    queue_s: float
    inference_s: float
    batch_size: int


def _rows(out: np.ndarray, n: int) -> np.ndarray:
    """The model output, checked to hold a row block per snapshot of the batch."""
    if out.ndim != 3 or out.shape[0] < n:
        raise ValueError(f"model output of shape {out.shape} for a batch of {n} snapshots")
    return out


@dataclass
class _Item:
    encoded: Encoded
    future: asyncio.Future[BatchResult]
    enqueued: float


class MicroBatcher:
    """Collects encoded snapshots and runs them through ``run`` (padded batch → logits) in batches."""

    def __init__(
        self,
        run: Callable[[dict[str, np.ndarray]], np.ndarray],
        k: int,
        executor: Executor,
        max_batch: int = 32,
        max_delay_s: float = 0.0,
        max_queue: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        inline_max_rows: int = 0,
    ) -> None:
        self._run = run
        self.k = k
        self._executor = executor
        self.max_batch = max(1, max_batch)
        self.max_delay_s = max(0.0, max_delay_s)
        self.max_queue = max(1, max_queue)
        self._on_batch = on_batch
        self._on_depth = on_depth
        self.inline_max_rows = inline_max_rows
        self._pending: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._closed = False
        self._running = False  # a batch is being run (on the loop or in the executor)
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Snapshots waiting for a batch."""
        return len(self._pending)

    def _depth_changed(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._pending))

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def submit(self, encoded: Encoded) -> asyncio.Future[BatchResult]:
        """Queue one snapshot; the future resolves to its logits (cancel it to withdraw the snapshot)."""
        if self._closed:
            raise BatcherClosed("model replaced")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"batch queue full ({self.max_queue} waiting; --max-queue)")
        fut: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(encoded, fut, time.perf_counter()))
        self._depth_changed()
        self._wake.set()
        return fut

    def run_now(self, encoded: Encoded) -> BatchResult | None:
        """Run a lone small snapshot at once on the caller's stack, or None when it must queue.

        When nothing waits or runs and the snapshot is small enough for an inline run, the batching
        task would form a batch of just this snapshot and run it on the event loop anyway; doing it
        here saves the two event-loop hand-offs (a good part of a small request's latency).
        """
        if (
            self._closed
            or self._pending
            or self._running
            or self.max_delay_s > 0
            or encoded.agent.shape[0] > self.inline_max_rows
        ):
            return None
        start = time.perf_counter()
        try:
            logits = _rows(self._run(pad_batch([encoded], self.k)), 1)[0]
        except Exception as exc:  # any ONNX Runtime failure or malformed output: this caller falls back
            log.warning("model run failed on a batch of 1: %s", exc)
            raise ModelRunError(str(exc)) from None
        inference = time.perf_counter() - start
        if self._on_batch is not None:
            self._on_batch(1, inference)
        return BatchResult(logits, 0.0, inference, 1)

    def close(self) -> None:
        """Refuse new work; what is queued still runs."""
        self._closed = True
        self._wake.set()

    async def wait_closed(self) -> None:
        """Wait until the queue has drained after close()."""
        if self._task is not None:
            await self._task

    async def _loop(self) -> None:
        while True:
            while not self._pending:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
            if self.max_delay_s > 0 and not self._closed:
                due = self._pending[0].enqueued + self.max_delay_s
                while len(self._pending) < self.max_batch:
                    left = due - time.perf_counter()
                    if left <= 0:
                        break
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), left)
                    except TimeoutError:
                        break
            take: list[_Item] = []
            while self._pending and len(take) < self.max_batch:
                item = self._pending.popleft()
                if not item.future.done():  # withdrawn by its caller (deadline): skip the work
                    take.append(item)
            self._depth_changed()
            if take:
                self._running = True
                try:
                    await self._run_batch(take)
                finally:
                    self._running = False

    async def _run_batch(self, take: list[_Item]) -> None:
        encoded = [i.encoded for i in take]
        start = time.perf_counter()
        try:
            # pad_batch pads every snapshot to the largest one: that is the size ONNX Runtime sees.
            if len(encoded) * max(e.agent.shape[0] for e in encoded) <= self.inline_max_rows:
                # A small batch runs in well under a millisecond: handing it to a thread and back costs
                # about as much as the run, and the event loop may block that briefly.
                out = self._run(pad_batch(encoded, self.k))
            else:
                out = await asyncio.get_running_loop().run_in_executor(
                    self._executor, lambda: self._run(pad_batch(encoded, self.k))
                )
            out = _rows(out, len(take))
        except Exception as exc:  # any ONNX Runtime failure or malformed output: every caller falls back
            log.warning("model run failed on a batch of %d: %s", len(take), exc)
            for item in take:
                if not item.future.done():
                    item.future.set_exception(ModelRunError(str(exc)))
            return
        inference = time.perf_counter() - start
        if self._on_batch is not None:
            self._on_batch(len(take), inference)
        for i, item in enumerate(take):
            if not item.future.done():
                item.future.set_result(BatchResult(out[i], start - item.enqueued, inference, len(take)))
