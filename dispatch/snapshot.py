"""Domain types of one dispatch decision: the snapshot in, the joint action out."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]

# Largest minute value accepted anywhere (instance files, service requests): times fit in 32 bits.
MAX_MINUTES = 2**31 - 1
BoolArray = NDArray[np.bool_]


class InfeasibleActionError(ValueError):
    """A joint action breaks an MDRP rule; the message names the courier or order at fault."""


@dataclass(frozen=True, slots=True)
class ServiceParams:
    """The MDRP instance parameters that govern timing and pay."""

    meters_per_minute: float = 320.0
    pickup_service: int = 4
    dropoff_service: int = 4
    target_ctd: int = 40
    max_ctd: int = 90
    pay_per_order: float = 10.0
    guaranteed_pay_per_hour: float = 15.0

    def problem(self) -> tuple[str, str] | None:
        """The first field that breaks the rules every decision relies on, as (field, what it must be), or None.

        One rule set for the service's requests and the logged days (what the service would refuse to decide
        is no day to learn from or replay); each caller names the field in its own terms.
        """
        if not (np.isfinite(self.meters_per_minute) and self.meters_per_minute > 0):
            return "meters_per_minute", "must be finite and > 0"
        for name in ("pickup_service", "dropoff_service"):
            if getattr(self, name) < 0:
                return name, "must be >= 0"
        if self.target_ctd <= 0:
            return "target_ctd", "must be > 0"
        if self.max_ctd < self.target_ctd:
            return "max_ctd", f"must be >= target ({self.target_ctd})"
        if self.pay_per_order < 0 or self.guaranteed_pay_per_hour < 0:
            return ("pay_per_order" if self.pay_per_order < 0 else "guaranteed_pay_per_hour"), "must be >= 0"
        return None

    @property
    def half_pickup(self) -> int:
        """Minutes of pickup service before (and after) the pickup instant."""
        # MDRP splits service symmetrically around the pickup/drop-off instant; the public
        # instances all use even service times, so halves are whole minutes.
        return self.pickup_service // 2

    @property
    def half_dropoff(self) -> int:
        """Minutes of drop-off service before (and after) the drop-off instant."""
        return self.dropoff_service // 2


def travel_minutes(dx: FloatArray | float, dy: FloatArray | float, meters_per_minute: float) -> IntArray:
    """MDRP travel time: ceil(euclidean distance / meters_per_minute), in whole minutes."""
    return np.ceil(np.hypot(dx, dy) / meters_per_minute).astype(np.int64)


def travel_matrix(a_xy: FloatArray, b_xy: FloatArray, meters_per_minute: float) -> IntArray:
    """Travel minutes from every point of ``a_xy`` (n,2) to every point of ``b_xy`` (m,2)."""
    dx = a_xy[:, None, 0] - b_xy[None, :, 0]
    dy = a_xy[:, None, 1] - b_xy[None, :, 1]
    return travel_minutes(dx, dy, meters_per_minute)


@dataclass(frozen=True)
class Snapshot:
    """Everything a policy may see at one decision epoch (struct-of-arrays, indices not ids).

    Couriers appear with the place and minute at which they are (or will be) free: a busy courier
    is shown where its current assignment ends. Orders are the open ones: placed, not assigned.
    """

    time: int
    params: ServiceParams
    restaurant_ids: tuple[str, ...]
    restaurant_xy: FloatArray
    courier_ids: tuple[str, ...]
    courier_xy: FloatArray
    courier_free_at: IntArray
    courier_on_time: IntArray
    courier_off_time: IntArray
    order_ids: tuple[str, ...]
    order_restaurant: IntArray
    order_xy: FloatArray
    order_placement: IntArray
    order_ready: IntArray
    _order_index: dict[str, int] | None = field(default=None, repr=False, compare=False)

    @property
    def n_couriers(self) -> int:
        """Number of couriers in the snapshot."""
        return len(self.courier_ids)

    @property
    def n_orders(self) -> int:
        """Number of open orders in the snapshot."""
        return len(self.order_ids)

    def available(self, within: int = 0) -> BoolArray:
        """Couriers that can take an assignment now (on duty, idle, before their off-time), or, with
        ``within`` > 0, that will be on duty and idle within that many minutes."""
        t = self.time
        soon = t + within
        return (self.courier_on_time <= soon) & (self.courier_free_at <= soon) & (self.courier_off_time > t)

    def order_index(self, order_id: str) -> int:
        """Index of an open order by id; KeyError names the id when it is not open."""
        index = self._order_index
        if index is None:
            index = {o: i for i, o in enumerate(self.order_ids)}
            object.__setattr__(self, "_order_index", index)
        try:
            return index[order_id]
        except KeyError:
            raise KeyError(f"order {order_id!r} is not an open order at t={self.time}") from None


@dataclass(frozen=True, slots=True)
class Assignment:
    """One courier's part of a joint action: a bundle of orders in drop-off sequence."""

    courier: int
    orders: tuple[int, ...]


