"""Benchmark games: exact dataset shares, exact evaluator, Bridge rules and its optimal dataset."""

import numpy as np

from training.games import load_game


def fixed_policy(probs):
    probs = np.asarray(probs, float)

    def policy(obs, legal):
        out = np.broadcast_to(probs, (obs.shape[0], *probs.shape)).copy()
        out = out * legal
        return out / out.sum(-1, keepdims=True)

    return policy


def test_xor_dataset_shares_are_exact():
    game = load_game("xor")
    ds = game.dataset("aa_ab_ba", seed=3)
    acts = ds.actions.reshape(-1, 2)
    counts = {j: int(((acts[:, 0] == j[0]) & (acts[:, 1] == j[1])).sum()) for j in [(0, 0), (0, 1), (1, 0), (1, 1)]}
    assert counts[(1, 1)] == 0 and sum(counts.values()) == 5000
    assert max(counts.values()) - min(v for v in counts.values() if v) <= 1
    assert ds.truncated[:, -1].all() and not ds.terminated.any()


def test_matrix_evaluator_is_exact():
    game = load_game("xor")
    ds = game.dataset("ab_ba", seed=0)
    committed = game.evaluate(fixed_policy([[1, 0], [0, 1]]), ds)
    assert committed["reward_per_step"] == 1.0 and committed["absent_mass"] == 0.0
    uniform = game.evaluate(fixed_policy([[0.5, 0.5], [0.5, 0.5]]), ds)
    assert abs(uniform["reward_per_step"] - 0.0) < 1e-12  # (0 + 1 + 1 − 2) / 4
    assert abs(uniform["absent_mass"] - 0.5) < 1e-12  # AA and BB never logged
    mne = load_game("mne")
    res = mne.evaluate(fixed_policy([[0.5, 0, 0.5], [0.5, 0, 0.5]]), mne.dataset("balanced", 0))
    assert abs(res["reward_per_step"]) < 1e-12  # averaging the two modes gives 0


def test_bridge_rules():
    game = load_game("bridge")
    start = list(game.starts)
    # Facing each other in the passage: both moving forward would swap cells, so both fail.
    pos, _ = game.step(start, (3, 4))
    assert pos == start
    # Moving into a wall fails; moving along the free row works.
    pos, _ = game.step(start, (1, 0))
    assert pos == start
    pos, _ = game.step(start, (4, 3))
    assert pos == [(1, 1), (1, 4)]
    # Same target cell: both moves fail.
    pos, _ = game.step([(1, 1), (1, 3)], (3, 4))
    assert pos == [(1, 1), (1, 3)]
    # Reaching the goal removes the agent; a done agent may only stay and adds no distance.
    pos, r = game.step([(2, 4), (1, 0)], (3, 0))
    assert pos[0] is None and game.legal(pos)[0].tolist() == [True, False, False, False, False]
    assert abs(r - (-0.1 * 1.0 / 2)) < 1e-12


def test_bridge_optimal_dataset_has_both_yielding_modes():
    game = load_game("bridge")
    ds = game.dataset("optimal", seed=0)
    returns = ds.episode_returns()
    assert ds.n_episodes == 500
    assert np.allclose(returns, returns.max(), atol=1e-5)  # all optimal, all the same return
    first = []
    for e in range(ds.n_episodes):
        done = ds.obs[e, :, 0, 4:6]
        steps = ds.filled[e].sum()
        final = ds.final_obs[e, 0, 4:6]
        track = np.vstack([done[:steps], final])
        first.append(int(np.argmax(track[:, 0])) < int(np.argmax(track[:, 1])))
    assert 200 < sum(first) < 300  # about half with each agent passing first
