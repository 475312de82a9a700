"""Bridge: two agents must cross a one-cell-wide passage in opposite directions; one has to yield.

Dynamics follow ``shared/reference/matrix-games.md``: actions stay/up/down/right/left; moves off the grid
or into a wall fail; two agents may not end in one cell nor swap cells (such moves fail); an agent at its
goal is done, leaves the grid and only has ``stay``. Shared reward: −w × mean distance to goals.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.games import PolicyFn
from training.offline.dataset import OfflineDataset

MOVES = ((0, 0), (-1, 0), (1, 0), (0, 1), (0, -1))  # stay, up, down, right, left
N_AGENTS = 2
N_ACTIONS = len(MOVES)


class BridgeGame:
    """The Bridge grid game with its optimal/mix datasets and a Monte-Carlo evaluator."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.gamma: float = float(spec["gamma"])
        self.grid = [list(row) for row in spec["grid"]]
        self.rows, self.cols = len(self.grid), len(self.grid[0])
        self.starts = [tuple(p) for p in spec["starts"]]
        self.goals = [tuple(p) for p in spec["goals"]]
        self.max_steps = int(spec["max_steps"])
        self.weight = float(spec["distance_weight"])
        self.eval_episodes = int(spec["eval_episodes"])
        self._free_cells = {cell: k for k, cell in enumerate(self._cells()[:-1])}  # the last entry is "done"
        self._tables: tuple[np.ndarray, np.ndarray] | None = None
        self._q: np.ndarray | None = None

    # --- dynamics -------------------------------------------------------------------------------
    def free(self, r: int, c: int) -> bool:
        """Whether (r, c) is on the grid and not a wall."""
        return 0 <= r < self.rows and 0 <= c < self.cols and self.grid[r][c] != "B"

    def step(self, pos: list[tuple[int, int] | None], joint: tuple[int, ...]) -> tuple[list[Any], float]:
        """Apply a joint action; ``None`` positions are done agents. Returns (new positions, reward)."""
        target: list[tuple[int, int] | None] = []
        for p, a in zip(pos, joint, strict=True):
            if p is None:
                target.append(None)
                continue
            r, c = p[0] + MOVES[a][0], p[1] + MOVES[a][1]
            target.append((r, c) if self.free(r, c) else p)
        # Resolve conflicts until stable: a failed move can create a new collision with a stayer.
        changed = True
        while changed:
            # Find every conflict first, then revert them together: a same-cell clash fails both moves.
            failed = set()
            for i in range(N_AGENTS):
                for j in range(N_AGENTS):
                    if i == j or target[i] is None or target[j] is None:
                        continue
                    same = target[i] == target[j]
                    swap = target[i] == pos[j] and target[j] == pos[i] and pos[i] != pos[j]
                    if (same or swap) and target[i] != pos[i]:
                        failed.add(i)
            for i in failed:
                target[i] = pos[i]
            changed = bool(failed)
        new: list[tuple[int, int] | None] = []
        for i, t in enumerate(target):
            new.append(None if t is None or t == self.goals[i] else t)
        return new, self.reward(new)

    def reward(self, pos: list[tuple[int, int] | None]) -> float:
        """−w × mean over agents of the Euclidean distance to goal (0 for done agents)."""
        dist = [
            0.0 if p is None else float(np.hypot(p[0] - g[0], p[1] - g[1]))
            for p, g in zip(pos, self.goals, strict=True)
        ]
        return -self.weight * float(np.mean(dist))

    def observe(self, pos: list[tuple[int, int] | None]) -> np.ndarray:
        """Full observation (same for both agents): scaled positions, done flags, then one-hot cells.

        The one-hot of each agent's free cell (all zero once done) lets a network tell apart neighbouring
        cells that a wall separates; from the scaled coordinates alone it has to carve those edges out of a
        smooth function, and the critic's errors at rarely logged joint actions were of the size of the
        per-step advantage gaps (docs/inspo.md §9).
        """
        feats: list[float] = []
        for i, p in enumerate(pos):
            q = self.goals[i] if p is None else p
            feats += [q[0] / (self.rows - 1), q[1] / (self.cols - 1)]
        feats += [float(p is None) for p in pos]
        cells = np.zeros((len(pos), len(self._free_cells)), np.float32)
        for i, p in enumerate(pos):
            if p is not None:
                cells[i, self._free_cells[p]] = 1.0
        return np.concatenate([np.array(feats, np.float32), cells.ravel()])

    def legal(self, pos: list[tuple[int, int] | None]) -> np.ndarray:
        """Legal actions [N, A]: a done agent may only stay."""
        mask = np.ones((N_AGENTS, N_ACTIONS), bool)
        for i, p in enumerate(pos):
            if p is None:
                mask[i, 1:] = False
        return mask

    # --- exact optimum (for the optimal dataset) ------------------------------------------------
    def _cells(self) -> list[tuple[int, int] | None]:
        cells: list[tuple[int, int] | None] = [
            (r, c) for r in range(self.rows) for c in range(self.cols) if self.free(r, c)
        ]
        return [*cells, None]

    def _optimal_q(self) -> tuple[list[Any], dict[Any, int], np.ndarray, np.ndarray, np.ndarray]:
        """Finite-horizon joint Q by backward induction over (pos1, pos2); undiscounted return."""
        cells = self._cells()
        states = [(a, b) for a in cells for b in cells if a is None or a != b]
        index = {s: k for k, s in enumerate(states)}
        joints = [(a, b) for a in range(N_ACTIONS) for b in range(N_ACTIONS)]
        nxt = np.zeros((len(states), len(joints)), int)
        rew = np.zeros((len(states), len(joints)))
        legal = np.zeros((len(states), len(joints)), bool)
        for k, s in enumerate(states):
            lm = self.legal(list(s))
            for j, ja in enumerate(joints):
                legal[k, j] = lm[0, ja[0]] and lm[1, ja[1]]
                new, r = self.step(list(s), ja)
                nxt[k, j], rew[k, j] = index[(new[0], new[1])], r
        terminal = np.array([s[0] is None and s[1] is None for s in states])
        q = np.zeros((self.max_steps, len(states), len(joints)))
        v = np.zeros(len(states))
        for t in reversed(range(self.max_steps)):
            q[t] = rew + np.where(terminal[nxt], 0.0, v[nxt])
            q[t][~legal] = -np.inf
            v = q[t].max(axis=1)
        return states, index, q, nxt, np.array(joints)

    def _optimal_episode(self, rng: np.random.Generator, tables: Any) -> tuple[list[Any], list[Any], int]:
        """One optimal episode with uniform tie-breaking; returns (positions, actions, first finisher)."""
        _states, index, q, _nxt, joints = tables
        pos: list[Any] = list(self.starts)
        traj_pos, traj_act = [], []
        first = -1
        for t in range(self.max_steps):
            k = index[(pos[0], pos[1])]
            best = np.flatnonzero(q[t, k] >= q[t, k].max() - 1e-9)
            ja = tuple(int(x) for x in joints[rng.choice(best)])
            traj_pos.append(list(pos))
            traj_act.append(ja)
            pos, _ = self.step(pos, ja)
            done = [p is None for p in pos]
            if first < 0 and any(done):
                first = 2 if all(done) else done.index(True)
            if all(done):
                break
        return traj_pos, traj_act, first

    # --- datasets -------------------------------------------------------------------------------
    def dataset_names(self) -> list[str]:
        """Dataset names declared in the spec."""
        return list(self.spec["datasets"])

    def dataset(self, name: str, seed: int) -> OfflineDataset:
        """Optimal episodes (half with each agent yielding) plus uniformly random episodes."""
        if name not in self.spec["datasets"]:
            raise ValueError(f"{self.name}: unknown dataset {name!r}; known: {', '.join(self.dataset_names())}")
        recipe = self.spec["datasets"][name]
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB41D]))
        tables = self._optimal_q()
        n_opt = int(recipe["optimal_episodes"])
        by_mode: dict[int, list[Any]] = {0: [], 1: []}
        # Agent k finishing first means the other agent yielded; keep half of each mode.
        for _ in range(200 * max(n_opt, 1)):
            if all(len(v) >= (n_opt + 1 - m) // 2 for m, v in by_mode.items()):
                break
            traj_pos, traj_act, first = self._optimal_episode(rng, tables)
            if first in by_mode and len(by_mode[first]) < (n_opt + 1 - first) // 2:
                by_mode[first].append((traj_pos, traj_act))
        episodes = by_mode[0] + by_mode[1]
        if len(episodes) < n_opt:
            raise RuntimeError(f"bridge: only {len(episodes)} optimal episodes of both modes found")
        for _ in range(int(recipe["random_episodes"])):
            episodes.append(self._random_episode(rng))
        order = rng.permutation(len(episodes))
        return self._pack([episodes[i] for i in order], name, seed)

    def _random_episode(self, rng: np.random.Generator) -> tuple[list[Any], list[Any]]:
        pos: list[Any] = list(self.starts)
        traj_pos, traj_act = [], []
        for _ in range(self.max_steps):
            lm = self.legal(pos)
            ja = tuple(int(rng.choice(np.flatnonzero(lm[i]))) for i in range(N_AGENTS))
            traj_pos.append(list(pos))
            traj_act.append(ja)
            pos, _ = self.step(pos, ja)
            if all(p is None for p in pos):
                break
        return traj_pos, traj_act

    def _pack(self, episodes: list[Any], name: str, seed: int) -> OfflineDataset:
        e, t, n, a = len(episodes), self.max_steps, N_AGENTS, N_ACTIONS
        od = len(self.observe(list(self.starts)))
        obs = np.zeros((e, t, n, od), np.float32)
        legal = np.ones((e, t, n, a), bool)
        actions = np.zeros((e, t, n), np.int64)
        rewards = np.zeros((e, t), np.float32)
        terminated = np.zeros((e, t), bool)
        truncated = np.zeros((e, t), bool)
        filled = np.zeros((e, t), bool)
        final_obs = np.zeros((e, n, od), np.float32)
        for k, (traj_pos, traj_act) in enumerate(episodes):
            for s, (pos, ja) in enumerate(zip(traj_pos, traj_act, strict=True)):
                obs[k, s] = self.observe(pos)
                legal[k, s] = self.legal(pos)
                actions[k, s] = ja
                new, rewards[k, s] = self.step(pos, ja)
                filled[k, s] = True
                if all(p is None for p in new):
                    terminated[k, s] = True
                elif s == len(traj_pos) - 1:
                    truncated[k, s] = True
                final_obs[k] = self.observe(new)
        return OfflineDataset(
            obs=obs,
            state=obs[:, :, 0].copy(),
            actions=actions,
            legal=legal,
            rewards=rewards,
            terminated=terminated,
            truncated=truncated,
            filled=filled,
            agent_mask=np.ones((e, t, n), bool),
            final_obs=final_obs,
            final_state=final_obs[:, 0].copy(),
            meta={"game": self.name, "dataset": name, "seed": seed},
        )

    # --- evaluation -----------------------------------------------------------------------------
    def _greedy_return(self, policy: PolicyFn) -> float:
        pos: list[Any] = list(self.starts)
        total = 0.0
        for _ in range(self.max_steps):
            obs = np.stack([self.observe(pos)] * N_AGENTS)[None]
            legal = self.legal(pos)[None]
            probs = np.asarray(policy(obs, legal)) * legal
            pos, r = self.step(pos, tuple(int(a) for a in probs[0].argmax(-1)))
            total += r
            if all(p is None for p in pos):
                break
        return total

    def evaluate(self, policy: PolicyFn, dataset: OfflineDataset, seed: int = 0) -> dict[str, float]:
        """Monte-Carlo mean episode return over ``eval_episodes`` episodes, sampled actions."""
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0xE7A1]))
        m = self.eval_episodes
        pos: list[list[Any]] = [list(self.starts) for _ in range(m)]
        alive = np.ones(m, bool)
        returns = np.zeros(m)
        lengths = np.zeros(m)
        for _ in range(self.max_steps):
            idx = np.flatnonzero(alive)
            if idx.size == 0:
                break
            obs = np.stack([np.stack([self.observe(pos[i])] * N_AGENTS) for i in idx])
            legal = np.stack([self.legal(pos[i]) for i in idx])
            probs = np.asarray(policy(obs, legal), np.float64) * legal
            probs /= probs.sum(axis=-1, keepdims=True)
            u = rng.random((idx.size, N_AGENTS, 1))
            acts = (probs.cumsum(axis=-1) < u).sum(axis=-1).clip(0, N_ACTIONS - 1)
            for k, i in enumerate(idx):
                pos[i], r = self.step(pos[i], tuple(int(x) for x in acts[k]))
                returns[i] += r
                lengths[i] += 1
                if all(p is None for p in pos[i]):
                    alive[i] = False
        best = float(dataset.episode_returns().max())
        mean = float(returns.mean())
        greedy = self._greedy_return(policy)
        return {
            "return": mean,
            "return_std": float(returns.std()),
            "reward_per_step": float(returns.sum() / lengths.sum()),
            "best_dataset_return": best,
            "success": float((~alive).mean()),
            # The same policy acting greedily (argmax); the environment is deterministic, one episode.
            "greedy_return": greedy,
            # Fraction of the gap to the best logged return still missing (0 = matches it).
            "gap_to_best": float(abs(mean - best) / max(abs(best), 1e-9)),
        }
