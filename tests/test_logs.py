"""Offline logs: replay from the log alone, cross-reader agreement, crash-resume, corrupt input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from simulator.engine import Engine, RewardConfig
from simulator.logs import view as view_module
from simulator.logs.dataset import MANIFEST, LogDataset, LogError, read_part
from simulator.logs.generate import generate
from simulator.logs.view import load as load_view

ROOT = Path(__file__).resolve().parents[1]
INSTANCE = "0o50t75s2p100"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four days of the mixed recipe: reyes-soft, assignment-soft, nearest-noisy, reyes-soft."""
    out = tmp_path_factory.mktemp("logs") / "ds"
    generate(out, "mixed", [INSTANCE], days=4, seed=3, jobs=2, progress=False)
    return out


def test_mixed_recipe_covers_several_behaviours(dataset: Path) -> None:
    recipes = LogDataset(dataset).table("episodes").column("recipe").to_pylist()
    assert len(set(recipes)) >= 3


def test_every_decision_rebuilt_from_log_reproduces_the_day(dataset: Path) -> None:
    ds = LogDataset(dataset)
    for ep in ds.episodes:
        day = ds.day(ep)
        inst = day.instance()  # from the log alone
        engine = Engine(inst)
        steps = 0
        for d in day.decisions():
            snap = engine.snapshot()
            assert snap.time == d.snapshot.time
            assert snap.courier_ids == d.snapshot.courier_ids
            assert snap.order_ids == d.snapshot.order_ids
            np.testing.assert_array_equal(snap.courier_free_at, d.snapshot.courier_free_at)
            np.testing.assert_array_equal(snap.courier_xy, d.snapshot.courier_xy)
            d.action.check(snap)
            out = engine.step(d.action)
            assert out.reward == pytest.approx(d.reward, abs=1e-9)
            assert out.done == d.done
            steps += 1
        assert engine.done and steps == day.info["epochs"]
        logged = day.tables["outcomes"]
        np.testing.assert_array_equal(engine.records.order_pickup, logged["pickup"])
        np.testing.assert_array_equal(engine.records.order_dropoff, logged["dropoff"])
        couriers = [inst.courier_ids[c] if c >= 0 else None for c in engine.records.order_courier]
        assert couriers == logged["courier_id"]


def test_logged_actions_are_their_candidates(dataset: Path) -> None:
    ds = LogDataset(dataset)
    d = next(x for x in ds.day(0).decisions() if x.action.assignments)
    for i, c in enumerate(d.choice):
        if c >= 0:
            assert d.candidates.mask[i, c]
    assert np.all(d.logp <= 0) and np.all(np.isfinite(d.logp))


def test_pyarrow_and_duckdb_agree(dataset: Path) -> None:
    import duckdb

    ds = LogDataset(dataset)
    con = duckdb.connect()
    for table, col in (
        ("epochs", "reward"),
        ("couriers", "behaviour_logp"),
        ("orders", "ready"),
        ("outcomes", "dropoff"),
        ("bundles", "bundle"),
    ):
        arrow = ds.table(table)
        rows, total = con.execute(
            f"SELECT count(*), sum({col}) FROM read_parquet('{dataset}/{table}/part-*.parquet')"
        ).fetchone()
        assert rows == arrow.num_rows
        assert total == pytest.approx(pa.compute.sum(arrow.column(col)).as_py(), rel=1e-9, abs=1e-9)
    n_cand = con.execute(
        f"SELECT sum(len(candidates)) FROM read_parquet('{dataset}/couriers/part-*.parquet') WHERE agent >= 0"
    ).fetchone()[0]
    assert n_cand == sum(len(c) for c in ds.table("couriers").column("candidates").to_pylist() if c is not None)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dispatch_cli", "logs", "generate", *args]


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    args = ["--recipe", "mixed", "--instances", INSTANCE, "--days", "4", "--seed", "5", "--jobs", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    full = tmp_path / "full"
    subprocess.run(_cli(*args, "--out", str(full)), check=True, env=env, cwd=ROOT, capture_output=True)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        _cli(*args, "--out", str(cut)), env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        man = cut / MANIFEST
        if man.exists():
            try:
                if len(json.loads(man.read_text())["episodes"]) >= 1:
                    break
            except json.JSONDecodeError:
                pass
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert workers, "log generation runs its days in a worker process"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The pool's worker goes with its killed parent instead of waiting on its task queue forever.
    gone = time.time() + 20
    while time.time() < gone and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.05)
    assert not any(Path(f"/proc/{w}").exists() for w in workers), f"orphaned workers {workers}"
    killed = json.loads((cut / MANIFEST).read_text())
    assert not killed["complete"] and len(killed["episodes"]) < 4
    subprocess.run(_cli(*args, "--out", str(cut)), check=True, env=env, cwd=ROOT, capture_output=True)
    a, b = (json.loads((d / MANIFEST).read_text()) for d in (full, cut))
    assert b["complete"]
    assert a["episodes"] == b["episodes"]  # identical part files (hashes), nothing lost or duplicated
    for table in ("couriers", "outcomes"):
        assert LogDataset(full).table(table).equals(LogDataset(cut).table(table))


