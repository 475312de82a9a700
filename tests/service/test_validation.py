"""Every kind of bad request is refused with INVALID_ARGUMENT naming the field; the server keeps serving."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from bench.serve import synthetic_snapshot
from dispatch.candidates import CandidateConfig
from dispatch.linear_model import write_linear_model
from dispatch.snapshot import Snapshot
from service.client import DispatchClient, snapshot_to_request
from service.gen.dispatch.v1 import dispatch_pb2 as pb
from service.server import ServerConfig, ThreadedServer
from service.validation import Limits, ValidationError, check_triples, to_snapshot
from tests.service.helpers import one_restaurant

Mutation = Callable[[pb.DecideRequest], None]


def _set(path: str, value: object) -> Mutation:
    """Set a (possibly indexed) field, e.g. 'couriers[1].x'."""

    def apply(req: pb.DecideRequest) -> None:
        obj: object = req
        parts = path.split(".")
        for part in parts[:-1]:
            name, _, idx = part.partition("[")
            obj = getattr(obj, name)
            if idx:
                obj = obj[int(idx.rstrip("]"))]  # type: ignore[index]
        setattr(obj, parts[-1], value)

    return apply


def _dup(field: str) -> Mutation:
    def apply(req: pb.DecideRequest) -> None:
        items = getattr(req, field)
        items[1].id = items[0].id

    return apply


NAN, INF = float("nan"), float("inf")
CASES: list[tuple[str, Mutation, str]] = [
    ("empty courier id", _set("couriers[1].id", ""), "couriers[1].id"),
    ("empty order id", _set("orders[0].id", ""), "orders[0].id"),
    ("empty restaurant id", _set("restaurants[2].id", ""), "restaurants[2].id"),
    ("duplicate courier id", _dup("couriers"), "couriers[1].id"),
    ("duplicate order id", _dup("orders"), "orders[1].id"),
    ("duplicate restaurant id", _dup("restaurants"), "restaurants[1].id"),
    ("NaN time", _set("time", NAN), "time"),
    ("negative time", _set("time", -2.0), "time"),
    ("fractional time", _set("time", 30.5), "time"),
    ("NaN courier x", _set("couriers[0].x", NAN), "couriers[0].x"),
    ("inf order y", _set("orders[1].y", INF), "orders[1].y"),
    ("negative restaurant x", _set("restaurants[0].x", -1.0), "restaurants[0].x"),
    ("NaN free_at", _set("couriers[0].free_at", NAN), "couriers[0].free_at"),
    ("negative on_time", _set("couriers[1].on_time", -5.0), "couriers[1].on_time"),
    ("off before on", _set("couriers[0].off_time", 0.0), "couriers[0].off_time"),
    ("NaN placement", _set("orders[0].placement_time", NAN), "orders[0].placement_time"),
    ("negative ready", _set("orders[0].ready_time", -1.0), "orders[0].ready_time"),
    ("placement in the future", _set("orders[0].placement_time", 1e6), "orders[0].placement_time"),
    ("time beyond 32 bits", _set("time", 1e300), "time"),
    ("off_time beyond 32 bits", _set("couriers[1].off_time", 1e300), "couriers[1].off_time"),
    ("ready beyond 32 bits", _set("orders[0].ready_time", 2.0**31), "orders[0].ready_time"),
    ("unknown restaurant", _set("orders[1].restaurant_id", "nowhere"), "orders[1].restaurant_id"),
    ("zero speed", _set("params.meters_per_minute", 0.0), "params.meters_per_minute"),
    ("NaN speed", _set("params.meters_per_minute", NAN), "params.meters_per_minute"),
    ("legs beyond 32 bits: a crawl", _set("params.meters_per_minute", 1e-9), "params.meters_per_minute"),
    ("legs beyond 32 bits: a far order", _set("orders[1].x", 1e17), "params.meters_per_minute"),
    ("negative service", _set("params.pickup_service_minutes", -1), "params.pickup_service_minutes"),
    ("limit below target", _set("params.max_click_to_door_minutes", 10), "params.max_click_to_door_minutes"),
]


def _cell(column: str, i: int, value: object) -> Mutation:
    """Set element ``i`` of a table column, e.g. ('order_table.x', 1)."""

    def apply(req: pb.DecideRequest) -> None:
        table, field = column.split(".")
        getattr(getattr(req, table), field)[i] = value

    return apply


def _drop_last(column: str) -> Mutation:
    def apply(req: pb.DecideRequest) -> None:
        table, field = column.split(".")
        del getattr(getattr(req, table), field)[-1]

    return apply


def _dup_id(table: str) -> Mutation:
    def apply(req: pb.DecideRequest) -> None:
        ids = getattr(req, table).id
        ids[1] = ids[0]

    return apply


def _also_rows(req: pb.DecideRequest) -> None:
    req.orders.add(id="row", restaurant_id=req.restaurant_table.id[0])


TABLE_CASES: list[tuple[str, Mutation, str]] = [
    ("empty courier id", _cell("courier_table.id", 1, ""), "courier_table.id[1]"),
    ("duplicate order id", _dup_id("order_table"), "order_table.id[1]"),
    ("NaN courier x", _cell("courier_table.x", 0, NAN), "courier_table.x[0]"),
    ("negative restaurant y", _cell("restaurant_table.y", 2, -1.0), "restaurant_table.y[2]"),
    ("off before on", _cell("courier_table.off_time", 0, 0.0), "courier_table.off_time[0]"),
    ("fractional ready", _cell("order_table.ready_time", 1, 700.5), "order_table.ready_time[1]"),
    ("placement in the future", _cell("order_table.placement_time", 0, 1e6), "order_table.placement_time[0]"),
    ("unknown restaurant", _cell("order_table.restaurant_id", 1, "nowhere"), "order_table.restaurant_id[1]"),
    ("short column", _drop_last("order_table.y"), "order_table.y"),
    ("short courier column", _drop_last("courier_table.free_at"), "courier_table.free_at"),
    ("list and table at once", _also_rows, "order_table"),
]


@pytest.mark.parametrize(("case", "mutate", "field"), TABLE_CASES, ids=[c[0] for c in TABLE_CASES])
def test_bad_table_field_is_named(
    server: ThreadedServer, snapshots: list[Snapshot], case: str, mutate: Mutation, field: str
):
    snap = snapshots[0]
    req = snapshot_to_request(snap, columnar=True)
    mutate(req)
    with DispatchClient(server.target) as client:
        code, details = _code(client, req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith(field), f"{case}: {details!r} does not name {field}"
        assert client.decide(snapshot_to_request(snap, columnar=True)).actions


@pytest.fixture(scope="module")
def small_server(model_dir: Path) -> Iterator[ThreadedServer]:
    """A server with tight size limits."""
    cfg = ServerConfig(
        models=[("lin", model_dir / "lin.onnx")],
        port=0,
        metrics_port=None,
        limits=Limits(max_couriers=20, max_orders=6, max_restaurants=300),
        max_message_bytes=64 * 1024,
    )
    with ThreadedServer(cfg) as srv:
        yield srv


def _code(client: DispatchClient, req: pb.DecideRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        client.decide(req)
    return err.value.code(), err.value.details() or ""


@pytest.mark.parametrize(("case", "mutate", "field"), CASES, ids=[c[0] for c in CASES])
def test_bad_field_is_named(server: ThreadedServer, snapshots: list[Snapshot], case: str, mutate: Mutation, field: str):
    snap = snapshots[0]
    req = snapshot_to_request(snap)
    mutate(req)
    with DispatchClient(server.target) as client:
        code, details = _code(client, req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith(field), f"{case}: {details!r} does not name {field}"
        # The same connection keeps serving good requests.
        assert client.decide(snap).actions


def test_over_limit_counts_name_the_limit(small_server: ThreadedServer, snapshots: list[Snapshot]):
    snap = max(snapshots, key=lambda s: s.n_couriers)
    req = snapshot_to_request(snap)
    assert len(req.couriers) > 20 or len(req.orders) > 6
    with DispatchClient(small_server.target) as client:
        while len(req.orders) < 7:
            o = req.orders.add()
            o.CopyFrom(req.orders[0])
            o.id = f"extra{len(req.orders)}"
        code, details = _code(client, req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert ("couriers" in details and "--max-couriers" in details) or (
            details.startswith("orders") and "limit of 6" in details and "--max-orders" in details
        ), details
        del req.couriers[20:]
        code, details = _code(client, req)
        assert details.startswith("orders: 7 entries exceed the limit of 6 (--max-orders)")
        req = snapshot_to_request(snapshots[0])
        del req.orders[6:]
        del req.couriers[20:]
        assert client.decide(req).actions
        # Tables count against the same limits.
        req = snapshot_to_request(snap, columnar=True)
        code, details = _code(client, req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "exceed the limit" in details, details


def test_oversized_message_is_refused(small_server: ThreadedServer, snapshots: list[Snapshot]):
    req = snapshot_to_request(snapshots[0])
    req.request_id = "x" * (80 * 1024)
    with DispatchClient(small_server.target) as client:
        code, details = _code(client, req)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        req.request_id = "small"
        del req.orders[6:]
        del req.couriers[20:]
        assert client.decide(req).request_id == "small"


def test_orders_crowding_one_restaurant_are_refused_at_once(server: ThreadedServer):
    # Within the count limits, yet 49,995,000 same-restaurant pairs: minutes of CPU and GBs once accepted.
    req = snapshot_to_request(one_restaurant(10_000, 10), deadline_hint_ms=1000, columnar=True)
    with DispatchClient(server.target, timeout=20.0) as client:
        code, details = _code(client, req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith("order_table.restaurant_id: "), details
        assert "49995000 same-restaurant order pairs exceed the limit of 200000 (--max-order-pairs" in details
        assert "'r0' alone has 10000 orders" in details
        assert client.decide(one_restaurant(20, 10)).actions  # and the server keeps serving


def test_order_pair_limit_boundary():
    limits = Limits(max_order_pairs=45)  # 10 orders at one restaurant make 45 pairs
    assert to_snapshot(snapshot_to_request(one_restaurant(10, 10)), limits).n_orders == 10
    with pytest.raises(ValidationError, match=r"^orders\.restaurant_id: .*46 .*limit of 45"):
        # 46 pairs: 10 orders at one restaurant and 2 at another.
        snap = one_restaurant(12, 10)
        req = snapshot_to_request(snap)
        extra = req.restaurants.add()
        extra.CopyFrom(req.restaurants[0])
        extra.id = "r1"
        for o in req.orders[10:]:
            o.restaurant_id = "r1"
        to_snapshot(req, limits)
    # Many orders over many restaurants make few pairs: the benchmark's shape is accepted as it is.
    bench = synthetic_snapshot(512, 2048)
    assert to_snapshot(snapshot_to_request(bench, columnar=True)).n_orders == 2048


def test_triples_are_bounded_for_a_model_that_bundles_three(tmp_path: Path):
    # 250 orders at one restaurant make 31,125 pairs (within the pair bound) but 2,573,000 triples: half a
    # minute of candidate generation for a model with max_bundle_size 3. The plan rule never enumerates them.
    three = write_linear_model(tmp_path / "three.onnx", name="three", candidates=CandidateConfig(max_bundle_size=3))
    cfg = ServerConfig(models=[("three", three)], port=0, metrics_port=None)
    req = snapshot_to_request(one_restaurant(250, 10), deadline_hint_ms=2000)
    with ThreadedServer(cfg) as srv, DispatchClient(srv.target, timeout=20.0) as client:
        code, details = _code(client, req)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith("orders.restaurant_id: "), details
        assert "2573000 same-restaurant order triples exceed the limit of 200000 (--max-order-pairs" in details
        assert "'r0' alone has 250 orders" in details
        assert client.decide(one_restaurant(30, 10)).actions  # 4,060 triples: served, bundles of three offered


@pytest.mark.parametrize(("size", "rule", "refused"), [(3, "greedy", True), (2, "greedy", False), (3, "plan", False)])
def test_triple_limit_boundary(size: int, rule: str, refused: bool):
    snap = one_restaurant(12, 10)  # 220 triples
    check_triples(snap, "orders", size, rule, 220)
    if refused:
        with pytest.raises(ValidationError, match=r"^orders\.restaurant_id: .*: 220 .* exceed the limit of 219"):
            check_triples(snap, "orders", size, rule, 219)
    else:
        check_triples(snap, "orders", size, rule, 0)
