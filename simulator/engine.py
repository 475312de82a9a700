"""The MDRP event engine: decision epochs every ``dispatch_interval`` minutes, exact MDRP timing.

Rules enforced here (``shared/data/mdrp/README.md``): integer minutes; travel is
``ceil(distance / meters_per_minute)``; pickup at ``max(latest ready, arrival + pickup/2)``; drop-off
``dropoff/2`` after arrival; bundles come from one restaurant and are dropped off in the given
sequence; a courier takes work only while on duty, idle and able to pick up by its off-time; an
assignment is never diverted; an idle courier waits where its last assignment ended. An order not
assigned by ``placement + max_ctd`` expires undelivered; one delivered later than that counts as
undelivered in the metrics. Timing itself comes from :mod:`dispatch.routes`, the same code the
policies use to evaluate candidates, so what a policy predicts is what happens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dispatch.routes import route_times, sequence_bundles
from dispatch.snapshot import InfeasibleActionError, IntArray, JointAction, Snapshot
from simulator.epochs import DEFAULT_INTERVAL
from simulator.instance import Instance


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Engine settings."""

    dispatch_interval: int = DEFAULT_INTERVAL
    # Couriers starting within this many minutes are shown (not yet available) so planners see them.
    courier_lookahead: int = 10


REWARD_TIMINGS = ("assignment", "accrued", "placement")
# Engine-side components of the accrued and placement timings (not logged: the logged reward already
# includes them).
UNLOGGED_COMPONENTS = (
    "waited_minutes",
    "waited_overage_minutes",
    "assigned_waited_minutes",
    "assigned_waited_overage_minutes",
    "placed",
)


@dataclass(frozen=True, slots=True)
class RewardConfig:
    """Weights of the shared reward and when its click-to-door cost is paid.

    ``timing = "assignment"``: outcomes are deterministic once assigned, so each order's whole reward
    is paid at its assignment epoch. ``timing = "accrued"``: the click-to-door and overage costs are
    paid as the minutes pass, every epoch for every open order, and the rest of its route at
    assignment. Undiscounted totals of delivered orders are the same; what changes is that waiting
    costs now. Paid at assignment, a discount factor makes abandoning a late order look cheap: its
    −3 expiry lies up to 45 epochs away (×0.1 at γ = 0.95), while serving it costs its late
    click-to-door at once. Accrued, an order that is never served has paid 90 minutes of
    click-to-door before its expiry charge, so serving is always the better move; one delivered after
    the maximum is charged exactly like one that expired.
    Under both, an order that expires unassigned is charged ``undelivered`` at the epoch it expires.
    ``timing = "placement"``: as ``assignment``, except that ``undelivered`` is charged for every order
    at the first epoch that shows it and refunded when it is served within the maximum click-to-door,
    so serving an order earns its refund at once instead of avoiding a charge up to 45 epochs ahead.
    Undiscounted totals are again the same; it is the discounted credit that moves.
    """

    on_time: float = 1.0
    ctd_per_minute: float = -0.02
    overage_per_minute: float = -0.05
    undelivered: float = -3.0
    timing: str = "assignment"

    def __post_init__(self) -> None:
        if self.timing not in REWARD_TIMINGS:
            raise ValueError(f"reward timing {self.timing!r} is not one of {REWARD_TIMINGS}")

    def reward(self, c: dict[str, float]) -> float:
        """The scalar reward of one step's components."""
        ctd, overage = c["ctd_minutes"], c["overage_minutes"]
        if self.timing == "accrued":
            ctd += c["waited_minutes"] - c["assigned_waited_minutes"]
            overage += c["waited_overage_minutes"] - c["assigned_waited_overage_minutes"]
        if self.timing == "placement":
            lost = c["placed"] - (c["assigned"] - c["late_undelivered"])
        else:
            lost = c["expired"] + c["late_undelivered"]
        return (
            self.on_time * c["on_time"]
            + self.ctd_per_minute * ctd
            + self.overage_per_minute * overage
            + self.undelivered * lost
        )


MAX_REWARD_WEIGHT = 1e6


def reward_config(overrides: list[str]) -> RewardConfig:
    """A RewardConfig from ``KEY=VALUE`` overrides of its defaults; ValueError names a bad key or value."""
    known = {f: type(getattr(RewardConfig(), f)) for f in RewardConfig.__slots__}
    values: dict[str, float | str] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise ValueError(f"{item!r}: expected KEY=VALUE with KEY one of {', '.join(known)}")
        if known[key] is str:
            values[key] = raw.strip()
            continue
        try:
            number = float(raw)
        except ValueError:
            raise ValueError(f"{key}: {raw!r} is not a number") from None
        if not np.isfinite(number):
            raise ValueError(f"{key}: {raw!r} is not a finite number")
        if abs(number) > MAX_REWARD_WEIGHT:
            # A day sums thousands of these: a larger weight can overflow the logged returns to infinity.
            raise ValueError(f"{key}: {raw!r} is beyond ±{MAX_REWARD_WEIGHT:g}")
        values[key] = number
    return RewardConfig(**values)  # type: ignore[arg-type]


