"""Interrupting training and resuming from the last checkpoint gives bit-identical parameters."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.harness import TrainConfig, final_parameters, load_checkpoint, train

REPO = Path(__file__).resolve().parents[2]
PARAMS = {"warmup_steps": 40, "hidden": 16, "critic_hidden": 32}


def config(out, **kw):
    base = dict(
        algo="inspo",
        data="xor:ab_ba",
        seed=3,
        steps=600,
        batch_size=64,
        eval_every=200,
        ckpt_every=20,
        out=str(out),
        tensorboard=False,
        progress=False,
        algo_params=dict(PARAMS),
    )
    base.update(kw)
    return TrainConfig(**base)


def assert_identical(a, b):
    pa, pb = final_parameters(a), final_parameters(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


@pytest.mark.parametrize("algo", ["inspo", "icq"])
def test_stop_and_resume_is_bit_identical(tmp_path, algo):
    full, part = tmp_path / "full", tmp_path / "part"
    train(
        config(
            full,
            algo=algo,
            steps=200,
            algo_params={"hidden": 16, "critic_hidden": 32} if algo == "icq" else dict(PARAMS),
        )
    )
    params = {"hidden": 16, "critic_hidden": 32} if algo == "icq" else dict(PARAMS)
    out = train(config(part, algo=algo, steps=200, stop_after=90, algo_params=params))
    assert out["stopped_at"] == 90 and load_checkpoint(part / "checkpoint.pt")["step"] == 90
    train(config(part, algo=algo, steps=200, resume=True, algo_params=params))
    assert_identical(full, part)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    train(config(ref))
    cmd = [
        sys.executable,
        "-m",
        "dispatch_cli",
        "train",
        "--algo",
        "inspo",
        "--data",
        "xor:ab_ba",
        "--seed",
        "3",
        "--steps",
        "600",
        "--batch-size",
        "64",
        "--eval-every",
        "200",
        "--ckpt-every",
        "20",
        "--out",
        str(killed),
        "--no-tensorboard",
        "--no-progress",
        "--set",
        "warmup_steps=40",
        "--set",
        "hidden=16",
        "--set",
        "critic_hidden=32",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = killed / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.exists() and load_checkpoint(ckpt)["step"] >= 60:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode() if proc.stderr else ""
    stopped = load_checkpoint(ckpt)["step"]
    assert 60 <= stopped < 600
    train(config(killed, resume=True))
    assert_identical(ref, killed)
