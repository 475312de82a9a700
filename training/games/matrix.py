"""One-state repeated matrix games: datasets with exact joint-action shares and an exact evaluator."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from training.games import PolicyFn
from training.offline.dataset import OfflineDataset


class MatrixGame:
    """An N-agent common-payoff matrix game repeated for ``steps`` steps per episode."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.gamma: float = float(spec["gamma"])
        self.action_names: list[str] = list(spec["actions"])
        self.payoff = np.asarray(spec["payoff"], dtype=np.float64)
        self.n_agents = self.payoff.ndim
        self.n_actions = len(self.action_names)
        if self.payoff.shape != (self.n_actions,) * self.n_agents:
            raise ValueError(f"{self.name}: payoff shape {self.payoff.shape} does not match the actions")
        self.episodes = int(spec["episodes"])
        self.steps = int(spec["steps"])

    def dataset_names(self) -> list[str]:
        """Dataset names declared in the spec."""
        return list(self.spec["datasets"])

    def joint_shares(self, name: str) -> list[tuple[tuple[int, ...], float]]:
        """The (joint action, share) pairs of a dataset, actions as indices."""
        if name not in self.spec["datasets"]:
            raise ValueError(f"{self.name}: unknown dataset {name!r}; known: {', '.join(self.dataset_names())}")
        out = []
        for item in self.spec["datasets"][name]:
            joint = tuple(self.action_names.index(a) for a in item["joint"])
            out.append((joint, float(item["share"])))
        return out

    def dataset(self, name: str, seed: int) -> OfflineDataset:
        """Build the dataset: exact joint-action counts (largest remainder), shuffled with ``seed``."""
        shares = self.joint_shares(name)
        total = self.episodes * self.steps
        raw = np.array([s for _, s in shares]) * total
        counts = np.floor(raw).astype(int)
        for i in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
            counts[i] += 1
        joints = np.concatenate([np.tile(np.array(j), (c, 1)) for (j, _), c in zip(shares, counts, strict=True)])
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4D41]))
        joints = joints[rng.permutation(total)].reshape(self.episodes, self.steps, self.n_agents)
        e, t, n, a = self.episodes, self.steps, self.n_agents, self.n_actions
        # Logged behaviour probabilities: each agent's marginal share of its action.
        marg = np.zeros((n, a))
        for (j, _), c in zip(shares, counts, strict=True):
            for i in range(n):
                marg[i, j[i]] += c / total
        bprobs = np.stack([marg[i][joints[..., i]] for i in range(n)], axis=-1)
        truncated = np.zeros((e, t), bool)
        truncated[:, -1] = True
        return OfflineDataset(
            obs=np.ones((e, t, n, 1), np.float32),
            state=np.ones((e, t, 1), np.float32),
            actions=joints.astype(np.int64),
            legal=np.ones((e, t, n, a), bool),
            rewards=self.payoff[tuple(joints[..., i] for i in range(n))].astype(np.float32),
            terminated=np.zeros((e, t), bool),
            truncated=truncated,
            filled=np.ones((e, t), bool),
            agent_mask=np.ones((e, t, n), bool),
            final_obs=np.ones((e, n, 1), np.float32),
            final_state=np.ones((e, 1), np.float32),
            behaviour_probs=bprobs.astype(np.float32),
            meta={
                "game": self.name,
                "dataset": name,
                "seed": seed,
                "shares": [[list(j), s] for j, s in shares],
            },
        )

    def joint_policy(self, policy: PolicyFn) -> np.ndarray:
        """Probability of every joint action under the product of the agents' policies, shape [A]*N."""
        probs = np.asarray(
            policy(np.ones((1, self.n_agents, 1), np.float32), np.ones((1, self.n_agents, self.n_actions), bool))
        )
        joint = np.ones((self.n_actions,) * self.n_agents)
        for i in range(self.n_agents):
            shape = [1] * self.n_agents
            shape[i] = self.n_actions
            joint = joint * probs[0, i].reshape(shape)
        return joint

    def evaluate(self, policy: PolicyFn, dataset: OfflineDataset, seed: int = 0) -> dict[str, float]:
        """Exact expected per-step reward and the mass on joint actions the dataset never holds."""
        joint = self.joint_policy(policy)
        seen = np.zeros(joint.shape, bool)
        acts = dataset.actions[dataset.filled].reshape(-1, self.n_agents)
        seen[tuple(acts[:, i] for i in range(self.n_agents))] = True
        best = max(itertools.product(range(self.n_actions), repeat=self.n_agents), key=lambda j: joint[j])
        return {
            "reward_per_step": float((joint * self.payoff).sum()),
            "absent_mass": float(joint[~seen].sum()),
            "mode_prob": float(joint[best]),
        }
