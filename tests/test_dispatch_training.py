"""Dispatch training on logs: InSPO/BC updates, bit-identical resume, export through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dispatch.onnx_policy import OnnxPolicy
from dispatch_cli.demo import clear
from dispatch_cli.main import main as dispatch
from simulator.folder_lock import LOCK_NAME
from simulator.instance import load
from simulator.logs.generate import generate
from simulator.run import run_episode
from training.dispatch.train import CHECKPOINT, DispatchTrainConfig, train


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dlogs") / "ds"
    generate(out, "mixed", ["0o50t75s2p100"], days=2, seed=1, jobs=1, progress=False)
    return out


def _params(run: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(run / CHECKPOINT, weights_only=True)
    return {f"{m}.{k}": v for m, sd in payload["algo"]["modules"].items() for k, v in sd.items()}


@pytest.mark.parametrize("algo", ["inspo", "bc"])
def test_resume_is_bit_identical(algo: str, logs: Path, tmp_path: Path) -> None:
    params = {"warmup_steps": 10} if algo == "inspo" else {}
    base = DispatchTrainConfig(
        data=str(logs), algo=algo, steps=24, batch_size=8, ckpt_every=8, progress=False, params=params
    )
    full = tmp_path / "full"
    train(DispatchTrainConfig(**{**base.__dict__, "out": str(full)}))
    cut = tmp_path / "cut"
    train(DispatchTrainConfig(**{**base.__dict__, "out": str(cut), "stop_after": 16}))
    assert torch.load(cut / CHECKPOINT, weights_only=True)["step"] == 16
    with open(cut / "train.csv", "a") as fh:  # a row logged after the checkpoint, then a kill
        fh.write("20,after_checkpoint,1\n")
    train(DispatchTrainConfig(**{**base.__dict__, "out": str(cut), "resume": True}))
    assert "after_checkpoint" not in (cut / "train.csv").read_text()  # the resumed run logs it afresh
    assert (cut / "train.csv").read_text().startswith("step,metric,value")
    a, b = _params(full), _params(cut)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = tmp_path / "other"
    train(DispatchTrainConfig(**{**base.__dict__, "out": str(other), "seed": 1}))
    assert not all(torch.equal(a[k], _params(other)[k]) for k in a)  # the seed matters: the test can fail


def test_bc_learns_the_logged_actions(logs: Path, tmp_path: Path) -> None:
    import numpy as np

    from simulator.logs.view import load as load_view
    from training.algos.base import masked_mean
    from training.dispatch.batches import minibatch
    from training.nets import gather_actions

    view = load_view(logs)
    idx = np.flatnonzero(np.diff(view.agent_offset) > 0)[:64]
    batch = minibatch(view, idx)

    def nll(algo: object) -> float:
        with torch.no_grad():
            logp = gather_actions(algo.pi(batch["obs"], batch["legal"]), batch["actions"])  # type: ignore[attr-defined]
            return float(-masked_mean(logp, batch["agent_mask"]))

    untrained = train(
        DispatchTrainConfig(data=str(logs), algo="bc", steps=0, progress=False, out=str(tmp_path / "bc0"))
    )
    trained = train(
        DispatchTrainConfig(
            data=str(logs), algo="bc", steps=150, batch_size=16, progress=False, out=str(tmp_path / "bc")
        )
    )
    assert nll(trained["algo"]) < 0.5 * nll(untrained["algo"])
    assert trained["stats"]["courier_decisions_per_s"] > 0


def test_cli_train_then_export_then_run(logs: Path, tmp_path: Path) -> None:
    run, model = tmp_path / "run", tmp_path / "m" / "p.onnx"
    assert (
        dispatch(
            [
                "train",
                "--algo",
                "inspo",
                "--data",
                str(logs),
                "--steps",
                "12",
                "--batch-size",
                "8",
                "--out",
                str(run),
                "--no-progress",
                "--set",
                "warmup_steps=6",
            ]
        )
        == 0
    )
    assert dispatch(["export", str(run), "--out", str(model)]) == 0
    policy = OnnxPolicy(model, sample=True)
    assert policy.manifest.training["algo"] == "inspo"
    assert policy.manifest.training["data_sha256"]
    result = run_episode(load("0o50t75s2p100"), policy, seed=0)
    assert result.metrics["delivered"] > 0
    assert dispatch(["export", str(tmp_path / "nothing"), "--out", str(model)]) == 2


def test_dispatch_inspo_trains_without_a_support_cut(logs: Path, tmp_path: Path) -> None:
    """The run's resolved config keeps every legal action in the normaliser unless told otherwise (A7)."""
    resolved = {}
    for name, params in (("default", {}), ("cut", {"support_threshold": 0.01})):
        out = tmp_path / name
        train(DispatchTrainConfig(data=str(logs), steps=2, batch_size=4, progress=False, out=str(out), params=params))
        resolved[name] = json.loads((out / "config.json").read_text())["algo"]["support_threshold"]
    assert resolved == {"default": 0.0, "cut": 0.01}