@dataclass(frozen=True)
class JointAction:
    """A conflict-free set of assignments; couriers not listed wait."""

    assignments: tuple[Assignment, ...] = ()

    def check(self, snapshot: Snapshot) -> None:
        """Raise InfeasibleActionError naming the courier or order when a rule is broken."""
        available = snapshot.available()
        seen_couriers: set[int] = set()
        seen_orders: dict[int, int] = {}
        for a in self.assignments:
            if not 0 <= a.courier < snapshot.n_couriers:
                raise InfeasibleActionError(f"unknown courier index {a.courier}")
            cid = snapshot.courier_ids[a.courier]
            if a.courier in seen_couriers:
                raise InfeasibleActionError(f"courier {cid} is given two assignments")
            seen_couriers.add(a.courier)
            if not available[a.courier]:
                raise InfeasibleActionError(
                    f"courier {cid} is not available at t={snapshot.time} "
                    f"(free at {snapshot.courier_free_at[a.courier]}, "
                    f"shift {snapshot.courier_on_time[a.courier]}-{snapshot.courier_off_time[a.courier]})"
                )
            if not a.orders:
                raise InfeasibleActionError(f"courier {cid} is given an empty bundle")
            restaurants = set()
            for o in a.orders:
                if not 0 <= o < snapshot.n_orders:
                    raise InfeasibleActionError(f"courier {cid} is given unknown order index {o}")
                oid = snapshot.order_ids[o]
                if o in seen_orders:
                    other = snapshot.courier_ids[seen_orders[o]]
                    raise InfeasibleActionError(f"order {oid} is given to two couriers ({other} and {cid})")
                seen_orders[o] = a.courier
                restaurants.add(int(snapshot.order_restaurant[o]))
            if len(restaurants) > 1:
                raise InfeasibleActionError(f"courier {cid} is given a bundle from several restaurants")

    def to_ids(self, snapshot: Snapshot) -> dict[str, tuple[str, ...]]:
        """The joint action as {courier id: (order ids in drop-off sequence)}."""
        return {
            snapshot.courier_ids[a.courier]: tuple(snapshot.order_ids[o] for o in a.orders) for a in self.assignments
        }

    @staticmethod
    def from_ids(snapshot: Snapshot, mapping: dict[str, list[str] | tuple[str, ...]]) -> JointAction:
        """Build a joint action from ids; unknown ids raise InfeasibleActionError naming them."""
        cidx = {c: i for i, c in enumerate(snapshot.courier_ids)}
        out = []
        for cid, oids in mapping.items():
            if cid not in cidx:
                raise InfeasibleActionError(f"unknown courier {cid!r}")
            try:
                orders = tuple(snapshot.order_index(o) for o in oids)
            except KeyError as exc:
                raise InfeasibleActionError(f"courier {cid}: {exc.args[0]}") from None
            out.append(Assignment(cidx[cid], orders))
        return JointAction(tuple(out))
