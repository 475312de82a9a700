"""Seeded synthetic MDRP days whose statistics are calibrated on the 240 public Grubhub instances.

``generate(SyntheticConfig(), seed)`` builds one day; ``python -m simulator.synthetic --calibrate``
prints the public and synthetic statistics side by side (see ``docs/synthetic.md``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dispatch.snapshot import FloatArray, IntArray, ServiceParams
from simulator.cli_paths import path_arg
from simulator.instance import Instance, list_instances, load, save
from simulator.seeds import seed_arg

# One independent random stream per purpose, so that changing one knob (say, the courier hours)
# leaves every other part of the day (restaurants, orders, ...) exactly as it was for that seed.
PURPOSES: dict[str, int] = {
    "order_count": 0,
    "restaurants": 1,
    "popularity": 2,
    "placement": 3,
    "preparation": 4,
    "dropoff": 5,
    "shifts": 6,
    "courier_location": 7,
}

# Relative order volume for each hour after the start of the day: a lunch peak in hours 1-3 and
# a larger dinner peak in hours 8-10, the shape of the 14-hour public days (cities 0, 1, 5-9).
# fmt: off
DEFAULT_HOURLY_PROFILE: tuple[float, ...] = (
    1.5, 6.0, 7.5, 7.0, 5.5, 5.5, 5.5,  # hours 0-6: lunch peak
    7.5, 12.0, 13.5, 12.0, 8.0, 4.0, 0.3,  # hours 7-13: dinner peak
)
# fmt: on


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic day generator; defaults are calibrated on the public instances."""

    # Demand: expected orders of the day (the count is Poisson) spread over the hourly profile.
    orders_per_day: int = 850
    hourly_profile: tuple[float, ...] = DEFAULT_HOURLY_PROFILE
    # City and restaurants: a square city; restaurants normal around a few hubs.
    city_size_m: float = 20_000.0
    n_restaurants: int = 137
    n_hubs: int = 4
    hub_spread_m: float = 2_000.0
    # Lognormal sigma of restaurant popularity: a few restaurants take many orders.
    popularity_sigma: float = 1.05
    # Drop-off distance from the restaurant: Weibull with this scale and shape, capped (a Weibull
    # fits both tails of the public distances better than a gamma does).
    dropoff_scale_m: float = 2_600.0
    dropoff_shape: float = 1.6
    dropoff_max_m: float = 10_000.0
    # Preparation (ready - placement): Weibull with this scale and shape (like the drop-off
    # distance, it matches both tails of the public times), times a per-restaurant lognormal
    # factor of mean 1 (some kitchens are slower than others).
    prep_scale_min: float = 22.0
    prep_shape: float = 1.7
    restaurant_prep_sigma: float = 0.15
    # Couriers: total shift hours per order, shift lengths drawn from these choices, starts on a
    # grid, placed to follow demand ``courier_lag_min`` minutes after placement (about the ready time).
    courier_hours_per_order: float = 0.53
    shift_lengths_min: tuple[int, ...] = (60, 90, 120, 150, 180, 240)
    shift_length_weights: tuple[float, ...] = (0.03, 0.1, 0.12, 0.04, 0.34, 0.37)
    shift_start_step_min: int = 15
    courier_lag_min: int = 20
    # Couriers come on duty near a restaurant: Weibull distance with this scale and shape.
    courier_offset_scale_m: float = 2_000.0
    courier_offset_shape: float = 1.2
    # Travel and service parameters (the values of the public instances with original travel times).
    meters_per_minute: float = 320.0
    pickup_service: int = 4
    dropoff_service: int = 4
    target_ctd: int = 40
    max_ctd: int = 90
    pay_per_order: float = 10.0
    guaranteed_pay_per_hour: float = 15.0

    def __post_init__(self) -> None:
        """Reject knob values that cannot produce a valid day."""
        if self.orders_per_day < 1:
            raise ValueError(f"orders_per_day must be >= 1, got {self.orders_per_day}")
        if not self.hourly_profile or min(self.hourly_profile) < 0 or sum(self.hourly_profile) <= 0:
            raise ValueError("hourly_profile needs non-negative weights with a positive sum")
        if self.n_restaurants < 1 or self.n_hubs < 1:
            raise ValueError("n_restaurants and n_hubs must be >= 1")
        if len(self.shift_lengths_min) != len(self.shift_length_weights) or not self.shift_lengths_min:
            raise ValueError("shift_lengths_min and shift_length_weights must be non-empty, of equal length")
        if min(self.shift_lengths_min) < 1 or min(self.shift_length_weights) < 0 or sum(self.shift_length_weights) <= 0:
            raise ValueError("shift lengths must be >= 1 minute, their weights non-negative with a positive sum")
        if self.shift_start_step_min < 1 or self.courier_lag_min < 0:
            raise ValueError("shift_start_step_min must be >= 1 and courier_lag_min >= 0")
        positive = (
            "city_size_m",
            "dropoff_scale_m",
            "dropoff_shape",
            "dropoff_max_m",
            "prep_scale_min",
            "prep_shape",
            "courier_hours_per_order",
            "courier_offset_scale_m",
            "courier_offset_shape",
            "meters_per_minute",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def horizon_min(self) -> int:
        """Minutes covered by the hourly profile (orders are placed before this)."""
        return 60 * len(self.hourly_profile)

    def service_params(self) -> ServiceParams:
        """The instance parameters of a generated day."""
        return ServiceParams(
            self.meters_per_minute,
            self.pickup_service,
            self.dropoff_service,
            self.target_ctd,
            self.max_ctd,
            self.pay_per_order,
            self.guaranteed_pay_per_hour,
        )


def rng_for(seed: int, purpose: str) -> np.random.Generator:
    """The random stream of one purpose (a key of ``PURPOSES``) for one seed."""
    if seed < 0:
        raise ValueError(f"synthetic seed must be >= 0, got {seed}")
    return np.random.default_rng(np.random.SeedSequence([seed, PURPOSES[purpose]]))


def _restaurants(cfg: SyntheticConfig, rng: np.random.Generator) -> FloatArray:
    """Restaurant coordinates: normal clusters around hubs in the central part of the city."""
    size = cfg.city_size_m
    hubs = rng.uniform(0.3 * size, 0.7 * size, size=(cfg.n_hubs, 2))
    # Unequal hubs: one downtown-like cluster usually dominates.
    share = rng.dirichlet(np.full(cfg.n_hubs, 1.5))
    hub_of = rng.choice(cfg.n_hubs, size=cfg.n_restaurants, p=share)
    xy = hubs[hub_of] + rng.normal(0.0, cfg.hub_spread_m, size=(cfg.n_restaurants, 2))
    return np.rint(np.clip(xy, 0.0, size)).astype(np.float64)


def _order_restaurants(cfg: SyntheticConfig, n_orders: int, rng: np.random.Generator) -> IntArray:
    """Restaurant of each order: skewed popularity, every restaurant with at least one order."""
    weights = rng.lognormal(0.0, cfg.popularity_sigma, size=cfg.n_restaurants)
    rest = rng.choice(cfg.n_restaurants, size=n_orders, p=weights / weights.sum()).astype(np.int64)
    # The public files list only restaurants that received orders; match that.
    first = rng.choice(n_orders, size=cfg.n_restaurants, replace=False)
    rest[first] = rng.permutation(cfg.n_restaurants)
    return rest


def _placements(cfg: SyntheticConfig, n_orders: int, rng: np.random.Generator) -> IntArray:
    """Placement minutes, hour drawn from the profile and minute uniform within the hour."""
    profile = np.asarray(cfg.hourly_profile, dtype=np.float64)
    hour = rng.choice(len(profile), size=n_orders, p=profile / profile.sum())
    return np.sort(60 * hour + rng.integers(0, 60, size=n_orders)).astype(np.int64)


def _preparation(cfg: SyntheticConfig, rest: IntArray, rng: np.random.Generator) -> IntArray:
    """Whole preparation minutes (ready - placement) of each order, >= 0."""
    s = cfg.restaurant_prep_sigma
    kitchen = rng.lognormal(-0.5 * s * s, s, size=cfg.n_restaurants)
    prep = cfg.prep_scale_min * rng.weibull(cfg.prep_shape, size=len(rest)) * kitchen[rest]
    return np.maximum(np.round(prep), 0).astype(np.int64)


def _offsets(scale: float, shape: float, cap: float, n: int, rng: np.random.Generator) -> FloatArray:
    """Random displacement vectors: Weibull distance (10 m to ``cap``) in a uniform direction."""
    dist = np.clip(scale * rng.weibull(shape, size=n), 10.0, cap)
    angle = rng.uniform(0.0, 2.0 * np.pi, size=n)
    return np.stack([dist * np.cos(angle), dist * np.sin(angle)], axis=1)


def _place_near(origin: FloatArray, offset: FloatArray, size: float) -> FloatArray:
    """Whole-metre points origin + offset inside the city; outside points are mirrored first."""
    xy = origin + offset
    outside = ((xy < 0) | (xy > size)).any(axis=1)
    # Mirroring keeps the distance (and so the distance distribution); clipping is the fallback.
    xy[outside] = origin[outside] - offset[outside]
    return np.rint(np.clip(xy, 0.0, size)).astype(np.float64)


def _shifts(cfg: SyntheticConfig, placement: IntArray, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
    """Courier (on, off) minutes: shifts added one by one where they best close the coverage gap."""
    horizon = cfg.horizon_min
    total = len(placement) * cfg.courier_hours_per_order * 60.0
    longest = max(cfg.shift_lengths_min)
    # Wanted couriers on duty at minute t: the placement rate courier_lag_min minutes earlier (an
    # order needs its courier around its ready time, not its placement), smoothed over half an
    # hour so that single orders do not attract shifts, scaled to the day's courier minutes.
    span = horizon + cfg.courier_lag_min + longest
    rate = np.bincount(placement + cfg.courier_lag_min, minlength=span)[:span].astype(np.float64)
    want = np.convolve(rate, np.ones(31) / 31.0, mode="same")
    want *= total / want.sum()
    have = np.zeros(span)
    lengths = np.asarray(cfg.shift_lengths_min, dtype=np.int64)
    lw = np.asarray(cfg.shift_length_weights, dtype=np.float64)
    starts = np.arange(0, horizon, cfg.shift_start_step_min, dtype=np.int64)
    on: list[int] = []
    off: list[int] = []
    assigned = 0.0
    while assigned < total:
        length = int(rng.choice(lengths, p=lw / lw.sum()))
        gap = np.concatenate([[0.0], np.cumsum(want - have)])
        # Decrease of sum((want - have)^2) if the shift starts at s: it rewards covering a gap and
        # penalises minutes with nothing to do, so the day's edges get shifts that end or start there.
        gain = 2.0 * (gap[starts + length] - gap[starts]) - length
        pos = np.maximum(gain, 0.0) ** 2
        # Sampling rather than argmax spreads starts over the good slots, as real rosters do.
        k = int(rng.choice(len(starts), p=pos / pos.sum())) if pos.sum() > 0 else int(np.argmax(gain))
        s = int(starts[k])
        have[s : s + length] += 1.0
        on.append(s)
        off.append(s + length)
        assigned += length
    order = np.argsort(np.asarray(on), kind="stable")
    return np.asarray(on, dtype=np.int64)[order], np.asarray(off, dtype=np.int64)[order]


def generate(config: SyntheticConfig, seed: int) -> Instance:
    """One synthetic MDRP day, the same for the same (config, seed)."""
    cfg = config
    size = cfg.city_size_m
    n_orders = max(int(rng_for(seed, "order_count").poisson(cfg.orders_per_day)), cfg.n_restaurants)
    rest_xy = _restaurants(cfg, rng_for(seed, "restaurants"))
    order_rest = _order_restaurants(cfg, n_orders, rng_for(seed, "popularity"))
    placement = _placements(cfg, n_orders, rng_for(seed, "placement"))
    ready = placement + _preparation(cfg, order_rest, rng_for(seed, "preparation"))
    drop_rng = rng_for(seed, "dropoff")
    order_xy = _place_near(
        rest_xy[order_rest],
        _offsets(cfg.dropoff_scale_m, cfg.dropoff_shape, cfg.dropoff_max_m, n_orders, drop_rng),
        size,
    )
    on, off = _shifts(cfg, placement, rng_for(seed, "shifts"))
    loc_rng = rng_for(seed, "courier_location")
    home = loc_rng.choice(cfg.n_restaurants, size=len(on))
    courier_xy = _place_near(
        rest_xy[home],
        _offsets(cfg.courier_offset_scale_m, cfg.courier_offset_shape, size, len(on), loc_rng),
        size,
    )
    return Instance(
        name=f"synthetic-{seed}",
        params=cfg.service_params(),
        restaurant_ids=tuple(f"r{i + 1}" for i in range(cfg.n_restaurants)),
        restaurant_xy=rest_xy.astype(np.float64),
        order_ids=tuple(f"o{i + 1}" for i in range(n_orders)),
        order_xy=order_xy.astype(np.float64),
        order_placement=placement.astype(np.int64),
        order_restaurant=order_rest,
        order_ready=ready.astype(np.int64),
        courier_ids=tuple(f"c{i + 1}" for i in range(len(on))),
        courier_xy=courier_xy.astype(np.float64),
        courier_on=on,
        courier_off=off,
        meta={"source": "synthetic", "seed": str(seed)},
    )


# ---------------------------------------------------------------------------------------------
# Calibration: the same statistics on public and synthetic days.

STAT_HOURS = 18  # the longest public days place orders up to minute ~1034


def _pct(a: FloatArray | IntArray, q: float) -> float:
    """Percentile of a non-empty array as a float."""
    return float(np.percentile(a, q))


def day_stats(inst: Instance) -> dict[str, float]:
    """Calibration statistics of one day (see docs/synthetic.md for their meaning)."""
    prep = (inst.order_ready - inst.order_placement).astype(np.float64)
    dist = np.hypot(*(inst.order_xy - inst.restaurant_xy[inst.order_restaurant]).T)
    shift = (inst.courier_off - inst.courier_on).astype(np.float64)
    rxy = inst.restaurant_xy
    pair = np.hypot(rxy[:, None, 0] - rxy[None, :, 0], rxy[:, None, 1] - rxy[None, :, 1])
    pair = pair[np.triu_indices(len(rxy), k=1)] if len(rxy) > 1 else np.zeros(1)
    counts = np.sort(np.bincount(inst.order_restaurant, minlength=len(rxy)))[::-1]
    top = max(1, round(0.1 * len(counts)))
    to_rest = np.hypot(
        inst.courier_xy[:, None, 0] - rxy[None, :, 0], inst.courier_xy[:, None, 1] - rxy[None, :, 1]
    ).min(axis=1)
    return {
        "orders": float(inst.n_orders),
        "restaurants": float(len(rxy)),
        "couriers": float(inst.n_couriers),
        "courier_hours_per_order": float(shift.sum() / 60.0 / inst.n_orders),
        "meters_per_minute": float(inst.params.meters_per_minute),
        "last_placement_min": float(inst.order_placement.max()),
        "prep_mean": float(prep.mean()),
        "prep_p10": _pct(prep, 10),
        "prep_p50": _pct(prep, 50),
        "prep_p90": _pct(prep, 90),
        "dropoff_m_p10": _pct(dist, 10),
        "dropoff_m_p50": _pct(dist, 50),
        "dropoff_m_p90": _pct(dist, 90),
        "restaurant_pair_m_p50": _pct(pair, 50),
        "top10pct_restaurant_share": float(counts[:top].sum() / counts.sum()),
        "shift_min_p10": _pct(shift, 10),
        "shift_min_p50": _pct(shift, 50),
        "shift_min_p90": _pct(shift, 90),
        "shift_start_p10": _pct(inst.courier_on, 10),
        "shift_start_p50": _pct(inst.courier_on, 50),
        "shift_start_p90": _pct(inst.courier_on, 90),
        "courier_to_restaurant_m_p50": _pct(to_rest, 50),
    }


def hourly_shares(minutes: IntArray, hours: int = STAT_HOURS) -> FloatArray:
    """Share of events (placements, shift starts) in each hour after the start of the day."""
    h = np.minimum(minutes // 60, hours - 1)
    return np.bincount(h, minlength=hours).astype(np.float64) / max(len(minutes), 1)


@dataclass(frozen=True)
class Sample:
    """Per-day statistics and hourly shares of a set of days."""

    stats: dict[str, FloatArray]
    order_hours: FloatArray  # (days, STAT_HOURS)
    start_hours: FloatArray  # (days, STAT_HOURS)


def measure(instances: Sequence[Instance]) -> Sample:
    """Statistics of each day of ``instances``."""
    rows = [day_stats(i) for i in instances]
    stats = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    return Sample(
        stats,
        np.array([hourly_shares(i.order_placement) for i in instances]),
        np.array([hourly_shares(i.courier_on) for i in instances]),
    )


def calibration_table(public: Sample, synthetic: Sample) -> str:
    """Markdown tables: min / median / max of each statistic, public next to synthetic."""
    out = [
        "| statistic | public min | public median | public max | synthetic min | synthetic median | synthetic max |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, pub in public.stats.items():
        syn = synthetic.stats[key]
        vals = [pub.min(), np.median(pub), pub.max(), syn.min(), np.median(syn), syn.max()]
        out.append(f"| {key} | " + " | ".join(f"{v:.3g}" if abs(v) < 10 else f"{v:.0f}" for v in vals) + " |")
    out += [
        "",
        "| hour | orders % public (min / median / max) | orders % synthetic median"
        " | shift starts % public (min / median / max) | shift starts % synthetic median |",
        "|---:|---:|---:|---:|---:|",
    ]
    for h in range(STAT_HOURS):
        po, so = 100 * public.order_hours[:, h], 100 * synthetic.order_hours[:, h]
        ps, ss = 100 * public.start_hours[:, h], 100 * synthetic.start_hours[:, h]
        out.append(
            f"| {h} | {po.min():.1f} / {np.median(po):.1f} / {po.max():.1f} | {np.median(so):.1f}"
            f" | {ps.min():.1f} / {np.median(ps):.1f} / {ps.max():.1f} | {np.median(ss):.1f} |"
        )
    return "\n".join(out)


def calibrate(pattern: str = "*", days: int = 20, config: SyntheticConfig | None = None) -> str:
    """Measure the public instances matching ``pattern`` and ``days`` synthetic days; the table."""
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    names = list_instances(pattern)
    if not names:
        raise ValueError(f"no public instance matches {pattern!r}")
    public = measure([load(n) for n in names])
    cfg = config or SyntheticConfig()
    synthetic = measure([generate(cfg, seed) for seed in range(days)])
    # meters_per_minute is two-valued by design (t100 / t75), so its median alone misleads.
    speeds = ", ".join(f"{v:g}" for v in np.unique(public.stats["meters_per_minute"]))
    head = (
        f"public: {len(names)} instances matching {pattern!r} (meters_per_minute values: {speeds}); "
        f"synthetic: {days} days (seeds 0..{days - 1})"
    )
    return head + "\n\n" + calibration_table(public, synthetic)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--calibrate`` prints the calibration table; ``--write DIR --seed N`` writes a day."""
    p = argparse.ArgumentParser(
        prog="python -m simulator.synthetic",
        description="Seeded synthetic MDRP days calibrated on the public Grubhub instances.",
        epilog="examples:\n"
        "  python -m simulator.synthetic --calibrate            # public vs 20 synthetic days\n"
        "  python -m simulator.synthetic --write out --seed 3   # writes out/synthetic-3/*.txt\n"
        "Other programs load the same day with the instance spec synthetic:3.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="print public vs synthetic statistics (min / median / max) as markdown tables",
    )
    p.add_argument("--pattern", default="*", help="glob over public instance names for --calibrate (default '*')")
    p.add_argument("--days", type=int, default=20, help="synthetic days (seeds 0..N-1) for --calibrate (default 20)")
    p.add_argument(
        "--write",
        metavar="DIR",
        type=path_arg,
        help="write the day of --seed in the MDRP text format to DIR/synthetic-SEED",
    )
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the day to --write (default 0)")
    p.add_argument("--orders", type=int, help=f"override orders_per_day (default {SyntheticConfig.orders_per_day})")
    args = p.parse_args(argv)
    if not args.calibrate and args.write is None:
        p.error("nothing to do: give --calibrate and/or --write DIR")
    if args.days < 1:
        p.error(f"--days must be >= 1, got {args.days}")
    cfg = SyntheticConfig() if args.orders is None else SyntheticConfig(orders_per_day=args.orders)
    if args.calibrate:
        print(calibrate(args.pattern, args.days, cfg))
    if args.write is not None:
        inst = generate(cfg, args.seed)
        folder = save(inst, args.write / inst.name)
        print(
            f"wrote {folder} ({inst.n_orders} orders, {len(inst.restaurant_ids)} restaurants, "
            f"{inst.n_couriers} couriers)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
