"""Independent checker of MDRP solution files: the eight feasibility rules and the metrics.

It reads an instance and the three solution files only (never simulator state), re-derives every
courier's timeline from the move file and the instance's coordinates, and reports each violation
with the file line it comes from. The rules (``shared/data/mdrp/README.md``):

1. every order is in at most one assignment;
2. no assignment before the placement of any of its orders;
3. every pickup at or before the courier's off-time (and not before its on-time);
4. every pickup at or after the ready time of every order in its bundle;
5. drop-offs follow the bundle's sequence, at least one drop-off service time apart;
6. courier moves are continuous: each origin is the previous destination (first origin ``0``);
7. moves are consistent in time: no departure before the courier has arrived and finished service;
8. the courier is at the restaurant at pickup and at the customer at each drop-off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dispatch.snapshot import travel_minutes
from simulator import metrics
from simulator.instance import Instance
from simulator.solution import ASSIGNMENTS, COURIERS, ORDERS, read


@dataclass
class CheckReport:
    """Violations found (empty when feasible) and the metrics recomputed from the files."""

    violations: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        """True when no rule is broken."""
        return not self.violations


def check_solution(inst: Instance, folder: str | Path) -> CheckReport:
    """Check the solution files in ``folder`` against ``inst``."""
    sol = read(folder)
    rep = CheckReport()
    bad = rep.violations.append
    p = inst.params
    oidx = {o: i for i, o in enumerate(inst.order_ids)}
    cidx = {c: i for i, c in enumerate(inst.courier_ids)}
    ridx = inst.restaurant_index()
    hp, hd = p.half_pickup, p.half_dropoff

    def xy(label: str, courier: int) -> np.ndarray | None:
        if label == "0":
            return inst.courier_xy[courier]
        if label in ridx:
            return inst.restaurant_xy[ridx[label]]
        if label in oidx:
            return inst.order_xy[oidx[label]]
        return None

    def travel(a: np.ndarray, b: np.ndarray) -> int:
        return int(travel_minutes(b[0] - a[0], b[1] - a[1], p.meters_per_minute))

    # Orders file: the delivery times the metrics use.
    pickup = np.full(inst.n_orders, -1, dtype=np.int64)
    dropoff = np.full(inst.n_orders, -1, dtype=np.int64)
    courier_of = np.full(inst.n_orders, -1, dtype=np.int64)
    for line, o, place, ready, pk, dr, c in sol.orders:
        where = f"{ORDERS}:{line}"
        if o not in oidx:
            bad(f"{where}: unknown order {o!r}")
            continue
        if c not in cidx:
            bad(f"{where}: unknown courier {c!r}")
            continue
        i = oidx[o]
        if dropoff[i] >= 0:
            bad(f"{where}: order {o} delivered twice (rule 1)")
        if place != inst.order_placement[i] or ready != inst.order_ready[i]:
            bad(f"{where}: order {o} placement/ready times differ from the instance")
        pickup[i], dropoff[i], courier_of[i] = pk, dr, cidx[c]

    # Assignments: rules 1-5, and the expected itinerary per courier.
    in_assignment: dict[str, int] = {}
    itinerary: dict[int, list[tuple[int, str, list[str], int]]] = {}
    bundle_courier, bundle_size = [], []
    for line, at, pk, c, orders in sol.assignments:
        where = f"{ASSIGNMENTS}:{line}"
        if c not in cidx:
            bad(f"{where}: unknown courier {c!r}")
            continue
        d = cidx[c]
        rests = set()
        ok = True
        for o in orders:
            if o not in oidx:
                bad(f"{where}: unknown order {o!r}")
                ok = False
                continue
            i = oidx[o]
            if o in in_assignment:
                bad(f"{where}: order {o} already assigned on line {in_assignment[o]} (rule 1)")
            in_assignment[o] = line
            rests.add(inst.restaurant_ids[inst.order_restaurant[i]])
            if at < inst.order_placement[i]:
                bad(f"{where}: assigned at {at}, before order {o} was placed at {inst.order_placement[i]} (rule 2)")
            if pk < inst.order_ready[i]:
                bad(f"{where}: pickup at {pk}, before order {o} is ready at {inst.order_ready[i]} (rule 4)")
            if courier_of[i] != d or pickup[i] != pk:
                bad(f"{where}: order {o}: courier/pickup disagree with {ORDERS}")
        if not ok:
            continue
        if len(rests) != 1:
            bad(f"{where}: bundle spans restaurants {sorted(rests)}")
            continue
        if pk > inst.courier_off[d] or pk < inst.courier_on[d]:
            bad(
                f"{where}: pickup at {pk} outside courier {c}'s shift "
                f"{inst.courier_on[d]}-{inst.courier_off[d]} (rule 3)"
            )
        drops = [int(dropoff[oidx[o]]) for o in orders]
        for k in range(1, len(drops)):
            if drops[k] - drops[k - 1] < p.dropoff_service:
                bad(
                    f"{where}: drop-offs of {orders[k - 1]} and {orders[k]} are less than "
                    f"{p.dropoff_service} min apart or out of sequence (rule 5)"
                )
        itinerary.setdefault(d, []).append((at, rests.pop(), list(orders), line))
        bundle_courier.append(d)
        bundle_size.append(len(orders))
    for o, i in oidx.items():
        if dropoff[i] >= 0 and o not in in_assignment:
            bad(f"{ORDERS}: order {o} delivered without an assignment")

    # Moves: rules 6-8, and the work minutes for utilisation.
    moves: dict[int, list[tuple[int, int, str, str]]] = {}
    for line, c, dep, origin, dest in sol.moves:
        if c not in cidx:
            bad(f"{COURIERS}:{line}: unknown courier {c!r}")
            continue
        moves.setdefault(cidx[c], []).append((line, dep, origin, dest))
    work = np.zeros(inst.n_couriers, dtype=np.int64)
    pickup_of_line = {a[0]: a[2] for a in sol.assignments}
    for d, plan in itinerary.items():
        plan.sort()
        expected: list[tuple[str, str | None, int]] = []
        for _, rest, bundle, aline in plan:
            expected.append((rest, None, aline))
            expected.extend((o, o, aline) for o in bundle)
        mv = moves.get(d, [])
        cid = inst.courier_ids[d]
        if len(mv) != len(expected):
            bad(f"{COURIERS}: courier {cid} has {len(mv)} moves, its assignments need {len(expected)} (rule 6)")
            continue
        here, free_at, label = inst.courier_xy[d], int(inst.courier_on[d]), "0"
        for (line, dep, origin, dest), (want, order, aline) in zip(mv, expected, strict=True):
            where = f"{COURIERS}:{line}"
            if origin != label:
                bad(f"{where}: courier {cid} departs from {origin}, but is at {label} (rule 6)")
            if dest != want:
                bad(
                    f"{where}: courier {cid} goes to {dest}, "
                    f"its assignment ({ASSIGNMENTS}:{aline}) needs {want} (rule 6)"
                )
                break
            if dep < free_at:
                bad(f"{where}: courier {cid} departs at {dep}, before it is free at {free_at} (rule 7)")
            target = xy(dest, d)
            assert target is not None
            leg = travel(here, target)
            arrive = dep + leg
            work[d] += leg
            if order is None:
                pk = pickup_of_line[aline]
                if arrive + hp > pk:
                    bad(f"{where}: courier {cid} reaches {dest} at {arrive}, too late for pickup at {pk} (rule 8)")
                free_at = pk + (p.pickup_service - hp)
                work[d] += p.pickup_service
            else:
                dr = int(dropoff[oidx[order]])
                if arrive + hd > dr:
                    bad(f"{where}: courier {cid} reaches {order} at {arrive}, too late for drop-off at {dr} (rule 8)")
                free_at = dr + (p.dropoff_service - hd)
                work[d] += p.dropoff_service
            here, label = target, dest
    for d in moves:
        if d not in itinerary:
            bad(f"{COURIERS}: courier {inst.courier_ids[d]} moves without any assignment (rule 6)")

    rep.metrics = metrics.compute(
        inst,
        metrics.Outcome(
            order_pickup=pickup,
            order_dropoff=dropoff,
            order_courier=courier_of,
            courier_work=work,
            bundle_courier=np.array(bundle_courier, dtype=np.int64),
            bundle_size=np.array(bundle_size, dtype=np.int64),
        ),
    )
    return rep
