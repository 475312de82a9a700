"""Small-budget learning checks: InSPO reaches the game thresholds, BC fails where it should."""

import pytest

from training.harness import TrainConfig, train

# The entropy annealing (A11) is shortened with the budget, so β is at its final value well before the end.
FAST = {"warmup_steps": 150, "hidden": 32, "critic_hidden": 64, "beta_anneal_steps": 200}


def run(algo, data, steps, params=None, seed=0, tmp=None):
    cfg = TrainConfig(
        algo=algo,
        data=data,
        seed=seed,
        steps=steps,
        batch_size=128,
        eval_every=steps,
        ckpt_every=steps,
        out=str(tmp),
        tensorboard=False,
        progress=False,
        algo_params=params or {},
    )
    return train(cfg)["final"]


@pytest.mark.parametrize("data", ["xor:ab_ba", "mne:balanced", "mne:rare_optimal"])
def test_inspo_reaches_the_thresholds(data, tmp_path):
    final = run("inspo", data, 600, FAST, tmp=tmp_path)
    threshold = {"xor:ab_ba": 0.95, "mne:balanced": 9.5, "mne:rare_optimal": 9.0}[data]
    assert final["reward_per_step"] >= threshold, final
    if data.startswith("xor"):
        assert final["absent_mass"] < 0.01, final


@pytest.mark.parametrize("data, ceiling", [("xor:ab_ba", 0.5), ("mne:balanced", 5.0)])
def test_bc_fails_where_it_should(data, ceiling, tmp_path):
    final = run("bc", data, 300, {"hidden": 32}, tmp=tmp_path)
    assert final["reward_per_step"] <= ceiling, final
