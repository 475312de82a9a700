"""Off-policy estimates of a target policy's value from logged behaviour probabilities.

**Estimand.** The per-decision value V(π) = E_t[ E_{a∼π(·|s_t)} r(s_t, a) ]: the mean shared reward
of one decision epoch when the target π acts at the states the logging policy μ visited. It is a
one-step (contextual-bandit) quantity: it does not see how π would have changed later states; the
counterfactual re-simulation answers that question, with the simulator as the model.

**Weights.** Agents act one after another in a random order (the log keeps it as each courier's
``rank``). Both μ and the targets here draw that order uniformly, so the order cancels in the ratio
and the joint weight is w_t = Π_i π(a_i | s, a_<i) / μ(a_i | s, a_<i) in the logged order: the sum
of per-courier log-ratios, exponentiated. Its variance grows geometrically with the number of
couriers acting together (the limit of every importance-sampling estimator with many agents);
the effective sample size (Σw)²/Σw² is reported so the reader sees it. Importance weighting also
needs support: every action the target may take must be one the logging policy could take. A
target whose candidates differ (another heuristic's bundles) breaks it; since E_μ[w] equals the
target's probability mass inside the logged support, a mean weight whose interval lies below 1
flags it (``support_ok``).

**Estimators** over the T logged decisions (t-quantile intervals on the per-decision terms):
IPS mean(w·r); self-normalised IPS Σw·r / Σw (delta-method interval); doubly robust
mean(q̂_π(s) + w·(r − q̂(s, a))) with a ridge reward model q̂ on joint-action features, cross-fitted
by day, and q̂_π(s) averaged over actions sampled from π. Decisions of one day are not independent;
the intervals treat them as if they were, so read them as optimistic when few days are logged.

**Targets** expose probabilities through :class:`TargetPolicy`: ``prepare`` a snapshot once,
``logp`` of the logged joint action (in the logged order), ``sample`` a joint action. Behaviour
recipes implement it exactly; a deterministic heuristic is the ε = 0 recipe (weight 0 off its
choice, so it needs logs where μ often agrees with it).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy import stats as sps

from dispatch import assemble
from dispatch.candidates import CandidateConfig, CandidateSet, force, generate, with_bundles
from dispatch.policy import Policy
from dispatch.routes import route_times, sequence_bundles
from dispatch.snapshot import IntArray, JointAction, Snapshot
from simulator.engine import Engine, EpisodeRecords, RewardConfig, SimConfig
from simulator.logs.dataset import LogError, LoggedDecision
from simulator.replay.days import ReplayDay

OPE_STREAM = 0x0BE
TRUTH_STREAM = 0x7A0
FEATURES = ("bias", "orders_assigned", "sum_ctd/10", "expiring_unassigned")


class TargetPolicy(Protocol):
    """A policy whose probability of any logged joint action can be computed."""

    name: str

    def reset(self, seed: int) -> None:
        """Start a day (seeds the heuristic, if any)."""

    def prepare(self, snapshot: Snapshot) -> Any:
        """Whatever the policy needs once per snapshot (candidates, its proposal)."""

    def logp(self, prepared: Any, logged: LoggedDecision) -> float:
        """log π(logged joint action | snapshot), agents acting in the logged order (-inf: impossible)."""
        ...

    def sample(self, prepared: Any, rng: np.random.Generator) -> JointAction:
        """One joint action drawn from π at the prepared snapshot."""
        ...


@dataclass(frozen=True)
class Prepared:
    """A target's candidates and its proposal (slot per agent row, or WAIT) at one snapshot."""

    snapshot: Snapshot
    cands: CandidateSet
    target: IntArray


