"""Request validation: a DecideRequest becomes a Snapshot, or a ValidationError naming the field."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[tuple[Any, ...]]:
    """Rows of message fields as per-field tuples (``width`` empty tuples when there are no rows)."""
    return list(zip(*rows, strict=True)) if rows else [()] * width


def _unique_ids(ids: Sequence[str], field: str) -> None:
    if "" not in ids and len(set(ids)) == len(ids):
        return  # the common case, in C; the loop below only finds the first offender to name it
    seen: dict[str, int] = {}
    for i, x in enumerate(ids):
        if not x:
            raise ValidationError(f"{field}[{i}].id: empty id")
        j = seen.setdefault(x, i)
        if j != i:
            raise ValidationError(f"{field}[{i}].id: duplicate id {x!r} (also {field}[{j}])")


def _check_columns(matrix: np.ndarray, field: str, names: tuple[str, ...], whole_from: int) -> None:
    """:func:`_check_numbers` on each column (columns from ``whole_from`` on are whole minutes)."""
    frac = matrix[:, whole_from:]
    ok = np.isfinite(matrix).all() and (matrix >= 0).all()
    if ok and (frac == np.floor(frac)).all() and (frac <= MAX_MINUTES).all():
        return  # the common case in three passes; the per-column checks below name the offender
    for j, name in enumerate(names):
        _check_numbers(matrix[:, j], field, name, whole=j >= whole_from)


def _check_numbers(values: np.ndarray, field: str, name: str, *, whole: bool) -> None:
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
        raise ValidationError(f"{field}[{i}].{name}: {v!r} {why}")


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
    if not (np.isfinite(mpm) and mpm > 0):
        raise ValidationError(f"params.meters_per_minute: {mpm!r} must be finite and > 0")
    if pick < 0:
        raise ValidationError(f"params.pickup_service_minutes: {pick} must be >= 0")
    if drop < 0:
        raise ValidationError(f"params.dropoff_service_minutes: {drop} must be >= 0")
    if target <= 0:
        raise ValidationError(f"params.target_click_to_door_minutes: {target} must be > 0")
    if limit < target:
        raise ValidationError(f"params.max_click_to_door_minutes: {limit} must be >= target ({target})")
    return ServiceParams(float(mpm), int(pick), int(drop), int(target), int(limit))


def to_snapshot(msg: pb.DecideRequest, limits: Limits = Limits()) -> Snapshot:
    """The Snapshot a request describes; ValidationError names the first field at fault."""
    for field, n, limit, flag in (
        ("couriers", len(msg.couriers), limits.max_couriers, "--max-couriers"),
        ("orders", len(msg.orders), limits.max_orders, "--max-orders"),
        ("restaurants", len(msg.restaurants), limits.max_restaurants, "--max-restaurants"),
    ):
        if n > limit:
            raise ValidationError(f"{field}: {n} entries exceed the limit of {limit} ({flag})")
    t = msg.time
    if not np.isfinite(t) or t < 0 or t != np.floor(t) or t > MAX_MINUTES:
        raise ValidationError(f"time: {t!r} must be finite, >= 0, whole minutes and at most {MAX_MINUTES}")
    time = int(t)
    params = _params(msg)

    rest = msg.restaurants
    rest_ids = tuple(r.id for r in rest)
    _unique_ids(rest_ids, "restaurants")
    rest_xy = np.array([(r.x, r.y) for r in rest], dtype=np.float64).reshape(-1, 2)
    _check_columns(rest_xy, "restaurants", ("x", "y"), whole_from=2)

    # One pass over each repeated field reads every attribute once (attribute access dominates here).
    c_cols = _columns([(c.id, c.x, c.y, c.free_at, c.on_time, c.off_time) for c in msg.couriers], 6)
    cour_ids: tuple[str, ...] = c_cols[0]
    _unique_ids(cour_ids, "couriers")
    c_num = np.array(c_cols[1:], dtype=np.float64).T.reshape(-1, 5)
    _check_columns(c_num, "couriers", ("x", "y", "free_at", "on_time", "off_time"), whole_from=2)
    bad = np.flatnonzero(c_num[:, 4] <= c_num[:, 3])
    if bad.size:
        i = int(bad[0])
        raise ValidationError(
            f"couriers[{i}].off_time: {c_num[i, 4]:g} must be after on_time {c_num[i, 3]:g} (courier {cour_ids[i]!r})"
        )

    o_cols = _columns([(o.id, o.restaurant_id, o.x, o.y, o.placement_time, o.ready_time) for o in msg.orders], 6)
    order_ids: tuple[str, ...] = o_cols[0]
    _unique_ids(order_ids, "orders")
    o_num = np.array(o_cols[2:], dtype=np.float64).T.reshape(-1, 4)
    _check_columns(o_num, "orders", ("x", "y", "placement_time", "ready_time"), whole_from=2)
    r_index = {r: i for i, r in enumerate(rest_ids)}
    found = [r_index.get(r, -1) for r in o_cols[1]]
    o_rest = np.array(found, dtype=np.int64)
    if o_rest.size and o_rest.min() < 0:
        i = int(np.argmin(o_rest))
        raise ValidationError(f"orders[{i}].restaurant_id: unknown restaurant {o_cols[1][i]!r}")
    late = np.flatnonzero(o_num[:, 2] > time)
    if late.size:
        i = int(late[0])
        raise ValidationError(f"orders[{i}].placement_time: {o_num[i, 2]:g} is after time {time} (not open yet)")
    early = np.flatnonzero(o_num[:, 3] < o_num[:, 2])
    if early.size:
        i = int(early[0])
        raise ValidationError(f"orders[{i}].ready_time: {o_num[i, 3]:g} is before placement_time {o_num[i, 2]:g}")

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
