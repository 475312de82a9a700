"""Request validation: a DecideRequest becomes a Snapshot, or a ValidationError naming the field."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter

import numpy as np

from dispatch.assemble import PLAN_RULE
from dispatch.kernels import plain_columns
from dispatch.snapshot import MAX_MINUTES, ServiceParams, Snapshot
from service.gen.dispatch.v1 import dispatch_pb2 as pb


class ValidationError(ValueError):
    """A request the server refuses (INVALID_ARGUMENT); the message starts with the field at fault."""


@dataclass(frozen=True)
class Limits:
    """Size limits of one request; each breach names the limit and its flag."""

    max_couriers: int = 2000
    max_orders: int = 10000
    max_restaurants: int = 10000
    # Candidate generation pairs every two orders of one restaurant whose ready times are close, and the
    # ``plan`` rule builds each restaurant's travel matrix among its orders: both grow with the square of
    # a restaurant's orders, so 10000 orders at one restaurant take minutes and GBs. The bound checked is
    # sum over restaurants of n_r * (n_r - 1) / 2, whatever the ready times (the plan's matrix ignores them).
    # Measured (OnnxPolicy(inspo-s0.onnx, threads=1).decide, one restaurant, all orders ready together,
    # best of 2, on a shared 2-core machine): 632 orders = 199,396 pairs take 0.66-0.87 s with 1 courier
    # (the worst case: the plan's routes grow with orders per courier) and 0.23 s with 10; 707 orders =
    # 249,571 pairs 0.84-1.13 s; 1000 orders = 499,500 pairs 1.73 s; 10000 orders over 10 restaurants =
    # 5.0 M pairs 16 s. bench/serve.py's synthetic_snapshot(512, 2048) has 4,066 pairs (0.11 s) and
    # synthetic_snapshot(2000, 10000) 19,852.
    max_order_pairs: int = 200_000
    # A model whose candidate rule bundles three orders (``max_bundle_size`` 3, any rule but ``plan``,
    # whose bundles are the plan's routes) also enumerates every same-restaurant triple: n(n-1)(n-2)/6,
    # a Python loop per triple. The same bound applies to them (checked per model, see check_triples).
    # Measured (dispatch.candidates.generate, k 16, one restaurant, all orders ready together, one core):
    # 107 orders = 198,485 triples take 2.7 s; 250 orders (31,125 pairs, within the pair bound) = 2.6 M
    # triples took 34 s before this bound.


@dataclass(frozen=True)
class _Field:
    """How errors name element ``i``'s attribute: ``orders[3].x`` (list form) or ``order_table.x[3]`` (table)."""

    name: str
    table: bool

    def at(self, i: int, attr: str) -> str:
        return f"{self.name}.{attr}[{i}]" if self.table else f"{self.name}[{i}].{attr}"

    def element(self, i: int) -> str:
        return f"{self.name}.id[{i}]" if self.table else f"{self.name}[{i}]"


def _read(
    msg: pb.DecideRequest, rows: str, table: str, texts: tuple[str, ...], numbers: tuple[str, ...]
) -> tuple[_Field, list[tuple[str, ...]], np.ndarray]:
    """One entity list, from its repeated messages or from its table: the text columns (``texts``, ids
    first) as tuples and the ``numbers`` as an (entities × len(numbers)) float64 matrix.

    Sending both forms is an error; a table's arrays must all have the length of its ``id`` array.
    """
    items = getattr(msg, rows)
    if not msg.HasField(table):
        # One pass over the repeated field reads every attribute once (attribute access dominates here).
        cols = list(zip(*map(attrgetter(*texts, *numbers), items), strict=True)) if items else []
        if not cols:
            return _Field(rows, False), [()] * len(texts), np.zeros((0, len(numbers)))
        num = np.array(cols[len(texts) :], dtype=np.float64).T.reshape(-1, len(numbers))
        return _Field(rows, False), cols[: len(texts)], num
    if len(items):
        raise ValidationError(f"{table}: send {rows} either as a list or as a table, not both")
    t = getattr(msg, table)
    cols = [getattr(t, a) for a in texts + numbers]  # each getattr builds a container wrapper: once
    n = len(cols[0])
    for a, col in zip(texts + numbers, cols, strict=True):
        if len(col) != n:
            raise ValidationError(f"{table}.{a}: {len(col)} values for {n} ids (one per id)")
    num = np.array(cols[len(texts) :], dtype=np.float64).T.reshape(-1, len(numbers))
    return _Field(table, True), [tuple(col) for col in cols[: len(texts)]], num