class RecipeTarget:
    """The ε-mixture around a heuristic (a behaviour recipe; ε = 0: the heuristic itself)."""

    def __init__(self, name: str, heuristic: str | None, epsilon: float, candidates: CandidateConfig) -> None:
        from simulator.heuristics import make

        if not 0 <= epsilon <= 1:
            raise ValueError(f"target {name!r}: epsilon must lie in [0, 1]")
        if heuristic is None and epsilon < 1:
            raise ValueError(f"target {name!r}: without a heuristic the mixture must be uniform (epsilon 1)")
        self.name, self.epsilon, self.candidates = name, epsilon, candidates
        self.base: Policy | None = make(heuristic) if heuristic else None

    def reset(self, seed: int) -> None:
        """Reset the heuristic for a new day."""
        if self.base is not None:
            self.base.reset(seed)

    def prepare(self, snapshot: Snapshot) -> Prepared:
        """The same candidates and proposal as :class:`simulator.behaviour.BehaviourPolicy` builds."""
        proposal = self.base.decide(snapshot).action.assignments if self.base is not None else ()
        bundles, rows = with_bundles(snapshot, [a.orders for a in proposal], self.candidates)
        cands = generate(snapshot, self.candidates, bundles=bundles)
        target = np.full(cands.n_agents, assemble.WAIT, dtype=np.int64)
        row_of = {int(c): i for i, c in enumerate(cands.agents)}
        for a, b in zip(proposal, rows, strict=True):
            target[row_of[a.courier]] = force(cands, row_of[a.courier], int(b))
        return Prepared(snapshot, cands, target)

    def logp(self, prepared: Prepared, logged: LoggedDecision) -> float:
        """Exact log-probability of the logged joint action, agents in the logged order."""
        cands = prepared.cands
        row_of = {int(c): i for i, c in enumerate(cands.agents)}
        taken = {a.courier: a.orders for a in logged.action.assignments}
        lc = logged.candidates
        ranked = np.argsort(np.where(logged.rank >= 0, logged.rank, np.arange(lc.n_agents)), kind="stable")
        used: set[int] = set()
        total = 0.0
        for r in ranked:
            courier = int(lc.agents[r])
            if courier not in row_of:
                return -math.inf
            i = row_of[courier]
            legal = [
                int(s)
                for s in np.flatnonzero(cands.mask[i])
                if not used.intersection(cands.bundles.members(int(cands.bundle[i, s])))
            ]
            n_legal = len(legal) + 1
            goal = int(prepared.target[i]) if int(prepared.target[i]) in legal else assemble.WAIT
            orders = taken.get(courier)
            # Slots of the target holding exactly the logged orders (WAIT when the courier waited).
            hits = (
                [assemble.WAIT]
                if orders is None
                else [s for s in legal if cands.bundles.members(int(cands.bundle[i, s])) == orders]
            )
            p = sum((1 - self.epsilon) * (h == goal) + self.epsilon / n_legal for h in hits)
            if p <= 0:
                return -math.inf  # the target never takes this action here
            total += math.log(p)
            if orders:
                used.update(orders)
        return total

    def sample(self, prepared: Prepared, rng: np.random.Generator) -> JointAction:
        """A joint action drawn exactly as the behaviour policy would draw it."""
        order = rng.permutation(prepared.cands.n_agents)
        out = assemble.sequential_mixture(
            prepared.cands, prepared.target, self.epsilon, order, rng if self.epsilon > 0 else None
        )
        return out.action