@dataclass
class Move:
    """One courier movement in execution order."""

    courier: int
    departure: int
    origin: str
    destination: str
    arrival: int


@dataclass
class AssignmentRecord:
    """One executed bundle: when it was assigned and picked up, by whom, in which drop-off order."""

    time: int
    pickup: int
    courier: int
    orders: tuple[int, ...]


@dataclass
class StepOutcome:
    """What one decision epoch produced."""

    reward: float
    components: dict[str, float]
    done: bool


@dataclass
class EpisodeRecords:
    """Everything the engine executed: enough to write MDRP solution files and compute metrics."""

    instance: Instance
    assignments: list[AssignmentRecord] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    order_courier: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    order_assigned: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    order_pickup: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    order_dropoff: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    courier_work: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


class Engine:
    """Runs one MDRP day. Call :meth:`snapshot`, then :meth:`step` with a joint action, until done."""

    def __init__(self, instance: Instance, config: SimConfig | None = None, reward: RewardConfig | None = None):
        self.instance = instance
        self.config = config or SimConfig()
        self.reward_config = reward or RewardConfig()
        if self.config.dispatch_interval < 1:
            raise ValueError("dispatch_interval must be at least 1 minute")
        n_o, n_c = instance.n_orders, instance.n_couriers
        self.records = EpisodeRecords(
            instance=instance,
            order_courier=np.full(n_o, -1, dtype=np.int64),
            order_assigned=np.full(n_o, -1, dtype=np.int64),
            order_pickup=np.full(n_o, -1, dtype=np.int64),
            order_dropoff=np.full(n_o, -1, dtype=np.int64),
            courier_work=np.zeros(n_c, dtype=np.int64),
        )
        self.courier_xy = instance.courier_xy.copy()
        self.courier_free_at = instance.courier_on.copy()
        self.courier_label = ["0"] * n_c
        self.expired = np.zeros(n_o, dtype=bool)
        self.shown = np.zeros(n_o, dtype=bool)  # orders some snapshot has shown (the placement timing)
        start = int(instance.order_placement.min()) if n_o else 0
        self.time = start
        self.end = int(instance.order_placement.max()) + instance.params.max_ctd if n_o else 0
        self._snap: Snapshot | None = None
        self._snap_couriers: IntArray = np.zeros(0, dtype=np.int64)
        self._snap_orders: IntArray = np.zeros(0, dtype=np.int64)

    @property
    def done(self) -> bool:
        """True once no order can be assigned any more."""
        if self.time > self.end:
            return True
        open_or_future = (self.records.order_courier < 0) & ~self.expired
        return not bool(open_or_future.any())

    def snapshot(self) -> Snapshot:
        """The state at the current epoch as a policy sees it."""
        inst, t = self.instance, self.time
        cmask = (inst.courier_on <= t + self.config.courier_lookahead) & (inst.courier_off > t)
        omask = (inst.order_placement <= t) & (self.records.order_courier < 0) & ~self.expired
        cidx = np.flatnonzero(cmask)
        oidx = np.flatnonzero(omask)
        self._snap_couriers, self._snap_orders = cidx, oidx
        self._snap = Snapshot(
            time=t,
            params=inst.params,
            restaurant_ids=inst.restaurant_ids,
            restaurant_xy=inst.restaurant_xy,
            courier_ids=tuple(inst.courier_ids[i] for i in cidx),
            courier_xy=self.courier_xy[cidx],
            courier_free_at=self.courier_free_at[cidx],
            courier_on_time=inst.courier_on[cidx],
            courier_off_time=inst.courier_off[cidx],
            order_ids=tuple(inst.order_ids[i] for i in oidx),
            order_restaurant=inst.order_restaurant[oidx],
            order_xy=inst.order_xy[oidx],
            order_placement=inst.order_placement[oidx],
            order_ready=inst.order_ready[oidx],
        )
        return self._snap

    def step(self, action: JointAction) -> StepOutcome:
        """Apply a joint action for the current snapshot, then advance one epoch.

        Raises InfeasibleActionError (naming the courier or order) and changes nothing if any
        assignment breaks a rule.
        """
        snap = self._snap if self._snap is not None else self.snapshot()
        action.check(snap)
        p = self.instance.params
        comp = dict.fromkeys(
            (
                "assigned",
                "on_time",
                "ctd_minutes",
                "overage_minutes",
                "expired",
                "late_undelivered",
                *UNLOGGED_COMPONENTS,
            ),
            0.0,
        )
        first = (self.instance.order_placement <= snap.time) & ~self.shown
        comp["placed"] = float(first.sum())
        plans = []
        for a in action.assignments:
            bundle = sequence_bundles(snap, [a.orders])
            times = route_times(snap, np.array([a.courier]), bundle)
            cid = snap.courier_ids[a.courier]
            if times.pickup[0, 0] > snap.courier_off_time[a.courier]:
                raise InfeasibleActionError(
                    f"courier {cid}: pickup at {int(times.pickup[0, 0])} would fall after its off-time "
                    f"{int(snap.courier_off_time[a.courier])}"
                )
            plans.append((a, bundle, times))
        for a, bundle, times in plans:
            self._execute(snap, a.courier, a.orders, bundle, times, comp)
        self.time += self.config.dispatch_interval
        newly = (
            (self.records.order_courier < 0) & ~self.expired & (self.instance.order_placement + p.max_ctd < self.time)
        )
        comp["expired"] = float(newly.sum())
        self._accrue(snap.time, comp)
        self.expired |= newly
        self.shown |= first
        self._snap = None
        return StepOutcome(self.reward_config.reward(comp), comp, self.done)

    def _accrue(self, start: int, comp: dict[str, float]) -> None:
        """Minutes (and minutes past the target) that the orders still open waited from ``start`` to now.

        Counted from placement for orders placed within the step and up to expiry for orders that
        expire in it, so an order delivered in time is charged exactly its click-to-door in total.
        """
        p = self.instance.params
        placed = self.instance.order_placement
        open_ = (self.records.order_courier < 0) & ~self.expired & (placed < self.time)
        if not open_.any():
            return
        pl = placed[open_]
        lo = np.maximum(pl, start)
        hi = np.minimum(pl + p.max_ctd, self.time)
        comp["waited_minutes"] += float(np.maximum(hi - lo, 0).sum())
        due = pl + p.target_ctd
        comp["waited_overage_minutes"] += float((np.maximum(hi - due, 0) - np.maximum(lo - due, 0)).sum())

    def _execute(self, snap: Snapshot, c: int, orders: tuple[int, ...], bundle, times, comp: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
        p = self.instance.params
        ci = int(self._snap_couriers[c])
        inst_orders = [int(self._snap_orders[o]) for o in orders]
        t = snap.time
        pickup = int(times.pickup[0, 0])
        arrive_r = t + int(times.travel_to_restaurant[0, 0])
        rest_id = self.instance.restaurant_ids[int(bundle.restaurant[0])]
        moves = [Move(ci, t, self.courier_label[ci], rest_id, arrive_r)]
        driving = arrive_r - t
        leave = pickup + (p.pickup_service - p.half_pickup)
        for j, oi in enumerate(inst_orders):
            drop = pickup + int(bundle.dropoff_offset[0, j])
            arrive = drop - p.half_dropoff
            origin = moves[-1].destination
            moves.append(Move(ci, leave, origin, self.instance.order_ids[oi], arrive))
            driving += arrive - leave
            leave = drop + (p.dropoff_service - p.half_dropoff)
            ctd = drop - int(self.instance.order_placement[oi])
            self.records.order_courier[oi] = ci
            self.records.order_assigned[oi] = t
            self.records.order_pickup[oi] = pickup
            self.records.order_dropoff[oi] = drop
            comp["assigned"] += 1
            if ctd <= p.max_ctd:
                comp["ctd_minutes"] += ctd
                comp["overage_minutes"] += max(0, ctd - p.target_ctd)
                comp["on_time"] += float(ctd <= p.target_ctd)
                # What the accrued timing already charged this order while it waited (since placement).
                waited = t - int(self.instance.order_placement[oi])
                comp["assigned_waited_minutes"] += waited
                comp["assigned_waited_overage_minutes"] += max(0, waited - p.target_ctd)
            else:
                comp["late_undelivered"] += 1
                # Accrued timing: charged up to the maximum like an order that expires, so a hopeless
                # assignment is never cheaper than letting the order go.
                waited = t - int(self.instance.order_placement[oi])
                comp["waited_minutes"] += p.max_ctd - waited
                comp["waited_overage_minutes"] += max(0, p.max_ctd - p.target_ctd) - max(0, waited - p.target_ctd)
        self.records.moves.extend(moves)
        self.records.assignments.append(AssignmentRecord(t, pickup, ci, tuple(inst_orders)))
        self.records.courier_work[ci] += driving + p.pickup_service + p.dropoff_service * len(inst_orders)
        self.courier_free_at[ci] = leave
        self.courier_xy[ci] = self.instance.order_xy[inst_orders[-1]]
        self.courier_label[ci] = self.instance.order_ids[inst_orders[-1]]
