"""The candidate generator: top-K candidate assignments per available courier.

Every consumer (heuristics, log writing, training, the service) builds its action space here, so a
courier's K candidates mean the same thing everywhere. Candidates are ranked per courier by the
earliest pickup instant they allow, ties broken by the travel time to the restaurant, then by the
larger bundle, then by the lower bundle index (so no list depends on a sort's internals). With
``cover`` > 0 the last ``cover`` slots first go to orders that no courier's other slots list (oldest
order first, each to the courier that could pick it up earliest), so under load an order far from
every courier still reaches some courier's list instead of expiring unseen.
With ``lookahead`` > 0, couriers that will be free within that many minutes hold candidates too (from
where and when they will be free); their picks only reserve orders (:func:`dispatch.assemble.to_action`
drops them from the executed action), so a courier about to be free near a restaurant can keep a far
idle courier from being committed to it. With ``defer`` > 0, a free courier whose pick it would reach
``defer`` or more minutes before the food is ready waits instead (:func:`dispatch.assemble.assemble`),
the order held from the others this epoch, as ``reyes`` commits a courier only when waiting would
delay the pickup.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dispatch.kernels import cover, rank_keys
from dispatch.routes import Bundles, RouteTimes, make_bundles, route_times, sequence_bundles
from dispatch.snapshot import BoolArray, IntArray, Snapshot

MAX_LOOKAHEAD = 120


@dataclass(frozen=True, slots=True)
class CandidateConfig:
    """How candidates are built; part of a policy's contract (recorded in every model manifest)."""

    k: int = 16  # candidates kept per courier (0: every feasible one, as the heuristics use)
    max_bundle_size: int = 2
    max_ready_gap: int = 15
    # Slots of the K kept for orders that would otherwise be in nobody's list (0: plain top-K).
    cover: int = 0
    # Minutes ahead: couriers that will be free within them are agents too. What such a courier picks
    # is reserved for it (no other courier takes it this epoch) but not executed (0: idle couriers only).
    lookahead: int = 0
    # Minutes: a free courier whose pick it would reach at least this early before the food is ready is
    # not committed yet; it waits, and is decided again next epoch (0: every pick is committed at once).
    defer: int = 0

    def __post_init__(self) -> None:
        for name in ("k", "max_bundle_size", "max_ready_gap", "cover", "lookahead", "defer"):
            value = getattr(self, name)
            # A manifest is JSON: 15.5 or true would otherwise pass the range checks and break slicing later.
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{name}: {value!r} is not an integer")
            object.__setattr__(self, name, int(value))  # a numpy integer would not survive json.dumps
        if self.k < 0 or self.max_bundle_size < 1 or self.max_ready_gap < 0:
            raise ValueError(
                f"k, max_bundle_size, max_ready_gap: {self.k}, {self.max_bundle_size}, {self.max_ready_gap} "
                "must be >= 0 (0: every candidate), >= 1 and >= 0"
            )
        if self.cover < 0 or (self.cover and self.cover >= self.k):
            raise ValueError(f"cover: {self.cover} must be >= 0 and below k ({self.k})")
        if not 0 <= self.lookahead <= MAX_LOOKAHEAD:
            raise ValueError(f"lookahead: {self.lookahead} must be between 0 and {MAX_LOOKAHEAD} minutes")
        if not 0 <= self.defer <= MAX_LOOKAHEAD:
            raise ValueError(f"defer: {self.defer} must be between 0 and {MAX_LOOKAHEAD} minutes")

    def to_dict(self) -> dict[str, int]:
        """The fields for a manifest; ``cover``, ``lookahead`` and ``defer`` only when set, so runtimes that
        predate them still read manifests that do not use them."""
        out = {"k": self.k, "max_bundle_size": self.max_bundle_size, "max_ready_gap": self.max_ready_gap}
        extra = {"cover": self.cover, "lookahead": self.lookahead, "defer": self.defer}
        return out | {key: value for key, value in extra.items() if value}