def resolve_target(spec: str, candidates: CandidateConfig | None = None) -> RecipeTarget:
    """A target with probabilities: a recipe, ``recipe:greedy``, a heuristic (ε = 0) or ``heuristic@ε``."""
    from simulator.behaviour import RECIPES
    from simulator.heuristics import NAMES
    from simulator.policies import GREEDY_SUFFIX, PolicySpecError

    cfg = candidates or CandidateConfig()
    base, _, eps_text = spec.partition("@")
    if spec in RECIPES:
        r = RECIPES[spec]
        return RecipeTarget(spec, r.heuristic, r.epsilon, cfg)
    if spec.endswith(GREEDY_SUFFIX) and spec.removesuffix(GREEDY_SUFFIX) in RECIPES:
        r = RECIPES[spec.removesuffix(GREEDY_SUFFIX)]
        if r.heuristic is not None:
            return RecipeTarget(spec, r.heuristic, 0.0, cfg)
    if base in NAMES and base != "random":
        try:
            eps = float(eps_text) if eps_text else 0.0
        except ValueError:
            raise PolicySpecError(f"target {spec!r}: {eps_text!r} is not a number") from None
        return RecipeTarget(spec, base, eps, cfg)
    raise PolicySpecError(
        f"policy {spec!r} exposes no action probabilities; off-policy estimates take a behaviour recipe "
        f"({', '.join(RECIPES)}), RECIPE{GREEDY_SUFFIX}, or a heuristic (nearest, assignment, reyes) "
        "optionally as HEURISTIC@EPSILON"
    )


def features(snapshot: Snapshot, action: JointAction, interval: int) -> list[float]:
    """Joint-action features of the reward model (FEATURES)."""
    assigned: set[int] = set()
    ctd = 0.0
    for a in action.assignments:
        times = route_times(snapshot, np.array([a.courier]), sequence_bundles(snapshot, [a.orders]))
        ctd += float(times.sum_ctd[0, 0])
        assigned.update(a.orders)
    deadline = snapshot.order_placement + snapshot.params.max_ctd < snapshot.time + interval
    expiring = sum(1 for o in np.flatnonzero(deadline) if int(o) not in assigned)
    return [1.0, float(len(assigned)), ctd / 10.0, float(expiring)]


def _clone(e: Engine) -> Engine:
    """An engine copy whose ``step`` leaves the original untouched (the instance is shared)."""
    c = copy.copy(e)
    r = e.records
    c.records = EpisodeRecords(
        r.instance,
        list(r.assignments),
        list(r.moves),
        r.order_courier.copy(),
        r.order_assigned.copy(),
        r.order_pickup.copy(),
        r.order_dropoff.copy(),
        r.courier_work.copy(),
    )
    c.courier_xy, c.courier_free_at = e.courier_xy.copy(), e.courier_free_at.copy()
    c.courier_label, c.expired = list(e.courier_label), e.expired.copy()
    return c


def ope_day(
    day: ReplayDay, target: TargetPolicy, samples: int, reward: RewardConfig, truth_samples: int = 0
) -> dict[str, Any]:
    """Per-decision reward, log-probabilities and reward-model features of one logged day.

    With ``truth_samples`` > 0 it also measures the estimand's ground truth in the simulator: at
    every logged state, the mean reward of actions sampled from the target (engine copies).
    """
    if day.logged is None:
        raise LogError(f"day {day.name}: off-policy estimates need a logged day with behaviour probabilities")
    target.reset(day.seed)
    rng = np.random.default_rng(np.random.SeedSequence([day.seed, OPE_STREAM]))
    truth_rng = np.random.default_rng(np.random.SeedSequence([day.seed, TRUTH_STREAM]))
    engine = Engine(day.instance(), SimConfig(day.interval), reward) if truth_samples else None
    rows: dict[str, list[Any]] = {k: [] for k in ("reward", "logmu", "logpi", "phi", "phi_pi", "truth")}
    for d in day.logged.decisions():
        prep = target.prepare(d.snapshot)
        rows["reward"].append(d.reward)
        rows["logmu"].append(float(d.logp.sum()))
        lp = target.logp(prep, d)
        rows["logpi"].append(lp if math.isfinite(lp) else None)
        rows["phi"].append(features(d.snapshot, d.action, day.interval))
        rows["phi_pi"].append([features(d.snapshot, target.sample(prep, rng), day.interval) for _ in range(samples)])
        if engine is not None:
            engine.snapshot()
            rewards = [_clone(engine).step(target.sample(prep, truth_rng)).reward for _ in range(truth_samples)]
            rows["truth"].append(float(np.mean(rewards)))
            step = engine.step(d.action)
            if abs(step.reward - d.reward) > 1e-6:
                raise LogError(f"day {day.name}: logged reward {d.reward} differs from the simulator's {step.reward}")
    return {"day": day.key, "name": day.name, **rows}