def test_gamma_reaches_the_run_config_and_bad_values_are_refused(logs: Path, tmp_path: Path) -> None:
    base = ["train", "--algo", "bc", "--data", str(logs), "--steps", "2", "--batch-size", "4", "--no-progress"]
    assert dispatch([*base, "--gamma", "0.99", "--out", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["gamma"] == 0.99
    assert dispatch([*base, "--gamma", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert dispatch(["train", "--data", "xor:ab", "--gamma", "0.9", "--steps", "1", "--out", str(tmp_path / "g")]) == 2


def test_batch_size_is_honoured_for_logs_and_defaults_to_64_epochs(logs: Path, tmp_path: Path) -> None:
    base = ["train", "--algo", "bc", "--data", str(logs), "--steps", "2", "--no-progress"]
    for extra, want in [((), 64), (("--batch-size", "100"), 100)]:
        out = tmp_path / f"b{want}"
        assert dispatch([*base, *extra, "--out", str(out)]) == 0
        assert json.loads((out / "config.json").read_text())["train"]["batch_size"] == want


def test_device_choice_is_recorded_and_cuda_is_refused_where_unusable(logs: Path, tmp_path: Path) -> None:
    base = ["train", "--algo", "bc", "--data", str(logs), "--steps", "2", "--batch-size", "4", "--no-progress"]
    assert dispatch([*base, "--device", "auto", "--out", str(tmp_path / "auto")]) == 0
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["device"].startswith(want)
    if not torch.cuda.is_available():
        # The refusal names the device and why; nothing is trained or written.
        with pytest.raises(ValueError, match="device 'cuda' requested but CUDA is not usable"):
            train(DispatchTrainConfig(data=str(logs), algo="bc", steps=2, out=str(tmp_path / "c"), device="cuda"))
        assert dispatch([*base, "--device", "cuda", "--out", str(tmp_path / "cuda")]) == 2
        assert not (tmp_path / "cuda").exists()
    assert (
        dispatch(["train", "--data", "xor:ab", "--device", "auto", "--steps", "1", "--out", str(tmp_path / "g")]) == 2
    )


def test_returns_to_go_discount_each_logged_day_to_its_end(logs: Path) -> None:
    import numpy as np

    from simulator.logs.view import load as load_view
    from training.dispatch.batches import minibatch, returns_to_go

    view = load_view(logs)
    g = returns_to_go(view, 0.9)
    ends = np.flatnonzero(view.next_index < 0)
    assert ends.size == 2  # two logged days
    assert np.allclose(g[ends], view.reward[ends])
    inner = np.flatnonzero(view.next_index >= 0)
    assert np.allclose(g[inner], view.reward[inner] + 0.9 * g[view.next_index[inner]], atol=1e-5)
    # By brute force on the first day: the discounted sum of its rewards from epoch 0.
    first = view.reward[: ends[0] + 1].astype(np.float64)
    assert g[0] == pytest.approx(float((first * 0.9 ** np.arange(first.size)).sum()), rel=1e-5)
    batch = minibatch(view, np.array([0, int(ends[0])]), g)
    assert torch.equal(batch["returns"], torch.from_numpy(g[[0, int(ends[0])]]))  # type: ignore[arg-type]
    assert "returns" not in minibatch(view, np.array([0]))


def test_inspo_critic_on_logged_returns(logs: Path, tmp_path: Path) -> None:
    """critic_target='mc' fits Q to the logged returns-to-go: another run than the TD default, same seed."""
    runs = {}
    for target in ("td", "mc"):
        out = tmp_path / target
        params = {"warmup_steps": 2, "critic_target": target}
        train(DispatchTrainConfig(data=str(logs), steps=6, batch_size=4, progress=False, out=str(out), params=params))
        assert json.loads((out / "config.json").read_text())["algo"]["critic_target"] == target
        runs[target] = _params(out)
    assert not torch.equal(runs["td"]["q.head.0.weight"], runs["mc"]["q.head.0.weight"])
    with pytest.raises(ValueError, match="critic_target"):
        train(DispatchTrainConfig(data=str(logs), steps=1, out=str(tmp_path / "x"), params={"critic_target": "x"}))


def _endless_training(logs: Path, out: Path, ckpt_every: int) -> tuple[list[str], subprocess.Popen[bytes]]:
    """The CLI arguments of a small BC run into ``out``, and a process running it for ten million steps."""
    args = ["train", "--algo", "bc", "--data", str(logs), "--batch-size", "8", "--out", str(out), "--no-progress"]
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "dispatch_cli", *args, "--steps", "10000000", "--ckpt-every", str(ckpt_every)]
    return args, subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_an_interrupt_before_the_first_checkpoint_leaves_no_run_behind(logs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args, proc = _endless_training(logs, out, ckpt_every=10_000_000)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not (out / "train.csv").exists():
        time.sleep(0.02)
    time.sleep(0.3)  # inside the training loop, long before step 10,000,000's checkpoint
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err.decode()
    assert not (out / CHECKPOINT).exists()
    assert not (out / "config.json").exists()  # nothing to resume: the same --out takes the next run as it is
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # nor its log of those steps
    clear(out, "config.json")  # so a demo stopped while it trained clears the folder on its next run
    assert not out.exists()
    assert dispatch([*args, "--steps", "4"]) == 0
    assert torch.load(out / CHECKPOINT, weights_only=True)["step"] == 4


def test_a_kill_after_a_checkpoint_keeps_the_log_it_vouches_for(logs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args, proc = _endless_training(logs, out, ckpt_every=200)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / CHECKPOINT).exists():
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    step = torch.load(out / CHECKPOINT, weights_only=True)["step"]
    lines = (out / "train.csv").read_text().splitlines()
    assert lines[0] == "step,metric,value"
    logged = {int(line.split(",")[0]) for line in lines[1:]}
    assert set(range(100, step + 1, 100)) <= logged  # every row up to the checkpoint is on disk
    assert dispatch([*args, "--steps", str(step + 200), "--resume"]) == 0
    lines = (out / "train.csv").read_text().splitlines()
    assert lines.count("step,metric,value") == 1 and lines[0] == "step,metric,value"
    rows = [line.split(",")[:2] for line in lines[1:]]
    assert len(rows) == len({tuple(r) for r in rows})  # nothing logged twice
    assert {int(r[0]) for r in rows} == set(range(100, step + 201, 100))
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["first_step"], stats["steps_run"]) == (step, 200)
    assert dispatch([*args, "--steps", str(step + 200), "--resume"]) == 0  # already finished: nothing to do
    assert json.loads((out / "stats.json").read_text()) == stats  # its figures are kept


@pytest.mark.parametrize("data", ["logs", "xor:ab_ba"])
def test_a_second_training_run_on_a_folder_in_use_is_refused(data: str, logs: Path, tmp_path: Path) -> None:
    from simulator.folder_lock import exclusive

    out = tmp_path / "run"
    args = ["train", "--algo", "bc", "--data", str(logs) if data == "logs" else data, "--steps", "2", "--out", str(out)]
    with exclusive(out, "--out"):  # as a run in another process holds it
        proc = subprocess.run(
            [sys.executable, "-m", "dispatch_cli", *args, "--no-progress"],
            cwd=Path(__file__).resolve().parents[1],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert proc.returncode == 2, proc.stderr
    assert f"--out {out}: in use by another run (process {os.getpid()})" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing of a run was written
    assert dispatch([*args, "--no-progress"]) == 0  # once it is free, the folder takes the run