@dataclass(frozen=True)
class CandidateSet:
    """Per-agent candidate bundles: ``bundle[i, k]`` indexes ``bundles`` (or -1 where masked)."""

    agents: IntArray
    bundles: Bundles
    bundle: IntArray
    mask: BoolArray
    times: RouteTimes
    # Agents that may be committed now; the others only reserve (None: every agent, no lookahead).
    committable: BoolArray | None = None
    # CandidateConfig.defer: picks reached this many minutes or more before the food is ready become waits.
    defer: int = 0

    @property
    def n_agents(self) -> int:
        """Number of agents (available couriers) holding candidates."""
        return int(self.agents.shape[0])

    @property
    def k(self) -> int:
        """Candidate slots per agent (the padded width)."""
        return int(self.bundle.shape[1])

    def take(self, values: np.ndarray) -> np.ndarray:
        """Gather an (agents, bundles) array at the candidate slots, shape (agents, K)."""
        safe = np.where(self.mask, self.bundle, 0)
        if values.shape[1] == 0:
            return np.zeros(self.bundle.shape, dtype=values.dtype)
        return np.take_along_axis(values, safe, axis=1)


def generate(
    snapshot: Snapshot,
    config: CandidateConfig = CandidateConfig(),
    agents: IntArray | None = None,
    bundles: Bundles | None = None,
) -> CandidateSet:
    """Top-K feasible candidate bundles for each agent (default: every available courier)."""
    if agents is None:
        agents = np.flatnonzero(snapshot.available(config.lookahead)).astype(np.int64)
    committable = snapshot.available()[agents] if config.lookahead else None
    if bundles is None:
        bundles = make_bundles(snapshot, max_size=config.max_bundle_size, max_ready_gap=config.max_ready_gap)
    times = route_times(snapshot, agents, bundles)
    n, b = times.shape
    k = min(config.k, b) if config.k > 0 else b
    if n == 0 or b == 0:
        empty = np.zeros((n, max(k, 0)), dtype=np.int64)
        return CandidateSet(agents, bundles, empty - 1, empty.astype(bool), times, committable, config.defer)
    # Lexicographic key: pickup, then travel, then larger bundle first, then lower bundle index;
    # infeasible last. Top-K in one compiled pass per row; every bundle (the heuristics) by a stable sort.
    if k < b:
        chosen, mask = times.top_k(k)
    else:
        key = rank_keys(times.pickup, times.travel_to_restaurant, times.feasible, bundles.size)
        chosen = np.argsort(key, axis=1, kind="stable")
        mask = np.take_along_axis(times.feasible, chosen, axis=1)
    if config.cover and k < b:
        key = rank_keys(times.pickup, times.travel_to_restaurant, times.feasible, bundles.size)
        singles = np.flatnonzero(bundles.size == 1)
        oldest = singles[np.argsort(bundles.placement_min[singles], kind="stable")]
        chosen = cover(key, times.feasible, chosen, k - config.cover, oldest, bundles.orders)
        mask = np.take_along_axis(times.feasible, np.maximum(chosen, 0), axis=1) & (chosen >= 0)  # -1: empty
    chosen = np.where(mask, chosen, -1)
    return CandidateSet(agents, bundles, chosen, mask, times, committable, config.defer)


def with_bundles(
    snapshot: Snapshot, groups: list[tuple[int, ...]], config: CandidateConfig
) -> tuple[Bundles, IntArray]:
    """The standard bundles plus the given drop-off sequences (deduplicated); returns their rows too."""
    base = make_bundles(snapshot, max_size=config.max_bundle_size, max_ready_gap=config.max_ready_gap)
    seqs = [base.members(b) for b in range(base.n)]
    row_of = {s: i for i, s in enumerate(seqs)}
    rows = []
    for g in groups:
        if g not in row_of:
            row_of[g] = len(seqs)
            seqs.append(g)
        rows.append(row_of[g])
    return sequence_bundles(snapshot, seqs), np.array(rows, dtype=np.int64)


def force(cands: CandidateSet, agent_row: int, bundle: int) -> int:
    """Make ``bundle`` one of agent ``agent_row``'s candidates (replacing its last slot); returns the slot.

    Used when logging a behaviour policy whose choice lies outside the agent's top-K, so every logged
    action is a slot of the logged candidate list.
    """
    row = cands.bundle[agent_row]
    hit = np.flatnonzero(row == bundle)
    if hit.size:
        return int(hit[0])
    free = np.flatnonzero(~cands.mask[agent_row])
    slot = int(free[0]) if free.size else cands.k - 1
    row[slot] = bundle
    cands.mask[agent_row, slot] = bool(cands.times.feasible[agent_row, bundle])
    return slot