def _ci(terms: np.ndarray, level: float) -> tuple[float, float, float]:
    """Mean and t-interval of per-decision terms."""
    n = terms.size
    m = float(terms.mean())
    if n < 2:
        return m, float("nan"), float("nan")
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * float(terms.std(ddof=1)) / math.sqrt(n)
    return m, m - half, m + half


def _ridge(x: np.ndarray, y: np.ndarray, lam: float = 1e-3) -> np.ndarray:
    return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)


def estimate(days: list[dict[str, Any]], level: float = 0.95) -> dict[str, Any]:
    """Behaviour value, IPS, SNIPS and DR with intervals and weight diagnostics (truth when measured)."""
    r = np.concatenate([np.asarray(d["reward"], dtype=np.float64) for d in days])
    logmu = np.concatenate([np.asarray(d["logmu"], dtype=np.float64) for d in days])
    logpi = np.concatenate([np.array([-np.inf if v is None else v for v in d["logpi"]]) for d in days])
    w = np.exp(logpi - logmu)
    phi = [np.asarray(d["phi"], dtype=np.float64).reshape(-1, len(FEATURES)) for d in days]
    phi_pi = [np.asarray(d["phi_pi"], dtype=np.float64).reshape(len(d["phi"]), -1, len(FEATURES)) for d in days]
    rs = [np.asarray(d["reward"], dtype=np.float64) for d in days]
    # Cross-fitting: each day's reward model is fitted on the other days (on itself if it is alone).
    q_logged, q_pi = [], []
    for k in range(len(days)):
        others = [j for j in range(len(days)) if j != k] or [k]
        coef = _ridge(np.concatenate([phi[j] for j in others]), np.concatenate([rs[j] for j in others]))
        q_logged.append(phi[k] @ coef)
        q_pi.append((phi_pi[k] @ coef).mean(axis=1))
    ql, qp = np.concatenate(q_logged), np.concatenate(q_pi)
    out: dict[str, Any] = {"decisions": int(r.size), "days": len(days), "level": level}
    for name, terms in (("behaviour", r), ("ips", w * r), ("dr", qp + w * (r - ql)), ("dm", qp)):
        m, lo, hi = _ci(terms, level)
        out[name] = {"value": m, "low": lo, "high": hi}
    if w.sum() > 0:
        v = float((w * r).sum() / w.sum())
        _, lo, hi = _ci(w * (r - v) / w.mean(), level)
        out["snips"] = {"value": v, "low": v + lo, "high": v + hi}
    else:
        out["snips"] = {"value": float("nan"), "low": float("nan"), "high": float("nan")}
    wm, wlo, whi = _ci(w, level)
    out["weights"] = {
        "mean": wm,
        "mean_low": wlo,
        "mean_high": whi,
        # E_μ[w] = π(actions μ can take): an interval below 1 means the target puts mass where the log
        # has none, and IPS/SNIPS are then biased (DR only as good as its reward model there).
        "support_ok": bool(whi >= 1.0),
        "max": float(w.max()),
        "zero_share": float((w == 0).mean()),
        "ess": float(w.sum() ** 2 / (w**2).sum()) if (w**2).sum() > 0 else 0.0,
    }
    truths = [d["truth"] for d in days if d.get("truth")]
    if len(truths) == len(days):
        t = np.concatenate([np.asarray(x, dtype=np.float64) for x in truths])
        out["truth"] = float(t.mean())
        for name in ("ips", "snips", "dr", "dm"):
            out[name]["covers_truth"] = bool(out[name]["low"] <= out["truth"] <= out[name]["high"])
    return out