def _unique_ids(ids: Sequence[str], field: _Field) -> None:
    if "" not in ids and len(set(ids)) == len(ids):
        return  # the common case, in C; the loop below only finds the first offender to name it
    seen: dict[str, int] = {}
    for i, x in enumerate(ids):
        if not x:
            raise ValidationError(f"{field.at(i, 'id')}: empty id")
        j = seen.setdefault(x, i)
        if j != i:
            raise ValidationError(f"{field.at(i, 'id')}: duplicate id {x!r} (also {field.element(j)})")


def _check_columns(matrix: np.ndarray, field: _Field, names: tuple[str, ...], whole_from: int) -> None:
    """:func:`_check_numbers` on each column (columns from ``whole_from`` on are whole minutes)."""
    if plain_columns(matrix, whole_from, MAX_MINUTES):
        return  # the common case in one compiled pass; the per-column checks below name the offender
    for j, name in enumerate(names):
        _check_numbers(matrix[:, j], field, name, whole=j >= whole_from)


def _check_numbers(values: np.ndarray, field: _Field, name: str, *, whole: bool) -> None:
    """Finite, non-negative (and whole minutes where ``whole``); names the first offending element."""
    bad = ~np.isfinite(values) | (values < 0)
    if whole:
        bad |= np.isfinite(values) & ((values != np.floor(values)) | (values > MAX_MINUTES))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        v = float(values[i])
        why = (
            "must be finite"
            if not np.isfinite(v)
            else "must be >= 0"
            if v < 0
            else f"must be at most {MAX_MINUTES} minutes"
            if v > MAX_MINUTES
            else "must be whole minutes"
        )
        raise ValidationError(f"{field.at(i, name)}: {v!r} {why}")


