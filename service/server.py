"""The gRPC decision server (grpc asyncio): Decide, DecideStream, GetModelInfo, admin, health, reflection."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dispatch import kernels
from dispatch.assemble import PLAN_RULE, Assembled
from dispatch.candidates import CandidateConfig
from dispatch.model import ModelError
from dispatch.snapshot import FloatArray, JointAction, Snapshot
from dispatch.workers import spawn_pool
from service import portfile
from service.adminlog import AdminLog, AdminLogError
from service.auth import TokenAuth, server_credentials
from service.batcher import BatcherClosed, ModelRunError, QueueFull
from service.decision import (
    FALLBACK_RULE,
    Prepared,
    build_response,
    fallback_scores,
    finish,
    model_scores,
    prepare,
)
from service.gen.dispatch.v1 import dispatch_pb2 as pb
from service.gen.dispatch.v1 import dispatch_pb2_grpc as pb_grpc
from service.metrics import Metrics
from service.registry import LoadedModel, Registry, RegistryConfig, UnknownModel, VersionMismatch
from service.validation import Limits, ValidationError, check_triples, orders_field, to_snapshot
from service.worker import WorkerRole

log = logging.getLogger(__name__)


DISPATCH_SERVICE = pb.DESCRIPTOR.services_by_name["DispatchService"].full_name
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["ModelAdminService"].full_name


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return max(1, len(os.sched_getaffinity(0)))


@dataclass
class ServerConfig:
    """Everything ``dispatch serve`` can set; the defaults serve one model on loopback."""

    models: list[tuple[str, Path]]
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = 9464
    metrics_host: str = "127.0.0.1"
    device: str = "cpu"
    threads: int = 0
    cpu_threads: int = 0
    prep_processes: int = 0
    inline_max_cells: int = 32768
    inline_max_agents: int = 128
    max_batch: int = 32
    max_queue_delay_ms: float = 0.0
    max_queue: int = 256
    limits: Limits = field(default_factory=Limits)
    max_message_bytes: int = 16 * 1024 * 1024
    fallback_margin_ms: float = 10.0
    ab: dict[str, float] = field(default_factory=dict)
    shadow: str | None = None
    watch_s: float = 0.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    token: str | None = None
    grace_s: float = 10.0
    port_file: Path | None = None
    worker: WorkerRole | None = None  # set in each worker process of a --workers N server


def _bind_problem(host_flag: str, host: str, port_flag: str, port: int, reason: str | None) -> str:
    """One line naming the flags of an address that could not be bound (``reason``: the OS's, when known)."""
    try:
        socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        return f"{host_flag} {host}: not a host name or address ({getattr(exc, 'strerror', None) or exc})"
    why = reason or "address in use, or not an address of this machine?"
    return f"{port_flag} {port} on {host}: cannot bind ({why})"


class ServiceError(Exception):
    """A request the server answers with a non-OK status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _warm() -> int:
    """Runs in a preparation process: import the decision path and load its kernels; returns the worker's pid."""
    kernels.warm_up()
    return os.getpid()


def preparation_cells(request: pb.DecideRequest, candidates: CandidateConfig) -> int:
    """Size estimate of a request's preparation: orders × (couriers + 32) × (max bundle size − 1, at least 1).

    Bundling grows with the orders (and steeply with the bundle size), route times with couriers ×
    bundles; 64 couriers × 256 orders with pairs is 24,576.
    """
    # Either form counts: the entity lists or their columnar tables (a request uses one of the two).
    orders = len(request.orders) + len(request.order_table.id)
    couriers = len(request.couriers) + len(request.courier_table.id)
    return orders * (couriers + 32) * max(1, candidates.max_bundle_size - 1)


def _us(seconds: float) -> int:
    return round(seconds * 1e6)


class DecisionService:
    """The request path, independent of the transport: request → validated snapshot → joint action."""

    def __init__(
        self,
        registry: Registry,
        metrics: Metrics,
        limits: Limits,
        fallback_margin_s: float,
        cpu_threads: int,
        prep_processes: int = 0,
        max_waiting: int = 256,
        inline_max_cells: int = 32768,
    ) -> None:
        # Two pools: assembly never queues behind the preparation of newer requests, so requests finish
        # in arrival order and few prepared snapshots (large arrays) are alive at once.
        self.cpu = ThreadPoolExecutor(cpu_threads, thread_name_prefix="dispatch-prep")
        self.post = ThreadPoolExecutor(cpu_threads, thread_name_prefix="dispatch-assemble")
        self.max_waiting = max(1, max_waiting)
        self.inline_max_cells = inline_max_cells
        self._waiting = 0
        # Candidate generation is Python-heavy and holds the GIL: processes (spawned, since forking a
        # process that runs gRPC threads is unsafe) let it use every core.
        self._prep_processes = prep_processes
        self.procs = spawn_pool(prep_processes) if prep_processes > 0 else None
        self.registry = registry
        self.metrics = metrics
        self.limits = limits
        self.margin = fallback_margin_s
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    async def decide(self, request: pb.DecideRequest, remaining_s: float | None) -> tuple[pb.DecideResponse, str, str]:
        """The response plus the (model, version) labels; ServiceError for a refused request."""
        t0 = time.perf_counter()
        if request.deadline_hint_ms:
            hint = request.deadline_hint_ms / 1000.0
            remaining_s = hint if remaining_s is None else min(remaining_s, hint)
        budget_end = None if remaining_s is None else t0 + remaining_s
        if not self.registry.ready:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "no model loaded yet")
        loop = asyncio.get_running_loop()
        queue_s = inference_s = 0.0
        reason = ""
        snapshot: Snapshot | None = None
        small = False
        while True:
            model = self._pick(request)
            # Small snapshots take a millisecond or two of CPU: a thread hand-off and back costs a good part
            # of that in latency, and blocking the event loop that briefly is harmless.
            cells = preparation_cells(request, model.manifest.candidates)
            small = self.procs is None and cells <= self.inline_max_cells
            if self._waiting >= self.max_waiting:
                self.metrics.shed.labels(model.name, model.version).inc()
                raise ServiceError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"server busy: {self._waiting} requests waiting for preparation (--max-queue)",
                )
            self._waiting += 1
            try:
                # CPU-heavy numpy work runs off the event loop so health checks and I/O stay responsive.
                if small:
                    snapshot, prepared = self._prepare(request, snapshot, model)
                else:
                    snapshot, prepared = await loop.run_in_executor(self.cpu, self._prepare, request, snapshot, model)
            except ValidationError as exc:
                raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            finally:
                self._waiting -= 1
            reason = ""
            scores = None
            if prepared.encoded is None:
                scores = np.zeros((0, prepared.cands.k + 1))
                break
            left = None if budget_end is None else budget_end - time.perf_counter() - self.margin
            if left is not None and left <= 0:
                reason = "deadline"
                break
            assert model.batcher is not None
            try:
                now = model.batcher.run_now(prepared.encoded) if small else None
            except ModelRunError as exc:
                log.warning("model %s:%s failed, fallback answers: %s", model.name, model.version, exc)
                reason = "model_error"
                break
            if now is not None:
                queue_s, inference_s = now.queue_s, now.inference_s
                try:
                    scores = model_scores(prepared.cands, now.logits, model.k)
                except (ValueError, IndexError) as exc:
                    log.warning("model %s:%s failed, fallback answers: %s", model.name, model.version, exc)
                    reason = "model_error"
                break
            try:
                fut = model.batcher.submit(prepared.encoded)
            except BatcherClosed:
                continue  # the slot was hot-swapped between pick and submit: use the new model
            except QueueFull as exc:
                self.metrics.shed.labels(model.name, model.version).inc()
                raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
            try:
                result = await asyncio.wait_for(fut, left)
                queue_s, inference_s = result.queue_s, result.inference_s
                scores = model_scores(prepared.cands, result.logits, model.k)
            except TimeoutError:
                reason = "deadline"
            except (ModelRunError, ValueError, IndexError) as exc:
                log.warning("model %s:%s failed, fallback answers: %s", model.name, model.version, exc)
                reason = "model_error"
            break
        if reason:
            self.metrics.fallbacks.labels(model.name, model.version, reason).inc()
        if small:
            assembled, scores, rule, reason = self._assemble(prepared, scores, model, reason)
        else:
            assembled, scores, rule, reason = await loop.run_in_executor(
                self.post, self._assemble, prepared, scores, model, reason
            )
        response = build_response(prepared, assembled, scores, request.include_scores)
        total = time.perf_counter() - t0
        response.request_id = request.request_id
        response.model_name, response.model_version = model.name, model.version
        response.fallback, response.fallback_reason, response.conflict_rule = bool(reason), reason, rule
        t = response.timings
        t.queue_us, t.inference_us, t.total_us = _us(queue_s), _us(inference_s), _us(total)
        t.assembly_us = max(0, t.total_us - t.queue_us - t.inference_us)
        self.metrics.observe_stages(model.name, model.version, queue_s, inference_s, total)
        if not reason and snapshot is not None:
            self._shadow(model, prepared, assembled.action, snapshot)
        return response, model.name, model.version

    def _prepare(
        self, request: pb.DecideRequest, snapshot: Snapshot | None, model: LoadedModel
    ) -> tuple[Snapshot, Prepared]:
        """Validate (once) and build the candidates and features for ``model``."""
        if snapshot is None:
            snapshot = to_snapshot(request, self.limits)
        # Per model, not once: a hot swap between tries may bring a model that bundles three orders.
        cfg = model.manifest.candidates
        check_triples(snapshot, orders_field(request), cfg.max_bundle_size, model.rule, self.limits.max_order_pairs)
        if self.procs is not None:
            return snapshot, self.procs.submit(prepare, snapshot, model.manifest.candidates, model.rule).result()
        return snapshot, prepare(snapshot, model.manifest.candidates, model.rule)

    def warm_up(self) -> None:
        """Compile the decision path's kernels and start the preparation processes before the first request."""
        log.info("decision kernels ready in %.1f s", kernels.warm_up())
        if self.procs is not None:
            # Each worker imports numpy and the decision path once; a slow first call would blow deadlines.
            for future in [self.procs.submit(_warm) for _ in range(self._prep_processes)]:
                future.result()

    def _assemble(
        self, prepared: Prepared, scores: FloatArray | None, model: LoadedModel, reason: str
    ) -> tuple[Assembled, FloatArray, str, str]:
        """The joint action under the model's rule, or the fallback's when ``reason`` is set or the rule fails."""
        if not reason and scores is not None:
            try:
                return finish(prepared, scores, model.rule), scores, model.rule, ""
            except Exception as exc:  # NaN or otherwise broken model scores: still answer, flagged
                log.warning("assembly failed on %s:%s scores, fallback answers: %s", model.name, model.version, exc)
                reason = "model_error"
                self.metrics.fallbacks.labels(model.name, model.version, reason).inc()
        fallback = fallback_scores(prepared)
        return finish(prepared, fallback, FALLBACK_RULE), fallback, FALLBACK_RULE, reason

    def _pick(self, request: pb.DecideRequest) -> LoadedModel:
        try:
            return self.registry.pick(request.policy, request.request_id)
        except UnknownModel as exc:
            raise ServiceError(grpc.StatusCode.NOT_FOUND, f"policy.{exc}") from None
        except VersionMismatch as exc:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None

    def _shadow(self, served: LoadedModel, prepared: Prepared, action: JointAction, snapshot: Snapshot) -> None:
        shadow = self.registry.shadow_model()
        if shadow is None or shadow.slot == served.slot:
            return
        answer = action.to_ids(snapshot)  # only with a shadow to compare against: ids cost a dict per request
        task = asyncio.get_running_loop().create_task(
            self._run_shadow(shadow, prepared, (served.manifest.candidates, served.rule == PLAN_RULE), answer)
        )
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _run_shadow(
        self,
        shadow: LoadedModel,
        primary: Prepared,
        primary_config: tuple[CandidateConfig, bool],
        answer: dict[str, tuple[str, ...]],
    ) -> None:
        """Score the same snapshot with the shadow model; only logged and counted, never returned."""
        counter = self.metrics.shadow
        loop = asyncio.get_running_loop()
        try:
            if (shadow.manifest.candidates, shadow.rule == PLAN_RULE) == primary_config:
                prepared = primary  # same candidate rule: reuse the served request's encoding
            else:
                cfg = shadow.manifest.candidates
                check_triples(primary.snapshot, "orders", cfg.max_bundle_size, shadow.rule, self.limits.max_order_pairs)
                prepared = await loop.run_in_executor(self.cpu, prepare, primary.snapshot, cfg, shadow.rule)
            if prepared.encoded is None:
                ids: dict[str, tuple[str, ...]] = {}
            else:
                assert shadow.batcher is not None
                result = await shadow.batcher.submit(prepared.encoded)
                scores = model_scores(prepared.cands, result.logits, shadow.k)
                assembled = await loop.run_in_executor(self.post, finish, prepared, scores, shadow.rule)
                ids = assembled.action.to_ids(primary.snapshot)
        except (QueueFull, BatcherClosed):
            counter.labels(shadow.name, shadow.version, "shed").inc()
            return
        except Exception as exc:  # a failing shadow must never touch the served answer
            log.warning("shadow %s:%s failed: %s", shadow.name, shadow.version, exc)
            counter.labels(shadow.name, shadow.version, "error").inc()
            return
        outcome = "agree" if ids == answer else "differ"
        log.debug("shadow %s:%s %s (%d vs %d assignments)", shadow.name, shadow.version, outcome, len(ids), len(answer))
        counter.labels(shadow.name, shadow.version, outcome).inc()

    async def drain_shadow(self) -> None:
        """Wait for shadow scoring still running."""
        if self._shadow_tasks:
            await asyncio.gather(*self._shadow_tasks, return_exceptions=True)


