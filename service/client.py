"""Client helpers: Snapshot ↔ proto conversion, and sync / asyncio clients of the decision service."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dispatch.snapshot import JointAction, Snapshot
from service.gen.dispatch.v1 import dispatch_pb2 as pb
from service.gen.dispatch.v1 import dispatch_pb2_grpc as pb_grpc


def snapshot_to_request(
    snapshot: Snapshot,
    request_id: str = "",
    model_name: str = "",
    model_version: str = "",
    sticky_key: str = "",
    deadline_hint_ms: int = 0,
    include_scores: bool = False,
    columnar: bool = False,
) -> pb.DecideRequest:
    """The DecideRequest describing a snapshot (the inverse of the server's validation).

    ``columnar`` sends couriers, orders and restaurants as tables (one packed array per field): the
    same request, cheaper to build, send and validate for large snapshots.
    """
    p = snapshot.params
    req = pb.DecideRequest(
        request_id=request_id,
        time=float(snapshot.time),
        params=pb.ServiceParams(
            meters_per_minute=p.meters_per_minute,
            pickup_service_minutes=p.pickup_service,
            dropoff_service_minutes=p.dropoff_service,
            target_click_to_door_minutes=p.target_ctd,
            max_click_to_door_minutes=p.max_ctd,
        ),
        policy=pb.PolicySelector(model_name=model_name, model_version=model_version, sticky_key=sticky_key),
        deadline_hint_ms=deadline_hint_ms,
        include_scores=include_scores,
    )
    s = snapshot
    courier_cols = (s.courier_xy[:, 0], s.courier_xy[:, 1], s.courier_free_at, s.courier_on_time, s.courier_off_time)
    rest_of_order = [s.restaurant_ids[int(r)] for r in s.order_restaurant]
    order_cols = (s.order_xy[:, 0], s.order_xy[:, 1], s.order_placement, s.order_ready)
    rest_cols = (s.restaurant_xy[:, 0], s.restaurant_xy[:, 1])
    if columnar:
        ct, ot, rt = req.courier_table, req.order_table, req.restaurant_table
        ct.id.extend(s.courier_ids)
        for field, col in zip(("x", "y", "free_at", "on_time", "off_time"), courier_cols, strict=True):
            getattr(ct, field).extend(col.astype(float).tolist())
        ot.id.extend(s.order_ids)
        ot.restaurant_id.extend(rest_of_order)
        for field, col in zip(("x", "y", "placement_time", "ready_time"), order_cols, strict=True):
            getattr(ot, field).extend(col.astype(float).tolist())
        rt.id.extend(s.restaurant_ids)
        for field, col in zip(("x", "y"), rest_cols, strict=True):
            getattr(rt, field).extend(col.astype(float).tolist())
        return req
    add = req.couriers.add
    for cid, x, y, free, on, off in zip(s.courier_ids, *(c.astype(float).tolist() for c in courier_cols), strict=True):
        add(id=cid, x=x, y=y, free_at=free, on_time=on, off_time=off)
    add_order = req.orders.add
    for oid, rid, x, y, placed, ready in zip(
        s.order_ids, rest_of_order, *(c.astype(float).tolist() for c in order_cols), strict=True
    ):
        add_order(id=oid, restaurant_id=rid, x=x, y=y, placement_time=placed, ready_time=ready)
    add_rest = req.restaurants.add
    for rid, x, y in zip(s.restaurant_ids, *(c.astype(float).tolist() for c in rest_cols), strict=True):
        add_rest(id=rid, x=x, y=y)
    return req


def response_to_ids(response: pb.DecideResponse) -> dict[str, tuple[str, ...]]:
    """{courier id: order ids in drop-off sequence} for couriers that act (like JointAction.to_ids)."""
    return {a.courier_id: tuple(a.order_ids) for a in response.actions if not a.wait}


def response_to_action(response: pb.DecideResponse, snapshot: Snapshot) -> JointAction:
    """The response as a JointAction on ``snapshot`` (InfeasibleActionError on unknown ids)."""
    return JointAction.from_ids(snapshot, {c: list(o) for c, o in response_to_ids(response).items()})


def _check_arguments(target: str, client_cert: Path | bytes | None, client_key: Path | bytes | None) -> None:
    """ValueError on arguments gRPC's C core would abort the process on, or print a C trace for."""
    if not target.strip():
        raise ValueError("target must be host:port, got an empty string")
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key must be given together (mutual TLS needs both)")


def _credentials(
    root_certificates: Path | bytes | None, client_cert: Path | bytes | None, client_key: Path | bytes | None
) -> grpc.ChannelCredentials:
    def read(x: Path | bytes | None) -> bytes | None:
        return x if isinstance(x, bytes) or x is None else Path(x).read_bytes()

    return grpc.ssl_channel_credentials(read(root_certificates), read(client_key), read(client_cert))


def _options(max_message_bytes: int, server_name: str | None, own_connection: bool) -> list[tuple[str, Any]]:
    opts: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    if own_connection:
        # Channels to one target otherwise share the process-wide subchannel pool, hence one TCP connection.
        opts.append(("grpc.use_local_subchannel_pool", 1))
    return opts


class _Common:
    def __init__(self, token: str | None, timeout: float | None) -> None:
        self.metadata: Sequence[tuple[str, str]] = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout


class DispatchClient(_Common):
    """Blocking client. TLS when ``root_certificates`` is given (plus a client cert and key for mutual TLS).

    A client cert and key without ``root_certificates`` also mean TLS, the server verified against the
    system's roots. ValueError on an empty target or a client cert without its key (or the reverse).

    ``own_connection``: this client's channel opens its own TCP connection instead of sharing one with the
    process's other channels to the same target. A ``--workers N`` server balances connections, not calls.
    """

    def __init__(
        self,
        target: str,
        *,
        root_certificates: Path | bytes | None = None,
        client_cert: Path | bytes | None = None,
        client_key: Path | bytes | None = None,
        server_name: str | None = None,
        token: str | None = None,
        timeout: float | None = 10.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        own_connection: bool = False,
    ) -> None:
        _check_arguments(target, client_cert, client_key)
        super().__init__(token, timeout)
        opts = _options(max_message_bytes, server_name, own_connection)
        if root_certificates is not None or client_cert is not None:
            creds = _credentials(root_certificates, client_cert, client_key)
            self.channel = grpc.secure_channel(target, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(target, options=opts)
        self.stub = pb_grpc.DispatchServiceStub(self.channel)
        self.admin = pb_grpc.ModelAdminServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def decide(
        self, request: pb.DecideRequest | Snapshot, timeout: float | None = None, **kw: Any
    ) -> pb.DecideResponse:
        """Decide one snapshot (or a ready request); ``kw`` goes to snapshot_to_request."""
        if isinstance(request, Snapshot):
            request = snapshot_to_request(request, **kw)
        return self.stub.Decide(request, timeout=timeout or self.timeout, metadata=self.metadata)  # type: ignore[no-any-return]

    def decide_stream(
        self, requests: Sequence[pb.DecideRequest], timeout: float | None = None
    ) -> list[pb.DecideStreamResponse]:
        """Send many requests over one DecideStream; the answers in arrival order."""
        return list(self.stub.DecideStream(iter(requests), timeout=timeout or self.timeout, metadata=self.metadata))

    def model_info(self, model_name: str = "") -> pb.ModelInfo:
        """Metadata of a served model (default model when empty)."""
        req = pb.GetModelInfoRequest(model_name=model_name)
        return self.stub.GetModelInfo(req, timeout=self.timeout, metadata=self.metadata).model  # type: ignore[no-any-return]

    def reload(self, model_name: str = "", path: str = "") -> pb.ReloadResponse:
        """Ask the server to reload a model slot."""
        req = pb.ReloadRequest(model_name=model_name, path=path)
        return self.admin.Reload(req, timeout=self.timeout, metadata=self.metadata)  # type: ignore[no-any-return]

    def list_models(self) -> list[pb.ModelInfo]:
        """Every model slot the server holds."""
        return list(self.admin.ListModels(pb.ListModelsRequest(), timeout=self.timeout, metadata=self.metadata).models)

    def health(self, service: str = "") -> str:
        """Health status name (SERVING, NOT_SERVING, ...) of the server or one of its services."""
        resp = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def __enter__(self) -> DispatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncDispatchClient(_Common):
    """asyncio client (grpc.aio); same options as DispatchClient."""

    def __init__(
        self,
        target: str,
        *,
        root_certificates: Path | bytes | None = None,
        client_cert: Path | bytes | None = None,
        client_key: Path | bytes | None = None,
        server_name: str | None = None,
        token: str | None = None,
        timeout: float | None = 10.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        own_connection: bool = False,
    ) -> None:
        _check_arguments(target, client_cert, client_key)
        super().__init__(token, timeout)
        opts = _options(max_message_bytes, server_name, own_connection)
        if root_certificates is not None or client_cert is not None:
            creds = _credentials(root_certificates, client_cert, client_key)
            self.channel = grpc.aio.secure_channel(target, creds, options=opts)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=opts)
        self.stub = pb_grpc.DispatchServiceStub(self.channel)

    async def decide(
        self, request: pb.DecideRequest | Snapshot, timeout: float | None = None, **kw: Any
    ) -> pb.DecideResponse:
        """Decide one snapshot (or a ready request)."""
        if isinstance(request, Snapshot):
            request = snapshot_to_request(request, **kw)
        return await self.stub.Decide(request, timeout=timeout or self.timeout, metadata=self.metadata)  # type: ignore[no-any-return]

    async def model_info(self, model_name: str = "") -> pb.ModelInfo:
        """Metadata of a served model."""
        req = pb.GetModelInfoRequest(model_name=model_name)
        return (await self.stub.GetModelInfo(req, timeout=self.timeout, metadata=self.metadata)).model  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def __aenter__(self) -> AsyncDispatchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
