"""Synthetic day generator: determinism, format round trip, statistics, and a simulated day."""

from __future__ import annotations

import math
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from simulator.heuristics import make
from simulator.instance import Instance, InstanceError, load, save
from simulator.run import run_episode
from simulator.sources import MAX_RANGE, expand, load_spec
from simulator.synthetic import (
    SyntheticConfig,
    calibrate,
    calibration_table,
    day_stats,
    generate,
    main,
    measure,
)

# A quarter-size day keeps the tests fast; the full default is used where users meet it.
SMALL = SyntheticConfig(orders_per_day=220, n_restaurants=40, n_hubs=2)


def assert_same(a: Instance, b: Instance) -> None:
    """Fail naming the first field where two instances differ (arrays compared exactly)."""
    for f in fields(Instance):
        if f.name == "meta":
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), f.name
        else:
            assert x == y, f.name


def test_same_seed_gives_identical_instance() -> None:
    assert_same(generate(SMALL, 7), generate(SMALL, 7))
    assert_same(generate(SyntheticConfig(), 11), generate(SyntheticConfig(), 11))


def test_different_seeds_give_different_instances() -> None:
    a, b = generate(SMALL, 1), generate(SMALL, 2)
    assert a.name == "synthetic-1" and b.name == "synthetic-2"
    assert not np.array_equal(a.restaurant_xy, b.restaurant_xy)
    assert a.n_orders != b.n_orders or not np.array_equal(a.order_placement, b.order_placement)
    assert a.n_couriers != b.n_couriers or not np.array_equal(a.courier_on, b.courier_on)


def test_each_purpose_has_its_own_stream() -> None:
    # More courier hours must change only the couriers, not the restaurants or the orders.
    a = generate(SMALL, 4)
    b = generate(replace(SMALL, courier_hours_per_order=0.9), 4)
    assert np.array_equal(a.restaurant_xy, b.restaurant_xy)
    assert np.array_equal(a.order_placement, b.order_placement)
    assert np.array_equal(a.order_ready, b.order_ready)
    assert np.array_equal(a.order_xy, b.order_xy)
    assert b.n_couriers > a.n_couriers


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    inst = generate(SMALL, 5)
    folder = save(inst, tmp_path / inst.name)
    back = load(folder)
    assert back.name == inst.name
    assert_same(inst, back)


