"""InSPO with parameter sharing: absent agents are ignored, and the permutation form still coordinates."""

import copy

import torch

from training.algos.base import DataInfo
from training.algos.inspo import InSPO, InSPOConfig
from training.harness import TrainConfig, train


def batch(gen, b=32, n=3, a=4):
    mask = torch.rand(b, n, generator=gen) > 0.3
    mask[:, 0] = True
    legal = torch.rand(b, n, a, generator=gen) > 0.3
    legal[..., 0] = True
    actions = torch.zeros(b, n, dtype=torch.long)
    for i in range(b):
        for j in range(n):
            choices = torch.nonzero(legal[i, j]).flatten()
            actions[i, j] = choices[torch.randint(len(choices), (1,), generator=gen)]
    return {
        "obs": torch.randn(b, n, 2, generator=gen),
        "state": torch.randn(b, 2, generator=gen),
        "actions": actions,
        "legal": legal,
        "agent_mask": mask,
        "rewards": torch.randn(b, generator=gen),
        "terminated": torch.rand(b, generator=gen) > 0.8,
        "next_state": torch.randn(b, 2, generator=gen),
    }


def test_absent_agents_do_not_change_the_update():
    info = DataInfo(n_agents=3, n_actions=4, obs_dim=2, state_dim=2, gamma=0.9)
    cfg = InSPOConfig(shared=True, warmup_steps=0, hidden=8, critic_hidden=8)
    b1 = batch(torch.Generator().manual_seed(0))
    b2 = copy.deepcopy(b1)
    absent = ~b2["agent_mask"]
    b2["obs"][absent] = 1e3  # garbage where no agent exists
    b2["actions"][absent] = 0
    results = []
    for b in (b1, b2):
        torch.manual_seed(0)
        algo = InSPO(cfg, info, torch.Generator().manual_seed(1))
        for step in range(3):
            logs = algo.update(b, step)
        assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
        results.append({k: v.clone() for k, v in algo.pi.state_dict().items()})
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k


def test_shared_permutation_form_commits_on_xor(tmp_path):
    cfg = TrainConfig(
        algo="inspo",
        data="xor:ab_ba",
        steps=600,
        batch_size=128,
        eval_every=600,
        ckpt_every=600,
        out=str(tmp_path),
        tensorboard=False,
        progress=False,
        # Constant β, as the dispatch form trains.
        algo_params={"shared": True, "warmup_steps": 150, "hidden": 32, "critic_hidden": 64, "beta_anneal_steps": 0},
    )
    final = train(cfg)["final"]
    assert final["reward_per_step"] >= 0.95 and final["absent_mass"] < 0.01, final
