"""Metric definitions on hand-built outcomes (simulator.metrics), every value computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulator import metrics
from tests.helpers import make_instance


def arr(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def six_orders():  # type: ignore[no-untyped-def]
    # Target 40, max 90, $10/order, $15/h. Coordinates do not matter for metrics.
    # order: placement, ready
    return make_instance(
        restaurants=[("R1", 0, 0)],
        orders=[
            ("o1", 0, 0, 0, "R1", 10),
            ("o2", 0, 0, 0, "R1", 5),
            ("o3", 0, 0, 10, "R1", 20),
            ("o4", 0, 0, 0, "R1", 30),
            ("o5", 0, 0, 0, "R1", 0),
            ("o6", 0, 0, 0, "R1", 0),
        ],
        # c1: 90 min (1.5 h); c2: 60 min; c3: 60 min.
        couriers=[("c1", 0, 0, 0, 90), ("c2", 0, 0, 60, 120), ("c3", 0, 0, 0, 60)],
    )


def six_outcome() -> metrics.Outcome:
    # o1: pickup 12, drop 30  -> ctd 30, rtd 20, rtp 2,  overage 0   (c1)
    # o2: pickup 20, drop 50  -> ctd 50, rtd 45, rtp 15, overage 10  (c1, bundle with o3)
    # o3: pickup 20, drop 60  -> ctd 50, rtd 40, rtp 0,  overage 10  (c1)
    # o4: pickup 60, drop 100 -> ctd 100 > 90: carried but undelivered (c2)
    # o5: never carried
    # o6: pickup 40, drop 80  -> ctd 80, rtd 80, rtp 40, overage 40  (c3)
    return metrics.Outcome(
        order_pickup=arr(12, 20, 20, 60, -1, 40),
        order_dropoff=arr(30, 50, 60, 100, -1, 80),
        order_courier=arr(0, 0, 0, 1, -1, 2),
        courier_work=arr(45, 30, 12),
        bundle_courier=arr(0, 0, 1, 2),
        bundle_size=arr(1, 2, 1, 1),
    )


@pytest.fixture(scope="module")
def m() -> dict[str, float]:
    return metrics.compute(six_orders(), six_outcome())


def test_counts(m: dict[str, float]) -> None:
    assert m["orders"] == 6
    # Delivered: o1, o2, o3, o6 (o4 is later than the maximum click-to-door, o5 never carried).
    assert m["delivered"] == 4
    assert m["undelivered_pct"] == pytest.approx(100 * 2 / 6)
    # On time (ctd <= 40) among all six orders: o1 only.
    assert m["on_time_pct"] == pytest.approx(100 * 1 / 6)


def test_click_to_door(m: dict[str, float]) -> None:
    # ctd of delivered orders [30, 50, 50, 80]: mean 52.5;
    # population variance ((-22.5)^2 + 2*(-2.5)^2 + 27.5^2) / 4 = 1275 / 4 = 318.75.
    assert m["ctd_mean"] == pytest.approx(52.5)
    assert m["ctd_std"] == pytest.approx(math.sqrt(318.75))
    assert m["ctd_std"] != pytest.approx(math.sqrt(1275 / 3))  # not the sample std
    assert m["ctd_min"] == 30 and m["ctd_max"] == 80
    assert m["ctd_median"] == pytest.approx(50)
    # Linear percentiles: p10 at rank 0.3 -> 30 + 0.3*20 = 36; p90 at rank 2.7 -> 50 + 0.7*30 = 71.
    assert m["ctd_p10"] == pytest.approx(36)
    assert m["ctd_p90"] == pytest.approx(71)


def test_ready_to_door_and_pickup(m: dict[str, float]) -> None:
    # ready-to-door [20, 45, 40, 80] (o4's 70 excluded): mean 46.25, min 20, max 80.
    assert m["ready_to_door_mean"] == pytest.approx(46.25)
    assert m["ready_to_door_min"] == 20 and m["ready_to_door_max"] == 80
    # ready-to-pickup [2, 15, 0, 40] (o4's 30 excluded): mean 14.25.
    assert m["ready_to_pickup_mean"] == pytest.approx(14.25)
    assert m["ready_to_pickup_min"] == 0 and m["ready_to_pickup_max"] == 40
    assert m["ready_to_pickup_median"] == pytest.approx(8.5)  # (2 + 15) / 2


def test_overage(m: dict[str, float]) -> None:
    # max(0, ctd - 40) over [30, 50, 50, 80] -> [0, 10, 10, 40]: mean 15.
    assert m["overage_mean"] == pytest.approx(15)
    assert m["overage_min"] == 0 and m["overage_max"] == 40
    # population std: deviations -15, -5, -5, 25 -> (225 + 25 + 25 + 625) / 4 = 225 -> 15.
    assert m["overage_std"] == pytest.approx(15)


def test_courier_rates(m: dict[str, float]) -> None:
    # Delivered orders per courier: c1 3 (o1, o2, o3), c2 0 (o4 late), c3 1.
    # Orders per hour: 3/1.5 = 2, 0/1 = 0, 1/1 = 1 -> mean 1, population std sqrt(2/3).
    assert m["orders_per_hour_mean"] == pytest.approx(1.0)
    assert m["orders_per_hour_std"] == pytest.approx(math.sqrt(2 / 3))
    assert m["orders_per_hour_max"] == pytest.approx(2.0)
    # Bundles per hour (every executed bundle): c1 2/1.5, c2 1/1, c3 1/1.
    assert m["bundles_per_hour_mean"] == pytest.approx((4 / 3 + 1 + 1) / 3)
    # Utilisation: work / shift minutes = 45/90, 30/60, 12/60 -> 0.5, 0.5, 0.2 -> mean 0.4.
    assert m["utilisation_mean"] == pytest.approx(0.4)
    assert m["utilisation_min"] == pytest.approx(0.2)
    assert m["utilisation_max"] == pytest.approx(0.5)


def test_pay(m: dict[str, float]) -> None:
    # Earnings 10 x delivered: 30, 0, 10. Guarantee 15 x hours: 22.5, 15, 15.
    # Pay = max: 30, 15, 15 -> total 60; cost per delivered order 60 / 4 = 15.
    assert m["order_earnings_mean"] == pytest.approx(40 / 3)
    assert m["pay_mean"] == pytest.approx(20)
    assert m["pay_min"] == 15 and m["pay_max"] == 30
    assert m["total_pay"] == pytest.approx(60)
    assert m["cost_per_order"] == pytest.approx(15)
    # Paid the guarantee: c2 and c3.
    assert m["guaranteed_share"] == pytest.approx(2 / 3)


def test_bundle_size(m: dict[str, float]) -> None:
    # Sizes [1, 2, 1, 1]: mean 1.25, population variance (3 * 0.0625 + 0.5625) / 4 = 0.1875.
    assert m["bundle_size_mean"] == pytest.approx(1.25)
    assert m["bundle_size_std"] == pytest.approx(math.sqrt(0.1875))
    assert m["bundle_size_min"] == 1 and m["bundle_size_max"] == 2
    assert m["bundle_size_median"] == 1


def test_every_distribution_has_every_stat(m: dict[str, float]) -> None:
    for name in metrics.DISTRIBUTIONS:
        for stat in metrics.STATS:
            assert f"{name}_{stat}" in m
    for key in metrics.HEADLINE:
        assert key in m


def test_boundaries_target_and_max_are_inclusive() -> None:
    # o1 ctd exactly 40 (on time, overage 0); o2 ctd exactly 90 (delivered, overage 50);
    # o3 ctd 91 (undelivered).
    inst = make_instance(
        restaurants=[("R1", 0, 0)],
        orders=[("o1", 0, 0, 0, "R1", 0), ("o2", 0, 0, 0, "R1", 0), ("o3", 0, 0, 0, "R1", 0)],
        couriers=[("c1", 0, 0, 0, 120)],
    )
    out = metrics.Outcome(
        order_pickup=arr(10, 10, 10),
        order_dropoff=arr(40, 90, 91),
        order_courier=arr(0, 0, 0),
        courier_work=arr(60),
        bundle_courier=arr(0, 0, 0),
        bundle_size=arr(1, 1, 1),
    )
    m = metrics.compute(inst, out)
    assert m["delivered"] == 2
    assert m["on_time_pct"] == pytest.approx(100 / 3)
    assert m["overage_mean"] == pytest.approx(25)  # (0 + 50) / 2
    assert m["ctd_max"] == 90
    # Earnings 10 * 2 = 20 < 15 * 2 h = 30.
    assert m["total_pay"] == pytest.approx(30)
    assert m["guaranteed_share"] == 1.0


def test_nothing_delivered_gives_nan_distributions() -> None:
    inst = make_instance(
        restaurants=[("R1", 0, 0)],
        orders=[("o1", 0, 0, 0, "R1", 0)],
        couriers=[("c1", 0, 0, 0, 60)],
    )
    out = metrics.Outcome(
        order_pickup=arr(-1),
        order_dropoff=arr(-1),
        order_courier=arr(-1),
        courier_work=arr(0),
        bundle_courier=arr(),
        bundle_size=arr(),
    )
    m = metrics.compute(inst, out)
    assert m["delivered"] == 0
    assert m["undelivered_pct"] == 100.0
    assert m["on_time_pct"] == 0.0
    for stat in metrics.STATS:
        assert math.isnan(m[f"ctd_{stat}"])
        assert math.isnan(m[f"bundle_size_{stat}"])
    assert math.isnan(m["cost_per_order"])
    assert m["total_pay"] == pytest.approx(15)  # one hour of guarantee
    assert m["utilisation_mean"] == 0.0
    assert m["orders_per_hour_mean"] == 0.0


def test_summarise() -> None:
    s = metrics.summarise(np.array([50, 10, 40, 20, 30]))
    # mean 30; population variance (400+100+0+100+400)/5 = 200; p10 = 10 + 0.4*10 = 14; p90 = 46.
    assert s == pytest.approx(
        {"mean": 30.0, "std": math.sqrt(200), "min": 10.0, "p10": 14.0, "median": 30.0, "p90": 46.0, "max": 50.0}
    )
    empty = metrics.summarise(np.array([]))
    assert set(empty) == set(metrics.STATS)
    assert all(math.isnan(v) for v in empty.values())


def test_charged_click_to_door_counts_lost_orders_at_the_limit() -> None:
    from simulator.results import charged_ctd

    # 4 orders: 3 delivered at a mean of 30 min, 1 lost and charged at 90: (3 × 30 + 90) / 4 = 45.
    assert charged_ctd({"ctd_mean": 30.0, "undelivered_pct": 25.0}, 90) == pytest.approx(45.0)
    assert charged_ctd({"ctd_mean": 30.0, "undelivered_pct": 0.0}, 90) == pytest.approx(30.0)
