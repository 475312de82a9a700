"""MDRP metrics with their exact definitions (``shared/data/mdrp/README.md``).

Per order: click-to-door (CtD) = drop-off − placement; ready-to-door = drop-off − ready;
ready-to-pickup = pickup − ready; overage = max(0, CtD − target). An order counts as delivered when it
was dropped off within the maximum click-to-door; the distributions cover delivered orders only.
Per courier (every shift of the instance): orders and bundles per courier-hour, utilisation =
(driving + pickup service + drop-off service minutes) / shift minutes, order earnings = pay per order
× delivered orders, pay = max(order earnings, guaranteed pay per hour × shift hours). Each
distribution is summarised by mean, population std, min, p10, median, p90 and max.
On-time rate = delivered orders with CtD ≤ target / all orders.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dispatch.snapshot import IntArray
from simulator.instance import Instance

STATS = ("mean", "std", "min", "p10", "median", "p90", "max")
DISTRIBUTIONS = (
    "ctd",
    "ready_to_door",
    "ready_to_pickup",
    "overage",
    "orders_per_hour",
    "bundles_per_hour",
    "utilisation",
    "order_earnings",
    "pay",
    "bundle_size",
)
HEADLINE = ("orders", "delivered", "undelivered_pct", "on_time_pct", "total_pay", "cost_per_order", "guaranteed_share")


def summarise(values: np.ndarray) -> dict[str, float]:
    """Mean, population std, min, p10, median, p90, max (NaN for an empty sample)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return dict.fromkeys(STATS, float("nan"))
    p10, med, p90 = np.percentile(v, [10, 50, 90])
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "p10": float(p10),
        "median": float(med),
        "p90": float(p90),
        "max": float(v.max()),
    }


@dataclass(frozen=True)
class Outcome:
    """The raw facts metrics are computed from, as indices into the instance.

    ``order_pickup``/``order_dropoff``/``order_courier`` are -1 for orders never carried;
    ``courier_work`` is driving + service minutes per courier; ``bundle_courier`` and
    ``bundle_size`` list every executed bundle.
    """

    order_pickup: IntArray
    order_dropoff: IntArray
    order_courier: IntArray
    courier_work: IntArray
    bundle_courier: IntArray
    bundle_size: IntArray


def compute(instance: Instance, out: Outcome) -> dict[str, float]:
    """All MDRP metrics of one day as a flat ``{name: value}`` mapping (``ctd_mean``, ...)."""
    p = instance.params
    carried = out.order_dropoff >= 0
    ctd_all = np.where(carried, out.order_dropoff - instance.order_placement, 0)
    delivered = carried & (ctd_all <= p.max_ctd)
    n = instance.n_orders
    ctd = ctd_all[delivered]
    m: dict[str, float] = {
        "orders": float(n),
        "delivered": float(delivered.sum()),
        "undelivered_pct": 100.0 * (1 - delivered.sum() / n) if n else 0.0,
        "on_time_pct": 100.0 * float((ctd <= p.target_ctd).sum()) / n if n else 0.0,
    }
    hours = (instance.courier_off - instance.courier_on) / 60.0
    per_courier_orders = np.bincount(out.order_courier[delivered], minlength=instance.n_couriers)
    per_courier_bundles = np.bincount(out.bundle_courier, minlength=instance.n_couriers)
    earnings = p.pay_per_order * per_courier_orders
    guaranteed = p.guaranteed_pay_per_hour * hours
    pay = np.maximum(earnings, guaranteed)
    m["total_pay"] = float(pay.sum())
    m["cost_per_order"] = float(pay.sum() / delivered.sum()) if delivered.any() else float("nan")
    m["guaranteed_share"] = float((guaranteed > earnings).mean()) if instance.n_couriers else float("nan")
    dists = {
        "ctd": ctd,
        "ready_to_door": (out.order_dropoff - instance.order_ready)[delivered],
        "ready_to_pickup": (out.order_pickup - instance.order_ready)[delivered],
        "overage": np.maximum(0, ctd - p.target_ctd),
        "orders_per_hour": per_courier_orders / hours,
        "bundles_per_hour": per_courier_bundles / hours,
        "utilisation": out.courier_work / (hours * 60.0),
        "order_earnings": earnings,
        "pay": pay,
        "bundle_size": out.bundle_size,
    }
    for name, values in dists.items():
        for stat, v in summarise(values).items():
            m[f"{name}_{stat}"] = v
    return m


def floor_ctd(instance: Instance) -> np.ndarray:
    """Per-order click-to-door floor: preparation + direct travel restaurant→customer + service halves.

    No dispatcher can deliver an order sooner (a courier waiting at the restaurant at ready time);
    an order whose floor exceeds the maximum click-to-door cannot be delivered at all.
    """
    p = instance.params
    rxy = instance.restaurant_xy[instance.order_restaurant]
    d = instance.order_xy - rxy
    travel = np.ceil(np.hypot(d[:, 0], d[:, 1]) / p.meters_per_minute).astype(np.int64)
    return (
        (instance.order_ready - instance.order_placement) + (p.pickup_service - p.half_pickup) + travel + p.half_dropoff
    )
