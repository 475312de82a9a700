"""A PettingZoo ``ParallelEnv`` over the MDRP engine: couriers are agents, one step per decision epoch.

Agents. ``possible_agents`` is every courier id of the instance, in instance order. ``agents`` is the
couriers of the engine's current snapshot (on duty, or starting within ``SimConfig.courier_lookahead``
minutes), in instance order. A courier leaves (``terminations[c] = True``, all-zero final observation)
at the first epoch at or after its off-time; it never comes back. When the engine is done every live
courier terminates and ``agents`` becomes empty. Truncations are always False: a day always ends.

Observation of a courier: float32 vector ``agent features (len(AGENT_FEATURES))`` followed by its K
candidate slots' features (``K * len(CANDIDATE_FEATURES)``, slot-major), exactly as
:func:`dispatch.features.encode` computes them over :func:`dispatch.candidates.generate`'s candidate
set of the available couriers; empty or masked slots are zero. A courier that is not available (busy,
or not yet on duty) gets its agent features and zero candidate features.

Action: ``Discrete(K + 1)``; ``0..K-1`` picks a candidate slot, ``K`` is wait. ``infos[c]["action_mask"]``
(int8, length K+1) marks the legal actions: feasible candidate slots and wait (always legal); a
courier that is not available may only wait. A masked choice raises :class:`IllegalActionError` naming
the courier (``illegal_action="raise"``, the default: the simulator rejects bad actions loudly), or
becomes wait with ``infos[c]["illegal"] = True`` (``illegal_action="wait"``; PettingZoo's own
``parallel_api_test`` and ``parallel_seed_test`` sample actions without masks, so they need this mode).

Conflict rule. Couriers choose independently, so two may pick bundles sharing an order. Chosen
candidates are taken in ascending order of their pickup instant, ties by the courier's position in
``possible_agents``; a choice sharing an order with one already taken becomes wait, and that
courier's next info says ``lost_conflict = True``. This is "the courier who picks up first gets it".

Reward: the engine's shared step reward (:class:`simulator.engine.RewardConfig`), the same for every
courier in the step's dicts. Epochs with no courier in the snapshot are stepped with the empty joint
action inside :meth:`reset`/:meth:`step` (nobody can act); their reward is added to the next reward
returned, so the rewards returned over an episode sum to the engine's total.

State (:meth:`state`): a fixed-size float32 summary of the whole system, see :data:`STATE_FEATURES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import gymnasium
import numpy as np
from numpy.typing import NDArray
from pettingzoo import ParallelEnv

from dispatch.candidates import CandidateConfig, CandidateSet, generate
from dispatch.features import AGENT_FEATURES, CANDIDATE_FEATURES, Encoded, encode
from dispatch.snapshot import Assignment, JointAction, Snapshot
from simulator.engine import Engine, RewardConfig, SimConfig, StepOutcome
from simulator.instance import Instance
from simulator.sources import load_spec

AgentID = str
ObsArray = NDArray[np.float32]

STATE_FEATURES = (
    "time_of_day/1440",
    "episode_progress",
    "open_orders/100",
    "shown_couriers/100",
    "on_duty_couriers/100",
    "available_couriers/100",
    "busy_fraction_of_on_duty",
    "mean_busy_minutes_left/10",
    "mean_open_order_age/10",
    "max_open_order_age/10",
    "open_orders_ready_fraction",
    "min_minutes_to_max_ctd/10",
    "available_with_candidate_fraction",
    "mean_feasible_candidates/K",
    "distinct_candidate_bundles/100",
    "orders_placed_fraction",
    "orders_assigned_fraction",
    "orders_expired_fraction",
    *(f"mean_best_candidate:{name}" for name in CANDIDATE_FEATURES),
)
"""Meaning of each entry of :meth:`DispatchParallelEnv.state`.

