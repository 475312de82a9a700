"""The episode-major dataset: validation, flattening into transitions, terminal handling, save/load."""

import numpy as np
import pytest

from training.offline.dataset import OfflineDataset


def make(terminated_last: bool = True, illegal: bool = False) -> OfflineDataset:
    e, t, n, a = 2, 3, 2, 3
    legal = np.ones((e, t, n, a), bool)
    legal[:, :, 1, 2] = False  # agent 1 may never take action 2
    actions = np.zeros((e, t, n), np.int64)
    if illegal:
        actions[0, 0, 1] = 2
    filled = np.ones((e, t), bool)
    filled[1, 2] = False  # episode 1 is one step shorter
    terminated = np.zeros((e, t), bool)
    truncated = np.zeros((e, t), bool)
    (terminated if terminated_last else truncated)[0, 2] = True
    truncated[1, 1] = True
    obs = np.arange(e * t * n, dtype=np.float32).reshape(e, t, n, 1)
    return OfflineDataset(
        obs=obs,
        state=obs[:, :, 0],
        actions=actions,
        legal=legal,
        rewards=np.ones((e, t), np.float32),
        terminated=terminated,
        truncated=truncated,
        filled=filled,
        agent_mask=np.ones((e, t, n), bool),
        final_obs=np.full((e, n, 1), -1.0, np.float32),
        final_state=np.full((e, 1), -1.0, np.float32),
    )


def test_rejects_logged_illegal_action():
    with pytest.raises(ValueError, match="legal-action mask"):
        make(illegal=True)


def test_rejects_episode_without_end_flag():
    ds = make()
    ds.truncated[1, 1] = False
    with pytest.raises(ValueError, match="terminated or truncated"):
        ds.validate()


def test_transitions_use_next_step_and_final_obs():
    tr = make().transitions()
    assert len(tr) == 5  # padding step dropped
    # Episode 0: s' of step 0 is step 1; last step's s' is the final observation.
    assert tr.next_obs[0, 0, 0] == tr.obs[1, 0, 0]
    assert tr.next_obs[2, 0, 0] == -1.0
    # Episode 1 ends at step 1 (before the padded horizon): its s' is the final obs, not the padding.
    assert tr.next_obs[4, 0, 0] == -1.0
    assert list(tr.terminated) == [False, False, True, False, False]
    assert list(tr.has_next_action) == [True, True, False, True, False]


def test_save_load_roundtrip_and_version(tmp_path):
    ds = make(terminated_last=False)
    path = tmp_path / "d.npz"
    ds.save(path)
    back = OfflineDataset.load(path)
    assert np.array_equal(back.actions, ds.actions) and np.array_equal(back.truncated, ds.truncated)
    arrays = dict(np.load(path))
    arrays["_format_version"] = np.array(99)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="format version 99"):
        OfflineDataset.load(tmp_path / "bad.npz")