class DispatchServicer(pb_grpc.DispatchServiceServicer):
    """gRPC adapter of DecisionService."""

    def __init__(self, service: DecisionService) -> None:
        self.service = service

    async def Decide(self, request: pb.DecideRequest, context: grpc.aio.ServicerContext) -> pb.DecideResponse:
        """One snapshot in, one joint action out."""
        # Counted before the status leaves, so a scrape right after the reply already sees it.
        count = self.service.metrics.count_request
        try:
            response, name, version = await self.service.decide(request, context.time_remaining())
        except ServiceError as exc:
            count("Decide", exc.code.name, "", "")
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises
        except asyncio.CancelledError:
            count("Decide", grpc.StatusCode.CANCELLED.name, "", "")
            raise
        except Exception:
            count("Decide", grpc.StatusCode.INTERNAL.name, "", "")
            log.exception("Decide failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error (logged on the server)")
            raise
        count("Decide", "OK", name, version)
        return response

    async def DecideStream(
        self, request_iterator: AsyncIterator[pb.DecideRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DecideStreamResponse]:
        """Snapshots decided concurrently (so they batch); answers in completion order."""
        out: asyncio.Queue[pb.DecideStreamResponse | None] = asyncio.Queue()
        metrics = self.service.metrics

        async def one(request: pb.DecideRequest) -> None:
            try:
                response, name, version = await self.service.decide(request, None)
            except Exception as exc:  # one bad message must not end the caller's stream
                code, message = (
                    (exc.code, exc.message)
                    if isinstance(exc, ServiceError)
                    else (grpc.StatusCode.INTERNAL, "internal error (logged on the server)")
                )
                if not isinstance(exc, ServiceError):
                    log.exception("DecideStream message failed")
                metrics.count_request("DecideStream", code.name, "", "")
                err = pb.StreamError(request_id=request.request_id, code=code.value[0], message=message)
                await out.put(pb.DecideStreamResponse(error=err))
                return
            metrics.count_request("DecideStream", "OK", name, version)
            await out.put(pb.DecideStreamResponse(response=response))

        async def reader() -> None:
            tasks: set[asyncio.Task[None]] = set()
            try:
                async for request in request_iterator:
                    task = asyncio.get_running_loop().create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                await out.put(None)

        read = asyncio.get_running_loop().create_task(reader())
        try:
            while (item := await out.get()) is not None:
                yield item
        finally:
            read.cancel()

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        """Metadata of one served model."""
        registry = self.service.registry
        try:
            return pb.GetModelInfoResponse(model=registry.info(registry.get(request.model_name)))
        except UnknownModel as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise


Reloader = Callable[[str, str | None], Awaitable[tuple[LoadedModel, str]]]


class AdminServicer(pb_grpc.ModelAdminServiceServicer):
    """Hot reload and listing of model slots."""

    def __init__(self, registry: Registry, reload: Reloader | None = None) -> None:
        self.registry = registry
        # A worker of a --workers N server reloads through the shared admin log (service/adminlog.py).
        self.reload = reload or registry.reload

    async def Reload(self, request: pb.ReloadRequest, context: grpc.aio.ServicerContext) -> pb.ReloadResponse:
        """Reload one slot; the old model keeps serving when the new one is refused."""
        try:
            model, previous = await self.reload(request.model_name, request.path or None)
        except UnknownModel as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise
        except ModelError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"reload refused, old model kept: {exc}")
            raise
        except AdminLogError as exc:  # the model is fine; recording the change failed, and a retry may succeed
            log.error("Reload of slot %r: %s", request.model_name, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{exc}, old model kept")
            raise
        except Exception:
            # Not the model (the registry turns every failure to load one into ModelError): the admin log, say.
            log.exception("Reload of slot %r from %r failed", request.model_name, request.path)
            await context.abort(grpc.StatusCode.INTERNAL, "reload: internal error (logged on the server)")
            raise
        return pb.ReloadResponse(model=self.registry.info(model), previous_version=previous)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        """Every loaded slot."""
        return pb.ListModelsResponse(models=self.registry.infos())


class DispatchServer:
    """One running server: gRPC port, metrics port, registry; start() then stop()."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics(config.worker.index if config.worker else None)
        self.registry = Registry(
            config.models,
            RegistryConfig(
                device=config.device,
                threads=config.threads or usable_cores(),
                max_batch=config.max_batch,
                max_delay_s=config.max_queue_delay_ms / 1000.0,
                max_queue=config.max_queue,
                inline_max_rows=config.inline_max_agents,
            ),
            self.metrics,
            ab=config.ab,
            shadow=config.shadow,
        )
        self.service = DecisionService(
            self.registry,
            self.metrics,
            config.limits,
            config.fallback_margin_ms / 1000.0,
            config.cpu_threads or usable_cores(),
            config.prep_processes,
            config.max_queue,
            config.inline_max_cells,
        )
        self.admin_log = (
            AdminLog(config.worker.admin_log, self.registry, config.worker.index) if config.worker else None
        )
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.metrics_port = 0
        self._server: grpc.aio.Server | None = None
        self._http: Any = None
        self._watch: asyncio.Task[None] | None = None
        self._follow: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    async def start(self, load_models: bool = True) -> None:
        """Listen (health NOT_SERVING), then load the models and turn SERVING; ModelError if one is refused.

        A worker of a ``--workers N`` server loads first and listens after: gRPC accepts connections from
        the moment it binds, and the kernel would hand a worker still loading its share of new ones.
        """
        c = self.config
        interceptors = [TokenAuth(c.token)] if c.token else []
        options = [
            ("grpc.max_receive_message_length", c.max_message_bytes),
            ("grpc.max_send_message_length", c.max_message_bytes),
        ]
        # Every worker binds the same port; the kernel spreads incoming connections over them. gRPC sets
        # SO_REUSEPORT by default on Linux, so a lone server turns it off: otherwise a second server started
        # on a busy port binds silently and takes half of the first one's connections.
        options.append(("grpc.so_reuseport", int(c.worker is not None)))
        server = self._server = grpc.aio.server(interceptors=interceptors, options=options)
        pb_grpc.add_DispatchServiceServicer_to_server(DispatchServicer(self.service), server)
        reload = self.admin_log.reload if self.admin_log else None
        pb_grpc.add_ModelAdminServiceServicer_to_server(AdminServicer(self.registry, reload), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (DISPATCH_SERVICE, ADMIN_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        for name in ("", DISPATCH_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        load_first = load_models and c.worker is not None
        if load_first:
            await self._load_models()
        address = f"{c.host}:{c.port}"
        try:
            if c.tls_cert and c.tls_key:
                creds = server_credentials(c.tls_cert, c.tls_key, c.tls_client_ca)
                self.port = server.add_secure_port(address, creds)
            elif c.tls_cert or c.tls_key or c.tls_client_ca:
                raise ValueError("TLS needs both --tls-cert and --tls-key (and --tls-client-ca for mutual TLS)")
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError:  # gRPC says only "Failed to bind to address ..."
            raise ValueError(_bind_problem("--host", c.host, "--port", c.port, "")) from None
        if c.metrics_port is not None:
            try:
                self._http = self.metrics.serve(c.metrics_port, c.metrics_host)
            except OSError as exc:  # socket.gaierror included
                raise ValueError(
                    _bind_problem("--metrics-host", c.metrics_host, "--metrics-port", c.metrics_port, exc.strerror)
                ) from None
            self.metrics_port = int(self._http.server_port)
        await server.start()
        log.info("gRPC listening on %s:%d, metrics on %s", c.host, self.port, self.metrics_port or "off")
        if load_first:
            await self._report_serving()
        elif load_models:
            await self.load_models()

    async def load_models(self) -> None:
        """Load every model, then report SERVING (and write the port file)."""
        await self._load_models()
        await self._report_serving()

    async def _load_models(self) -> None:
        """Load every model and the decision kernels; a worker also catches up with the shared admin log."""
        if self.admin_log is not None:
            # A restarted worker serves what the others serve now, not what the command line named.
            self.registry.paths.update(self.admin_log.start_paths())
        await self.registry.load_all()
        await asyncio.get_running_loop().run_in_executor(None, self.service.warm_up)
        # Everything alive now (modules, models, compiled kernels: over 100k objects) lives as long as the
        # server: moved out of the collector's reach, a full collection scans only what requests leave
        # behind, so it no longer costs tens of milliseconds in some unlucky request's latency.
        gc.collect()
        gc.freeze()
        if self.admin_log is not None:
            await self.admin_log.catch_up()  # changes made while this worker was loading
            self._follow = asyncio.get_running_loop().create_task(self.admin_log.follow())

    async def _report_serving(self) -> None:
        """Health SERVING, the --watch poller, the port file."""
        for name in ("", DISPATCH_SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.config.watch_s > 0:
            self._watch = asyncio.get_running_loop().create_task(self.registry.watch(self.config.watch_s))
        if self.config.port_file:
            try:
                portfile.write(self.config.port_file, self._port_line())
            except OSError as exc:
                raise ValueError(f"--port-file {self.config.port_file}: cannot write: {exc.strerror or exc}") from None

    def _port_line(self) -> str:
        return portfile.port_line(self.port, self.metrics_port)

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, refuse new calls, let in-flight calls finish (up to the grace)."""
        if self._stopped.is_set():
            return
        await self.health.enter_graceful_shutdown()
        for task in (self._watch, self._follow):
            if task is not None:
                task.cancel()
        if self._server is not None:
            await self._server.stop(self.config.grace_s if grace_s is None else grace_s)
        await self.service.drain_shadow()
        await self.registry.close()
        self.service.cpu.shutdown(wait=False)
        self.service.post.shutdown(wait=False)
        if self.service.procs is not None:
            # Not wait=True: a preparation still running in a worker (its call cancelled at the end of the grace)
            # would hold this event loop, and the exit, until it finished. The worker exits once it is done,
            # or with this process (dispatch.workers.spawn_pool).
            self.service.procs.shutdown(wait=False, cancel_futures=True)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self.config.worker is None:  # a worker's file is its ready signal to the supervisor, which removes its own
            portfile.remove(self.config.port_file, self._port_line())
        gc.unfreeze()  # the startup heap is ordinary garbage again (a process may outlive its server)
        self._stopped.set()
        log.info("server stopped")

    async def wait_stopped(self) -> None:
        """Block until stop() has finished."""
        await self._stopped.wait()


async def serve(config: ServerConfig, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> int:
    """Run until one of ``signals``, then shut down gracefully; returns the exit code."""
    server = DispatchServer(config)
    try:
        await server.start()
    except (ModelError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        await server.stop(0)
        return 2
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, lambda: loop.create_task(server.stop()))
    await server.wait_stopped()
    return 0


class ThreadedServer:
    """A DispatchServer on its own event loop in a background thread (tests, benchmarks, demos)."""

    def __init__(self, config: ServerConfig, load_models: bool = True) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="dispatch-server", daemon=True)
        self._thread.start()
        try:
            self.server: DispatchServer = self.call(self._make(config))
            self.call(self.server.start(load_models))
        except BaseException:
            # A refused start (bad model, cuda missing) must not leave a listening port or a thread behind.
            with contextlib.suppress(Exception):
                self.call(self.server.stop(0))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            raise

    @staticmethod
    async def _make(config: ServerConfig) -> DispatchServer:
        return DispatchServer(config)

    @property
    def port(self) -> int:
        """The bound gRPC port."""
        return self.server.port

    @property
    def target(self) -> str:
        """host:port to dial."""
        return f"127.0.0.1:{self.server.port}"

    def call(self, coro: Any, timeout: float | None = 60.0) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Any) -> Future[Any]:
        """Run a coroutine on the server's loop without waiting."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, grace_s: float = 5.0) -> None:
        """Graceful stop, then end the loop and the thread."""
        with contextlib.suppress(Exception):
            self.call(self.server.stop(grace_s), timeout=grace_s + 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()

    def __enter__(self) -> ThreadedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