Counts and fractions are over the current snapshot unless stated; "order fractions" are over all
orders of the day. ``mean_best_candidate:*`` averages each courier's slot-0 (best-ranked) candidate
features over available couriers holding one (zero when none). ``min_minutes_to_max_ctd`` is the
least time any open order has left before it expires (``max_ctd`` when no order is open).
"""


class IllegalActionError(ValueError):
    """An agent chose a masked action, an out-of-range action, or is not a live agent."""


class DispatchParallelEnv(ParallelEnv[AgentID, ObsArray, int]):
    """Couriers of one MDRP day as PettingZoo parallel agents (see the module docstring).

    After each :meth:`reset`/:meth:`step`, ``engine`` is the live :class:`Engine` (its ``records`` feed
    :func:`simulator.run.outcome`), ``last_action`` the conflict-free joint action executed and
    ``last_outcomes`` the engine outcomes of the epochs advanced (the first is the stepped epoch, the
    rest skipped empty ones; after reset only skipped ones). ``wait_action`` is K.
    """

    metadata: dict[str, Any] = {  # noqa: RUF012 - the base class declares it a plain attribute
        "name": "mdrp_dispatch_v0",
        "render_modes": [],
        "is_parallelizable": True,
    }

    def __init__(
        self,
        instance: Instance | str | Path,
        sim_config: SimConfig | None = None,
        candidate_config: CandidateConfig | None = None,
        reward_config: RewardConfig | None = None,
        illegal_action: Literal["raise", "wait"] = "raise",
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode {render_mode!r} is not supported; only None")
        if illegal_action not in ("raise", "wait"):
            raise ValueError(f"illegal_action must be 'raise' or 'wait', not {illegal_action!r}")
        self.instance = instance if isinstance(instance, Instance) else load_spec(str(instance))
        self.sim_config = sim_config or SimConfig()
        self.candidate_config = candidate_config or CandidateConfig()
        self.reward_config = reward_config or RewardConfig()
        self.k = self.candidate_config.k
        if self.candidate_config.lookahead:
            # Its agents would include couriers not free yet, whose actions the engine cannot execute.
            raise ValueError("CandidateConfig.lookahead is not supported by the PettingZoo environment (use 0)")
        if self.candidate_config.defer:
            # The agents' actions are executed as given; deferring is a decoder's step, which this env has none of.
            raise ValueError("CandidateConfig.defer is not supported by the PettingZoo environment (use 0)")
        if self.k < 1:
            # k <= 0 means "all bundles" to the generator, which has no fixed width.
            raise ValueError(f"CandidateConfig.k must be at least 1 for a fixed action space, not {self.k}")
        self.illegal_action = illegal_action
        self.render_mode = render_mode
        self.wait_action = self.k
        self.n_agent_features = len(AGENT_FEATURES)
        self.n_candidate_features = len(CANDIDATE_FEATURES)
        self.obs_dim = self.n_agent_features + self.k * self.n_candidate_features
        self.possible_agents: list[AgentID] = list(self.instance.courier_ids)
        self.agents: list[AgentID] = []
        self._agent_index = {a: i for i, a in enumerate(self.possible_agents)}
        # One space object per courier: PettingZoo seeds (and checks the identity of) each agent's space.
        box = gymnasium.spaces.Box
        self._observation_spaces = {a: box(-np.inf, np.inf, (self.obs_dim,), np.float32) for a in self.possible_agents}
        self._action_spaces = {a: gymnasium.spaces.Discrete(self.k + 1) for a in self.possible_agents}
        self.observation_spaces = self._observation_spaces
        self.action_spaces = self._action_spaces
        self.state_space = gymnasium.spaces.Box(-np.inf, np.inf, (len(STATE_FEATURES),), np.float32)
        self.engine: Engine | None = None
        self.last_action: JointAction = JointAction()
        self.last_outcomes: list[StepOutcome] = []
        self._pending_reward = 0.0
        self._clear_epoch()

    def observation_space(self, agent: AgentID) -> gymnasium.spaces.Space[Any]:
        """The (fixed) observation space of a courier."""
        return self._observation_spaces[agent]

    def action_space(self, agent: AgentID) -> gymnasium.spaces.Space[Any]:
        """The (fixed) action space of a courier: K candidate slots, then wait."""
        return self._action_spaces[agent]

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[AgentID, ObsArray], dict[AgentID, dict[str, Any]]]:
        """Start the day over; ``seed`` seeds the action spaces (the engine is deterministic)."""
        if seed is not None:
            for i, a in enumerate(self.possible_agents):
                self._action_spaces[a].seed(seed + i)
        self.engine = Engine(self.instance, self.sim_config, self.reward_config)
        self.last_action = JointAction()
        self.last_outcomes = []
        self._pending_reward = self._skip_empty_epochs()
        self._observe()
        infos = {a: self._info(a) for a in self.agents}
        return {a: self._obs[self._row[a]].copy() for a in self.agents}, infos

    def step(
        self, actions: dict[AgentID, int]
    ) -> tuple[
        dict[AgentID, ObsArray],
        dict[AgentID, float],
        dict[AgentID, bool],
        dict[AgentID, bool],
        dict[AgentID, dict[str, Any]],
    ]:
        """Apply every courier's choice (missing couriers wait) and advance one decision epoch."""
        engine = self._require_engine()
        if not self.agents:
            raise RuntimeError("step() called with no live agents: the day is over, call reset()")
        joint, lost, illegal = self._joint_action(actions)
        outcome = engine.step(joint)
        self.last_action = joint
        self.last_outcomes = [outcome]
        reward = self._pending_reward + outcome.reward + self._skip_empty_epochs()
        self._pending_reward = 0.0
        before = self.agents
        self._observe()
        now = set(self.agents)
        done = engine.done
        # Dict keys: the couriers that acted plus those that just joined, as PettingZoo expects.
        prev = set(before)
        keys = before + [a for a in self.agents if a not in prev]
        keys.sort(key=self._agent_index.__getitem__)
        zero = np.zeros(self.obs_dim, dtype=np.float32)
        obs = {a: self._obs[self._row[a]].copy() if a in now else zero.copy() for a in keys}
        rewards = dict.fromkeys(keys, float(reward))
        terminations = {a: done or a not in now for a in keys}
        truncations = dict.fromkeys(keys, False)
        infos = {a: self._info(a, lost_conflict=a in lost, illegal=a in illegal) for a in keys}
        return obs, rewards, terminations, truncations, infos

    def state(self) -> NDArray[np.float32]:
        """The global state summary of the current epoch (see :data:`STATE_FEATURES`)."""
        engine = self._require_engine()
        snap, cands, enc = self._snap, self._cands, self._enc
        assert snap is not None and cands is not None and enc is not None
        inst, t, p = self.instance, snap.time, snap.params
        avail = snap.available()
        on_duty = (snap.courier_on_time <= t) & (snap.courier_off_time > t)
        busy = on_duty & (snap.courier_free_at > t)
        age = t - snap.order_placement
        start = int(inst.order_placement.min()) if inst.n_orders else 0
        span = max(engine.end - start, 1)
        n_orders = max(inst.n_orders, 1)
        has_cand = cands.mask.any(axis=1) if cands.mask.shape[1] else np.zeros(cands.n_agents, dtype=bool)
        best = enc.cand[has_cand, 0, :].mean(axis=0) if has_cand.any() else np.zeros(len(CANDIDATE_FEATURES))
        head = [
            (t % 1440) / 1440.0,
            min(max((t - start) / span, 0.0), 1.0),
            snap.n_orders / 100.0,
            snap.n_couriers / 100.0,
            on_duty.sum() / 100.0,
            avail.sum() / 100.0,
            busy.sum() / max(int(on_duty.sum()), 1),
            float((snap.courier_free_at[busy] - t).mean()) / 10.0 if busy.any() else 0.0,
            float(age.mean()) / 10.0 if snap.n_orders else 0.0,
            float(age.max()) / 10.0 if snap.n_orders else 0.0,
            float((snap.order_ready <= t).mean()) if snap.n_orders else 0.0,
            float((snap.order_placement + p.max_ctd - t).min()) / 10.0 if snap.n_orders else p.max_ctd / 10.0,
            float(has_cand.mean()) if cands.n_agents else 0.0,
            float(cands.mask.sum(axis=1).mean()) / self.k if cands.n_agents else 0.0,
            np.unique(cands.bundle[cands.mask]).size / 100.0,
            float((inst.order_placement <= t).sum()) / n_orders,
            float((engine.records.order_courier >= 0).sum()) / n_orders,
            float(engine.expired.sum()) / n_orders,
        ]
        return np.concatenate([np.asarray(head, dtype=np.float32), best.astype(np.float32)])

    def candidates(self, agent: AgentID) -> list[tuple[tuple[str, ...], int] | None]:
        """A live courier's K slots as (order ids in drop-off sequence, pickup minute), None if empty."""
        cands = self._cands
        if cands is None or agent not in self.agents:
            raise IllegalActionError(f"courier {agent!r} is not a live agent")
        assert self._snap is not None
        row = self._row[agent]
        out: list[tuple[tuple[str, ...], int] | None] = [None] * self.k
        r = int(self._cand_row[row])
        if r < 0:
            return out
        for slot in np.flatnonzero(self._mask[row, : self.k]):
            b = int(cands.bundle[r, slot])
            orders = tuple(self._snap.order_ids[o] for o in cands.bundles.members(b))
            out[int(slot)] = (orders, int(cands.times.pickup[r, b]))
        return out

    def render(self) -> None:
        """Rendering is not supported (``render_mode`` is always None)."""
        return None

    def close(self) -> None:
        """Nothing to release."""
        return None

    # --- internals -------------------------------------------------------------------------------

    def _require_engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("call reset() before step() or state()")
        return self.engine

    def _clear_epoch(self) -> None:
        self._snap: Snapshot | None = None
        self._cands: CandidateSet | None = None
        self._enc: Encoded | None = None
        self._row: dict[AgentID, int] = {}
        self._obs = np.zeros((0, self.obs_dim), dtype=np.float32)
        self._mask = np.zeros((0, self.k + 1), dtype=np.int8)
        self._avail = np.zeros(0, dtype=bool)
        self._cand_row = np.zeros(0, dtype=np.int64)

    def _skip_empty_epochs(self) -> float:
        """Step epochs nobody can act in (no courier shown) with the empty action; their summed reward."""
        engine = self._require_engine()
        total = 0.0
        while not engine.done and engine.snapshot().n_couriers == 0:
            out = engine.step(JointAction())
            self.last_outcomes.append(out)
            total += out.reward
        return total

    def _observe(self) -> None:
        """Snapshot, candidates and features of the current epoch; sets ``agents``."""
        engine = self._require_engine()
        snap = engine.snapshot()
        cands = generate(snap, self.candidate_config)
        enc = encode(snap, cands)
        n, width = snap.n_couriers, cands.k
        avail = np.zeros(n, dtype=bool)
        avail[cands.agents] = True
        cand_row = np.full(n, -1, dtype=np.int64)
        cand_row[cands.agents] = np.arange(cands.n_agents)
        obs = np.zeros((n, self.obs_dim), dtype=np.float32)
        mask = np.zeros((n, self.k + 1), dtype=np.int8)
        mask[:, self.k] = 1
        a_feat = self.n_agent_features
        if cands.n_agents:
            obs[cands.agents, :a_feat] = enc.agent
            flat = enc.cand.reshape(cands.n_agents, width * self.n_candidate_features)
            obs[cands.agents, a_feat : a_feat + flat.shape[1]] = flat
            mask[cands.agents, :width] = cands.mask
        others = np.flatnonzero(~avail)
        if others.size:
            # encode() only covers the candidate set's agents; a zero-width set gives the agent features
            # of the unavailable couriers with the same code, and encode() never reads ``times`` then.
            empty = CandidateSet(
                others.astype(np.int64),
                cands.bundles,
                np.zeros((others.size, 0), np.int64),
                np.zeros((others.size, 0), bool),
                cands.times,
            )
            obs[others, :a_feat] = encode(snap, empty).agent
        self._snap, self._cands, self._enc = snap, cands, enc
        self._obs, self._mask, self._avail, self._cand_row = obs, mask, avail, cand_row
        self._row = {c: i for i, c in enumerate(snap.courier_ids)}
        self.agents = [] if engine.done else list(snap.courier_ids)

    def _info(self, agent: AgentID, lost_conflict: bool = False, illegal: bool = False) -> dict[str, Any]:
        """Per-courier info: its legal-action mask, availability and what became of its last choice."""
        row = self._row.get(agent)
        if row is None or agent not in self.agents:
            mask = np.zeros(self.k + 1, dtype=np.int8)
            mask[self.k] = 1
            available = False
        else:
            mask = self._mask[row].copy()
            available = bool(self._avail[row])
        return {"action_mask": mask, "available": available, "lost_conflict": lost_conflict, "illegal": illegal}

    def _joint_action(self, actions: dict[AgentID, int]) -> tuple[JointAction, set[AgentID], set[AgentID]]:
        """Validate the choices and resolve conflicts (earliest pickup first, ties by courier order)."""
        cands = self._cands
        assert cands is not None
        live = set(self.agents)
        illegal: set[AgentID] = set()
        chosen: list[tuple[int, int, AgentID, int]] = []  # (pickup, agent index, agent, bundle)
        for agent, raw in actions.items():
            if agent not in live:
                raise IllegalActionError(f"courier {agent!r} is not a live agent at t={self._time()}")
            try:
                a = int(raw)
            except (TypeError, ValueError):
                raise IllegalActionError(f"courier {agent}: action {raw!r} is not an integer") from None
            if not 0 <= a <= self.k:
                raise IllegalActionError(f"courier {agent}: action {a} is outside 0..{self.k} (K = wait)")
            if a == self.k:
                continue
            row = self._row[agent]
            if not self._mask[row, a]:
                if self.illegal_action == "raise":
                    why = "it is not available (busy or not on duty)" if not self._avail[row] else "masked"
                    t = self._time()
                    raise IllegalActionError(f"courier {agent}: action {a} is illegal at t={t}: {why}")
                illegal.add(agent)
                continue
            r = int(self._cand_row[row])
            b = int(cands.bundle[r, a])
            chosen.append((int(cands.times.pickup[r, b]), self._agent_index[agent], agent, b))
        chosen.sort()
        used: set[int] = set()
        lost: set[AgentID] = set()
        out: list[Assignment] = []
        for _, _, agent, b in chosen:
            members = cands.bundles.members(b)
            if used.intersection(members):
                lost.add(agent)
                continue
            used.update(members)
            out.append(Assignment(self._row[agent], members))
        return JointAction(tuple(out)), lost, illegal

    def _time(self) -> int:
        return self._snap.time if self._snap is not None else -1
