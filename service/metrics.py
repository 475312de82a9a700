"""Prometheus metrics of the service, labelled by model and version (KServe/Triton style).

A ``--workers N`` server runs prometheus_client's multiprocess mode: every worker process writes its
values to files in ``PROMETHEUS_MULTIPROC_DIR`` (set by the supervisor before it spawns them) and the
supervisor serves their sum (:func:`serve_aggregated`). Gauges say how to combine processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess() -> bool:
    """True in a worker of a ``--workers N`` server (metrics go to the shared folder, not this process)."""
    return bool(os.environ.get(MULTIPROC_ENV))


# Sub-millisecond resolution where the targets live (p50 <= 2 ms), coarse up to a second.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGES = ("queue", "inference", "assembly", "total")


class Metrics:
    """All service metrics in one registry of their own (several servers may share a process in tests).

    ``worker``: this process's index in a ``--workers N`` server; it adds
    ``dispatch_worker_requests_total{worker}``, so operators see how connections spread over workers.
    """

    def __init__(self, worker: int | None = None) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "dispatch_requests",
            "Decide requests by gRPC method and status code.",
            ["method", "code", "model", "version"],
            registry=r,
        )
        self.latency = Histogram(
            "dispatch_request_latency_seconds",
            "Server-side latency by stage: queue (waiting for a batch), inference (ONNX Runtime), "
            "assembly (validation, candidates, features, joint action), total.",
            ["stage", "model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "dispatch_batch_size",
            "Snapshots per ONNX Runtime run.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "dispatch_fallbacks",
            "Requests answered by the heuristic fallback.",
            ["model", "version", "reason"],
            registry=r,
        )
        self.shed = Counter(
            "dispatch_shed",
            "Requests refused with RESOURCE_EXHAUSTED because the batch queue was full.",
            ["model", "version"],
            registry=r,
        )
        # Across worker processes: snapshots waiting in all of them (a dead worker's queue is gone).
        self.queue_depth = Gauge(
            "dispatch_queue_depth",
            "Snapshots waiting for inference.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_events = Counter(
            "dispatch_model_events",
            "Model loads and reloads by result (ok, error).",
            ["slot", "model", "version", "event", "result"],
            registry=r,
        )
        # Across worker processes: how many live workers serve the model (equal to --workers once an admin
        # change has reached them all; two versions side by side while it propagates).
        self.model_info = Gauge(
            "dispatch_model_loaded",
            "1 for every model currently serving (with --workers N: the worker processes serving it).",
            ["slot", "model", "version", "device"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.device_fallback = Counter(
            "dispatch_device_fallback",
            "Sessions asked for --device auto that got CPU because CUDA was missing.",
            registry=r,
        )
        self.shadow = Counter(
            "dispatch_shadow_decisions",
            "Shadow-model decisions by outcome (agree, differ, error, shed).",
            ["model", "version", "outcome"],
            registry=r,
        )

        # Labelled children of the per-request series (counters and histograms are never removed, so a
        # cached child stays the registered one).
        self._request_children: dict[tuple[str, str, str, str], Any] = {}
        self._stage_children: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.worker_requests: Counter | None = None
        if worker is not None:
            self.worker_requests = Counter(
                "dispatch_worker_requests",
                "Decide calls and DecideStream messages answered, by worker process (--workers N).",
                ["worker"],
                registry=r,
            ).labels(str(worker))

    def count_request(self, method: str, code: str, model: str, version: str) -> None:
        """One answered Decide call or DecideStream message."""
        key = (method, code, model, version)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(*key)
        child.inc()
        if self.worker_requests is not None:
            self.worker_requests.inc()

    def observe_stages(self, model: str, version: str, queue: float, inference: float, total: float) -> None:
        """One request's latency split: queue, inference, assembly (the rest) and total seconds."""
        children = self._stage_children.get((model, version))
        if children is None:
            # labels() takes a lock and hashes four strings: looked up once per model version, not per request.
            children = tuple(self.latency.labels(stage, model, version) for stage in STAGES)
            self._stage_children[(model, version)] = children
        for child, value in zip(children, (queue, inference, max(0.0, total - queue - inference), total), strict=True):
            child.observe(value)

    @staticmethod
    def drop(gauge: Gauge, *labels: str) -> None:
        """Stop reporting one series of a gauge.

        In multiprocess mode a series lives on in this process's file (prometheus_client cannot remove it
        there), so it is set to 0 instead: a live-summed gauge then no longer counts this process.
        """
        if multiprocess():
            gauge.labels(*labels).set(0)
        else:
            gauge.remove(*labels)

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Start the /metrics HTTP endpoint; returns the HTTP server (call ``shutdown()`` to stop)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server


class _SupervisorCollector:
    """The supervisor's own metrics: configured workers and restarts per worker (read at each scrape)."""

    def __init__(self, workers: int, restarts: Callable[[], dict[int, int]]) -> None:
        self.workers = workers
        self.restarts = restarts

    def collect(self) -> Iterable[Metric]:
        """Current values as metric families."""
        yield GaugeMetricFamily("dispatch_workers", "Worker processes the server runs (--workers).", self.workers)
        counter = CounterMetricFamily(
            "dispatch_worker_restarts", "Worker processes restarted after an unexpected exit.", labels=["worker"]
        )
        for worker, n in sorted(self.restarts().items()):
            counter.add_metric([str(worker)], n)
        yield counter


def serve_aggregated(path: str, port: int, host: str, workers: int, restarts: Callable[[], dict[int, int]]) -> Any:
    """The /metrics endpoint of a ``--workers N`` server: every worker's metrics summed, plus the supervisor's.

    Returns the HTTP server (call ``shutdown()`` to stop).
    """
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    registry.register(_SupervisorCollector(workers, restarts))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
