"""Prometheus metrics of the service, labelled by model and version (KServe/Triton style)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Sub-millisecond resolution where the targets live (p50 <= 2 ms), coarse up to a second.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """All service metrics in one registry of their own (several servers may share a process in tests)."""

    def __init__(self) -> None:
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
        self.queue_depth = Gauge(
            "dispatch_queue_depth", "Snapshots waiting for inference.", ["model", "version"], registry=r
        )
        self.model_events = Counter(
            "dispatch_model_events",
            "Model loads and reloads by result (ok, error).",
            ["slot", "model", "version", "event", "result"],
            registry=r,
        )
        self.model_info = Gauge(
            "dispatch_model_loaded",
            "1 for every model currently serving.",
            ["slot", "model", "version", "device"],
            registry=r,
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

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Start the /metrics HTTP endpoint; returns the HTTP server (call ``shutdown()`` to stop)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
