"""Paired statistics of an A/B: mean difference, t and bootstrap intervals, effect size, Holm.

Every metric is compared on the same cells (instance × replicate seed), so the analysis works on
the paired differences d = B − A: paired t (interval and two-sided p-value from the t distribution
with n − 1 degrees of freedom), a seeded percentile bootstrap of the mean difference, Cohen's
d_z = mean(d) / sd(d), and Holm's step-down correction of the p-values across metrics.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

# metric: (title, unit, True if lower is better); each one a metric of a single simulated day, so a replay
# compares them with the logged day's.
DAY_METRICS: dict[str, tuple[str, str, bool]] = {
    "ctd_mean": ("mean click-to-door", "min", True),
    "ctd_p90": ("p90 click-to-door", "min", True),
    "undelivered_pct": ("undelivered", "pp", True),
    "overage_mean": ("mean overage", "min", True),
    "ready_to_pickup_mean": ("mean ready-to-pickup", "min", True),
    "on_time_pct": ("on-time", "pp", False),
    "cost_per_order": ("cost per order", "$", True),
}
# Over the orders both arms of an A/B deliver that day: an arm that drops its slowest orders looks faster on
# ctd_mean (survivorship); here it cannot. It needs both arms of the day, so it is the A/B's only.
COMMON = "ctd_common_mean"
# The A/B's metrics: the day metrics, with the common-orders one after the mean it corrects.
METRICS: dict[str, tuple[str, str, bool]] = {
    "ctd_mean": DAY_METRICS["ctd_mean"],
    COMMON: ("mean click-to-door on orders both deliver", "min", True),
    **DAY_METRICS,
}


@dataclass(frozen=True)
class Paired:
    """The paired comparison of one metric (differences are B − A)."""

    metric: str
    n: int
    mean_a: float
    mean_b: float
    diff: float
    sd: float
    t_low: float
    t_high: float
    boot_low: float
    boot_high: float
    dz: float
    p: float
    p_holm: float = float("nan")
    significant: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (NaN/inf as None)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


BOOT_BLOCK = 1 << 22  # indices per block of bootstrap resamples (32 MiB of int64)


def bootstrap_ci(d: np.ndarray, level: float, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``d`` (seeded, so reports are reproducible)."""
    if d.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB007]))
    # Resamples are drawn in blocks of about BOOT_BLOCK indices so memory stays bounded for any n_boot;
    # the generator yields the same stream in blocks as in one draw, so the interval does not change.
    rows = max(1, BOOT_BLOCK // d.size)
    means = np.concatenate(
        [d[rng.integers(0, d.size, size=(min(rows, n_boot - r), d.size))].mean(axis=1) for r in range(0, n_boot, rows)]
    )
    alpha = 1 - level
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired(metric: str, a: np.ndarray, b: np.ndarray, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Paired:
    """Paired t, bootstrap and effect size of B − A over the cells where both are finite."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    d = b - a
    n = int(d.size)
    nan = float("nan")
    if n == 0:
        return Paired(metric, 0, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else nan
    boot = bootstrap_ci(d, level, n_boot, seed)
    if n > 1 and sd > 0:
        se = sd / math.sqrt(n)
        q = float(sps.t.ppf(0.5 + level / 2, n - 1))
        t_lo, t_hi = mean - q * se, mean + q * se
        p = float(2 * sps.t.sf(abs(mean / se), n - 1))
        dz = mean / sd
    elif n > 1 and mean == 0:
        # Every difference is exactly zero (common random numbers, identical policies).
        t_lo = t_hi = 0.0
        p, dz = 1.0, 0.0
    elif n > 1:
        # A constant non-zero difference: no sampling variation at all, the sign is certain.
        t_lo = t_hi = mean
        p, dz = 0.0, math.copysign(math.inf, mean)
    else:
        t_lo = t_hi = p = dz = nan
    return Paired(metric, n, float(a.mean()), float(b.mean()), mean, sd, t_lo, t_hi, boot[0], boot[1], dz, p)


def common_ctd(order_ctd_a: list[int], order_ctd_b: list[int]) -> tuple[float, float]:
    """Mean click-to-door of arm A and of arm B over the orders both delivered (-1: undelivered); NaN, NaN
    when they delivered none in common. ValueError when the two days do not list the same orders."""
    a, b = np.asarray(order_ctd_a, dtype=np.float64), np.asarray(order_ctd_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"order_ctd: arm A lists {a.size} orders, arm B {b.size}; not the same day")
    both = (a >= 0) & (b >= 0)
    if not both.any():
        return math.nan, math.nan
    return float(a[both].mean()), float(b[both].mean())


def holm(p: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (NaN stays NaN and is not counted)."""
    idx = [i for i, v in enumerate(p) if math.isfinite(v)]
    m = len(idx)
    out = [float("nan")] * len(p)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: p[j])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def analyse(
    a: dict[str, np.ndarray], b: dict[str, np.ndarray], alpha: float = 0.05, n_boot: int = 2000, seed: int = 0
) -> list[Paired]:
    """Paired comparison of every metric in METRICS, Holm-corrected at family-wise level ``alpha``."""
    rows = [paired(m, a[m], b[m], 1 - alpha, n_boot, seed) for m in METRICS]
    adj = holm([r.p for r in rows])
    return [
        Paired(**{**asdict(r), "p_holm": q, "significant": bool(math.isfinite(q) and q < alpha)})
        for r, q in zip(rows, adj, strict=True)
    ]


def _num(v: float, unit: str) -> str:
    return f"${v:.2f}" if unit == "$" else f"{v:.2f} {unit}"


def verdict(r: Paired, alpha: float = 0.05) -> str:
    """One line: which arm is better on this metric, by how much, with what certainty."""
    title, unit, lower_better = METRICS[r.metric]
    if r.n == 0:
        return f"{title}: no cell with a finite value in both arms"
    if r.n == 1:
        return (
            f"{title}: B {'lower' if r.diff < 0 else 'higher'} by {_num(abs(r.diff), unit)} on the one paired day; "
            "an interval and a p-value need at least 2 (more --seeds or instances)"
        )
    level = round(100 * (1 - alpha))
    ci = f"{level}% CI {_num(r.t_low, unit)} to {_num(r.t_high, unit)}"
    if r.diff == 0 and (r.sd == 0 or not math.isfinite(r.sd)):
        return f"{title}: identical in every cell (B − A = 0 in all {r.n})"
    direction = "lower" if r.diff < 0 else "higher"
    better = (r.diff < 0) == lower_better
    sig = (
        f"significant after Holm (p = {r.p_holm:.2g}); B is {'better' if better else 'worse'}"
        if r.significant
        else f"not significant after Holm (p = {r.p_holm:.2g})"
    )
    return f"{title}: B {direction} by {_num(abs(r.diff), unit)} ({ci}, d_z = {r.dz:.2f}), {sig}"