def test_ctrl_c_stops_a_parallel_run_without_running_its_queue(tmp_path: Path) -> None:
    days = 60
    out = tmp_path / "logs"
    args = ["--instances", INSTANCE, "--days", str(days), "--jobs", "2", "--no-progress", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # A session of its own, so the Ctrl-C below reaches the workers too, as a terminal's does.
    proc = subprocess.Popen(_cli(*args), env=env, cwd=ROOT, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads((out / MANIFEST).read_text())["episodes"]:
                break
        except (OSError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    # The days queued behind the running ones were dropped, not simulated first (the executor's exit waits for
    # its whole queue): only the days already running when Ctrl-C came were still finished.
    assert len(list((out / "epochs").glob("part-*.parquet"))) < days // 2
    assert not json.loads((out / MANIFEST).read_text())["complete"]


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path: Path) -> None:
    from simulator.folder_lock import FolderBusy, exclusive

    out = tmp_path / "logs"
    with exclusive(out, "--out"):  # as a run in another process holds it
        with pytest.raises(FolderBusy, match=rf"--out {out}: in use by another run \(process {os.getpid()}\)"):
            generate(out, "mixed", [INSTANCE], days=1, seed=3, progress=False)
        assert not (out / MANIFEST).exists()  # refused before anything was written
    generate(out, "mixed", [INSTANCE], days=1, seed=3, progress=False)  # the lock goes with its holder
    assert json.loads((out / MANIFEST).read_text())["complete"]


def test_resuming_drops_a_card_written_before_the_new_days(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simulator.logs.card import CARD, HISTOGRAM, make_card

    out = tmp_path / "logs"
    generate(out, "mixed", [INSTANCE], days=2, seed=3, progress=False)
    man = json.loads((out / MANIFEST).read_text())
    del man["episodes"]["1"]  # as if the run had been stopped after its first day
    man["complete"] = False
    (out / MANIFEST).write_text(json.dumps(man))
    assert "days: 1;" in make_card(out)
    generate(out, "mixed", [INSTANCE], days=2, seed=3, progress=False)
    assert not (out / CARD).exists() and not (out / HISTOGRAM).exists()  # it described one day of two
    assert f"removed {CARD}" in capsys.readouterr().err
    generate(out, "mixed", [INSTANCE], days=2, seed=3, progress=False)  # nothing to add: a card stays
    make_card(out)
    generate(out, "mixed", [INSTANCE], days=2, seed=3, progress=False)
    assert (out / CARD).exists()


def _small_disk() -> None:
    """In the child: files may grow to 30 kB only, and writing past that fails (EFBIG) instead of killing it."""
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_a_disk_that_fills_up_is_one_line_and_the_run_resumes(tmp_path: Path) -> None:
    out = tmp_path / "logs"
    args = ["--instances", INSTANCE, "--days", "3", "--jobs", "1", "--no-progress", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(_cli(*args), env=env, cwd=ROOT, capture_output=True, text=True, preexec_fn=_small_disk)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"dispatch logs generate: cannot write {out}") and "File too large" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not list(out.glob("**/*.tmp*"))  # no half-written file left behind
    again = subprocess.run(_cli(*args), env=env, cwd=ROOT, capture_output=True, text=True)  # space freed
    assert again.returncode == 0, again.stderr
    assert json.loads((out / MANIFEST).read_text())["complete"]


def test_resume_with_other_arguments_is_refused(dataset: Path) -> None:
    with pytest.raises(LogError, match=r"other arguments \(recipe: 'mixed' then, 'random' now\)"):
        generate(dataset, "random", [INSTANCE], days=4, seed=3, progress=False)


def test_truncated_part_file_is_rejected(dataset: Path, tmp_path: Path) -> None:
    part = dataset / "orders" / "part-000000.parquet"
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    with pytest.raises(LogError, match="corrupt or truncated"):
        read_part(broken, "orders")


def test_modified_dataset_fails_hash_check(dataset: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    part = copy / "epochs" / "part-000001.parquet"
    part.write_bytes(part.read_bytes()[:-10])
    with pytest.raises(LogError, match="does not match the manifest hash"):
        LogDataset(copy)


def test_foreign_parquet_and_wrong_table_are_rejected(dataset: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"episode": [1], "x": [2.0]}), foreign)
    with pytest.raises(LogError, match="foreign"):
        read_part(foreign, "orders")
    with pytest.raises(LogError, match="expected 'orders'"):
        read_part(dataset / "epochs" / "part-000000.parquet", "orders")


def test_newer_schema_is_rejected(dataset: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "newer"
    shutil.copytree(dataset, copy)
    man = json.loads((copy / MANIFEST).read_text())
    man["schema_version"] = 99
    (copy / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(LogError, match=r"version 99.*Upgrade"):
        LogDataset(copy)


def test_training_view_layout_and_cache(dataset: Path) -> None:
    first = load_view(dataset)
    second = load_view(dataset)  # from the cache
    np.testing.assert_array_equal(first.cand_feats, second.cand_feats)
    np.testing.assert_array_equal(first.action, second.action)
    assert list((dataset / ".cache").glob("view-*.npz"))
    ds = LogDataset(dataset)
    assert first.n_epochs == ds.table("epochs").num_rows
    assert first.n_agent_rows == int(np.sum(np.asarray(ds.table("couriers").column("agent")) >= 0))
    assert first.agent_offset[-1] == first.n_agent_rows
    k = first.k
    assert first.action.min() >= 0 and first.action.max() <= k
    chosen = first.action < k
    rows = np.flatnonzero(chosen)
    assert first.cand_mask[rows, first.action[rows]].all()  # a chosen slot is always a real candidate
    # next_index aligns each epoch with the next of the same day; terminal epochs point nowhere.
    nxt = first.next_index
    assert np.all((nxt == -1) == first.terminated)
    live = nxt >= 0
    assert np.all(first.episode[nxt[live]] == first.episode[live])
    assert np.all(first.epoch[nxt[live]] == first.epoch[live] + 1)
    assert first.terminated.sum() == len(ds.episodes)
    np.testing.assert_allclose(first.reward, np.asarray(ds.table("epochs").column("reward")), rtol=1e-6)


def test_two_trainings_building_one_view_cache_both_keep_it(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two loads that build the view at once (two trainings started together) each write their own file.

    Both writers finish writing before either renames (a barrier), the interleaving in which a shared
    temporary name made the second rename fail and its view go uncached.
    """
    copy = tmp_path / "ds"
    shutil.copytree(dataset, copy, ignore=shutil.ignore_patterns(".cache"))
    barrier = threading.Barrier(2, timeout=120)
    real_savez = np.savez

    def savez_then_wait(file: object, **arrays: np.ndarray) -> None:
        real_savez(file, **arrays)
        barrier.wait()

    monkeypatch.setattr(view_module.np, "savez", savez_then_wait)
    views: list[object] = []
    threads = [threading.Thread(target=lambda: views.append(load_view(copy))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(views) == 2
    assert "not cached" not in capsys.readouterr().err
    files = sorted(p.name for p in (copy / ".cache").iterdir())
    assert len(files) == 1 and files[0].startswith("view-") and files[0].endswith(".npz"), files
    monkeypatch.undo()
    np.testing.assert_array_equal(load_view(copy).action, load_view(dataset).action)  # the kept file reads back


def test_reward_overrides_are_recorded_and_bad_ones_refused(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    common = ["--recipe", "reyes-soft", "--instances", INSTANCE, "--jobs", "1", "--no-progress"]
    bad = subprocess.run(
        _cli(*common, "--reward", "undelivered=lots", "--out", str(tmp_path / "bad")),
        env=env, cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "undelivered" in bad.stderr and not (tmp_path / "bad").exists()
    out = tmp_path / "ok"
    subprocess.run(
        _cli(*common, "--reward", "undelivered=-10", "--reward", "timing=accrued", "--out", str(out)),
        check=True, env=env, cwd=ROOT, capture_output=True,
    )  # fmt: skip
    reward = json.loads((out / MANIFEST).read_text())["args"]["reward"]
    assert reward["undelivered"] == -10.0 and reward["timing"] == "accrued"


def test_dataset_written_before_a_reward_field_existed_still_resumes(tmp_path: Path) -> None:
    out = tmp_path / "old"
    generate(out, "random", [INSTANCE], days=1, seed=3, progress=False)
    man = json.loads((out / MANIFEST).read_text())
    del man["args"]["reward"]["timing"]  # as written before the field existed
    (out / MANIFEST).write_text(json.dumps(man))
    again = generate(out, "random", [INSTANCE], days=1, seed=3, progress=False)
    assert again["complete"] and again["episodes"] == man["episodes"]
    # A real difference is still refused.
    with pytest.raises(LogError, match=r"other arguments \(reward\.undelivered: -3\.0 then, -10\.0 now\)"):
        generate(out, "random", [INSTANCE], days=1, seed=3, reward=RewardConfig(undelivered=-10.0), progress=False)


def test_training_and_replay_say_when_a_dataset_is_unfinished(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulator.logs.view import load
    from simulator.replay.days import log_days

    load(dataset, cache=False)
    log_days(dataset)
    assert capsys.readouterr().err == ""  # a finished dataset: nothing to say
    cut = tmp_path / "cut"
    shutil.copytree(dataset, cut)
    man = json.loads((cut / MANIFEST).read_text())
    (cut / MANIFEST).write_text(json.dumps({**man, "complete": False}))  # as a stopped `logs generate` leaves it
    for read in (lambda: load(cut, cache=False), lambda: log_days(cut)):
        read()
        err = capsys.readouterr().err
        assert f"warning: {cut}: its generation did not finish (4 day(s) logged)" in err
        assert "rerun `dispatch logs generate` with the same arguments" in err