def test_main_writes_a_loadable_day(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--write", str(tmp_path), "--seed", "9", "--orders", "200"]) == 0
    assert "synthetic-9" in capsys.readouterr().out
    assert_same(load(tmp_path / "synthetic-9"), generate(SyntheticConfig(orders_per_day=200), 9))


def test_instances_are_valid_and_follow_the_config() -> None:
    cfg = SMALL
    counts = []
    for seed in range(6):
        inst = generate(cfg, seed)
        n = inst.n_orders
        counts.append(n)
        # Poisson count: 5 standard deviations is far outside any honest draw.
        assert abs(n - cfg.orders_per_day) < 5 * np.sqrt(cfg.orders_per_day)
        assert inst.order_ids == tuple(f"o{i}" for i in range(1, n + 1))
        assert inst.restaurant_ids == tuple(f"r{i}" for i in range(1, cfg.n_restaurants + 1))
        assert inst.courier_ids == tuple(f"c{i}" for i in range(1, inst.n_couriers + 1))
        assert (inst.order_placement >= 0).all() and (inst.order_placement < cfg.horizon_min).all()
        assert (inst.order_ready >= inst.order_placement).all()
        assert set(np.unique(inst.order_restaurant)) == set(range(cfg.n_restaurants))
        for xy in (inst.restaurant_xy, inst.order_xy, inst.courier_xy):
            assert (xy >= 0).all() and (xy <= cfg.city_size_m).all()
            assert np.array_equal(xy, np.round(xy))
        assert (inst.courier_off > inst.courier_on).all() and (inst.courier_on >= 0).all()
        assert (inst.courier_on % cfg.shift_start_step_min == 0).all()
        assert set(np.unique(inst.courier_off - inst.courier_on)) <= set(cfg.shift_lengths_min)
        hours = (inst.courier_off - inst.courier_on).sum() / 60.0
        wanted = n * cfg.courier_hours_per_order
        assert wanted <= hours < wanted + max(cfg.shift_lengths_min) / 60.0
        assert inst.params.meters_per_minute == cfg.meters_per_minute
        assert (inst.params.pickup_service, inst.params.dropoff_service) == (4, 4)
        assert (inst.params.target_ctd, inst.params.max_ctd) == (40, 90)
        assert (inst.params.pay_per_order, inst.params.guaranteed_pay_per_hour) == (10.0, 15.0)
    assert abs(np.mean(counts) - cfg.orders_per_day) < 3 * np.sqrt(cfg.orders_per_day / len(counts))


def test_distributions_match_the_knobs() -> None:
    cfg = SyntheticConfig()
    days = [generate(cfg, seed) for seed in range(3)]
    prep = np.concatenate([d.order_ready - d.order_placement for d in days])
    assert abs(prep.mean() - cfg.prep_scale_min * math.gamma(1.0 + 1.0 / cfg.prep_shape)) < 1.0
    dist = np.concatenate([np.hypot(*(d.order_xy - d.restaurant_xy[d.order_restaurant]).T) for d in days])
    weibull_median = cfg.dropoff_scale_m * np.log(2.0) ** (1.0 / cfg.dropoff_shape)
    assert abs(np.median(dist) / weibull_median - 1.0) < 0.06
    assert dist.max() <= cfg.dropoff_max_m + 1.0
    # Orders follow the hourly profile.
    place = np.concatenate([d.order_placement for d in days])
    share = np.bincount(place // 60, minlength=len(cfg.hourly_profile)) / len(place)
    profile = np.asarray(cfg.hourly_profile) / sum(cfg.hourly_profile)
    assert np.abs(share - profile).max() < 0.02


def test_hourly_profile_is_respected() -> None:
    inst = generate(replace(SMALL, orders_per_day=2000, hourly_profile=(1.0, 0.0, 3.0)), 0)
    hours = inst.order_placement // 60
    assert set(np.unique(hours)) == {0, 2}
    assert abs((hours == 2).mean() - 0.75) < 0.04


def test_shifts_follow_demand() -> None:
    # Demand only in hours 5-6 of a 12-hour day: every shift must overlap it (plus the ready lag).
    profile = (0.0,) * 5 + (1.0, 1.0) + (0.0,) * 5
    inst = generate(replace(SMALL, hourly_profile=profile), 1)
    assert inst.n_couriers > 10
    assert (inst.courier_off > 300).all() and (inst.courier_on < 420 + SMALL.courier_lag_min + 15).all()


def test_couriers_cover_every_busy_hour() -> None:
    for seed in range(3):
        inst = generate(SyntheticConfig(), seed)
        for h in np.unique(inst.order_placement // 60):
            t = 60 * int(h) + 30
            assert ((inst.courier_on <= t) & (inst.courier_off > t)).sum() >= 1, (seed, h)


def test_bad_config_and_seed_are_rejected() -> None:
    with pytest.raises(ValueError, match="orders_per_day"):
        SyntheticConfig(orders_per_day=0)
    with pytest.raises(ValueError, match="shift_lengths_min"):
        SyntheticConfig(shift_lengths_min=(120,), shift_length_weights=(0.5, 0.5))
    with pytest.raises(ValueError, match="weights"):
        SyntheticConfig(shift_length_weights=(0.0,) * 6)
    with pytest.raises(ValueError, match="hourly_profile"):
        SyntheticConfig(hourly_profile=())
    with pytest.raises(ValueError, match="seed"):
        generate(SMALL, -1)


def test_load_spec_synthetic() -> None:
    inst = load_spec("synthetic:3")
    assert inst.name == "synthetic-3"
    assert_same(inst, generate(SyntheticConfig(), 3))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("synthetic:-3-5", r"must be 0\.\."),
        ("synthetic:0-99999999999", r"must be 0\.\."),
        (f"synthetic:1-{MAX_RANGE + 1}", "at most"),
        ("synthetic:5-2", "is empty"),
    ],
)
def test_bad_synthetic_ranges_are_refused_before_any_work(spec: str, message: str) -> None:
    # A huge range must fail at once, not after building a list of every seed in it.
    with pytest.raises(InstanceError, match=message):
        expand([spec])


def test_empty_instance_names_are_refused() -> None:
    with pytest.raises(InstanceError, match="pattern is empty"):
        expand([" "])
    with pytest.raises(InstanceError, match="name is empty"):
        load_spec("")


@pytest.mark.parametrize("spec", ["synthetic:-1", "synthetic:4294967296"])
def test_synthetic_seeds_out_of_range_are_refused(spec: str) -> None:
    with pytest.raises(InstanceError, match=r"must be 0\.\."):
        load_spec(spec)


def test_synthetic_ranges_need_no_data_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MDRP_DATA", str(tmp_path / "missing"))
    assert expand([f"synthetic:0-{MAX_RANGE - 1}"])[-1] == f"synthetic:{MAX_RANGE - 1}"
    with pytest.raises(InstanceError, match="MDRP_DATA"):
        expand(["0o50*"])


def test_full_default_day_simulates_and_delivers_most_orders() -> None:
    inst = load_spec("synthetic:3")
    result = run_episode(inst, make("nearest"))
    assert result.metrics["orders"] == inst.n_orders
    assert result.metrics["undelivered_pct"] < 5.0
    assert result.metrics["delivered"] > 0.95 * inst.n_orders


def test_day_stats_and_calibration_table() -> None:
    inst = generate(SMALL, 2)
    s = day_stats(inst)
    assert s["orders"] == inst.n_orders and s["restaurants"] == SMALL.n_restaurants
    assert s["couriers"] == inst.n_couriers
    prep = inst.order_ready - inst.order_placement
    assert s["prep_mean"] == pytest.approx(prep.mean())
    assert s["prep_p10"] <= s["prep_p50"] <= s["prep_p90"]
    assert s["courier_hours_per_order"] == pytest.approx(
        (inst.courier_off - inst.courier_on).sum() / 60.0 / inst.n_orders
    )
    sample = measure([inst, generate(SMALL, 3)])
    table = calibration_table(sample, sample)
    for key in s:
        assert f"| {key} |" in table


def test_calibrate_measures_public_and_synthetic_days() -> None:
    text = calibrate("0o100t100s1p100", days=2, config=SMALL)
    assert "public: 1 instances" in text and "synthetic: 2 days" in text
    # The one public day's order count is min, median and max of its column.
    assert "| orders | 505 | 505 | 505 |" in text
    with pytest.raises(ValueError, match="no public instance"):
        calibrate("no-such-instance*", days=1)