def _check_pairs(o_rest: np.ndarray, rest_ids: Sequence[str], field: _Field, limit: int) -> None:
    """Refuse a request whose orders make more than ``limit`` same-restaurant pairs (see Limits), in O(n)."""
    if o_rest.size < 2:
        return
    counts = np.bincount(o_rest)
    pairs = int((counts * (counts - 1) // 2).sum())
    if pairs > limit:
        r = int(np.argmax(counts))
        raise ValidationError(
            f"{field.name}.restaurant_id: orders share restaurants too much: {pairs} same-restaurant order pairs "
            f"exceed the limit of {limit} (--max-order-pairs; restaurant {rest_ids[r]!r} alone has {counts[r]} "
            "orders)"
        )


def orders_field(msg: pb.DecideRequest) -> str:
    """How errors name the request's orders: ``order_table`` when sent as a table, else ``orders``."""
    return "order_table" if msg.HasField("order_table") else "orders"


def check_triples(snapshot: Snapshot, field: str, max_bundle_size: int, rule: str, limit: int) -> None:
    """Refuse, for a model that enumerates bundles of three, a snapshot with more than ``limit`` same-restaurant
    order triples (the sum over restaurants of n(n-1)(n-2)/6, whatever the ready times), in O(n).

    Models with bundles of at most two, and the ``plan`` rule (its bundles are the plan's routes, whose cost
    the pair bound already covers), are not concerned.
    """
    if max_bundle_size < 3 or rule == PLAN_RULE or snapshot.n_orders < 3:
        return
    counts = np.bincount(snapshot.order_restaurant)
    # Python integers: n(n-1)(n-2) leaves int64 past about two million orders at one restaurant.
    triples = sum(math.comb(int(n), 3) for n in counts[counts >= 3])
    if triples > limit:
        r = int(np.argmax(counts))
        raise ValidationError(
            f"{field}.restaurant_id: orders share restaurants too much for a model that bundles three orders: "
            f"{triples} same-restaurant order triples exceed the limit of {limit} (--max-order-pairs; restaurant "
            f"{snapshot.restaurant_ids[r]!r} alone has {counts[r]} orders)"
        )


# The request's name of each ServiceParams field (pay is not part of a request).
PARAM_FIELDS = {
    "meters_per_minute": "meters_per_minute",
    "pickup_service": "pickup_service_minutes",
    "dropoff_service": "dropoff_service_minutes",
    "target_ctd": "target_click_to_door_minutes",
    "max_ctd": "max_click_to_door_minutes",
}


def _params(msg: pb.DecideRequest) -> ServiceParams:
    d = ServiceParams()
    if not msg.HasField("params"):
        return d
    p = msg.params
    mpm = p.meters_per_minute if p.HasField("meters_per_minute") else d.meters_per_minute
    pick = p.pickup_service_minutes if p.HasField("pickup_service_minutes") else d.pickup_service
    drop = p.dropoff_service_minutes if p.HasField("dropoff_service_minutes") else d.dropoff_service
    target = p.target_click_to_door_minutes if p.HasField("target_click_to_door_minutes") else d.target_ctd
    limit = p.max_click_to_door_minutes if p.HasField("max_click_to_door_minutes") else d.max_ctd
    params = ServiceParams(float(mpm), int(pick), int(drop), int(target), int(limit))
    if broken := params.problem():
        name, rule = broken
        raise ValidationError(f"params.{PARAM_FIELDS[name]}: {getattr(params, name)!r} {rule}")
    return params


def to_snapshot(msg: pb.DecideRequest, limits: Limits = Limits()) -> Snapshot:
    """The Snapshot a request describes; ValidationError names the first field at fault."""
    for rows, table, limit, flag in (
        ("couriers", "courier_table", limits.max_couriers, "--max-couriers"),
        ("orders", "order_table", limits.max_orders, "--max-orders"),
        ("restaurants", "restaurant_table", limits.max_restaurants, "--max-restaurants"),
    ):
        n = len(getattr(msg, rows)) + len(getattr(msg, table).id)
        if n > limit:
            raise ValidationError(f"{rows}: {n} entries exceed the limit of {limit} ({flag})")
    t = msg.time
    if not np.isfinite(t) or t < 0 or t != np.floor(t) or t > MAX_MINUTES:
        raise ValidationError(f"time: {t!r} must be finite, >= 0, whole minutes and at most {MAX_MINUTES}")
    time = int(t)
    params = _params(msg)

    where, r_text, rest_xy = _read(msg, "restaurants", "restaurant_table", ("id",), ("x", "y"))
    rest_ids = r_text[0]
    _unique_ids(rest_ids, where)
    _check_columns(rest_xy, where, ("x", "y"), whole_from=2)

    c_attrs = ("x", "y", "free_at", "on_time", "off_time")
    where, c_text, c_num = _read(msg, "couriers", "courier_table", ("id",), c_attrs)
    cour_ids = c_text[0]
    _unique_ids(cour_ids, where)
    _check_columns(c_num, where, c_attrs, whole_from=2)
    bad = np.flatnonzero(c_num[:, 4] <= c_num[:, 3])
    if bad.size:
        i = int(bad[0])
        off, on = c_num[i, 4], c_num[i, 3]
        why = f"must be after on_time {on:g} (courier {cour_ids[i]!r})"
        raise ValidationError(f"{where.at(i, 'off_time')}: {off:g} {why}")

    o_attrs = ("x", "y", "placement_time", "ready_time")
    where, o_cols, o_num = _read(msg, "orders", "order_table", ("id", "restaurant_id"), o_attrs)
    order_ids = o_cols[0]
    _unique_ids(order_ids, where)
    _check_columns(o_num, where, o_attrs, whole_from=2)
    r_index = {r: i for i, r in enumerate(rest_ids)}
    found = list(map(r_index.get, o_cols[1], repeat(-1, len(o_cols[1]))))  # dict.get(id, -1) per order, in C
    o_rest = np.array(found, dtype=np.int64)
    if o_rest.size and o_rest.min() < 0:
        i = int(np.argmin(o_rest))
        raise ValidationError(f"{where.at(i, 'restaurant_id')}: unknown restaurant {o_cols[1][i]!r}")
    _check_pairs(o_rest, rest_ids, where, limits.max_order_pairs)
    late = np.flatnonzero(o_num[:, 2] > time)
    if late.size:
        i = int(late[0])
        raise ValidationError(f"{where.at(i, 'placement_time')}: {o_num[i, 2]:g} is after time {time} (not open yet)")
    early = np.flatnonzero(o_num[:, 3] < o_num[:, 2])
    if early.size:
        i = int(early[0])
        raise ValidationError(f"{where.at(i, 'ready_time')}: {o_num[i, 3]:g} is before placement_time {o_num[i, 2]:g}")
    # Travel minutes feed int64 route arithmetic (ceil(distance / speed), then sums and products of legs):
    # the longest leg possible between two points of the request must stay within MAX_MINUTES.
    extent = max(
        float(rest_xy.max(initial=0.0)), float(c_num[:, :2].max(initial=0.0)), float(o_num[:, :2].max(initial=0.0))
    )
    if math.hypot(extent, extent) / params.meters_per_minute > MAX_MINUTES:
        raise ValidationError(
            f"params.meters_per_minute: {params.meters_per_minute!r} with coordinates up to {extent:g} m makes a leg "
            f"longer than {MAX_MINUTES} minutes (use metres and metres per minute)"
        )

    return Snapshot(
        time=time,
        params=params,
        restaurant_ids=rest_ids,
        restaurant_xy=rest_xy,
        courier_ids=cour_ids,
        courier_xy=c_num[:, :2].copy(),
        courier_free_at=c_num[:, 2].astype(np.int64),
        courier_on_time=c_num[:, 3].astype(np.int64),
        courier_off_time=c_num[:, 4].astype(np.int64),
        order_ids=order_ids,
        order_restaurant=o_rest,
        order_xy=o_num[:, :2].copy(),
        order_placement=o_num[:, 2].astype(np.int64),
        order_ready=o_num[:, 3].astype(np.int64),
    )
