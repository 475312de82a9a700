"""The real ``dispatch simulate`` / ``dispatch check`` command line, run in subprocesses."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from simulator.checker import check_solution
from simulator.instance import load
from simulator.solution import ASSIGNMENTS, COURIERS, ORDERS
from tests.helpers import dispatch, no_traceback

SMALL = "0o50t75s1p100"
POLICIES = ("nearest", "reyes")


@pytest.fixture(scope="module")
def simulated(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    out = tmp_path_factory.mktemp("cli") / "out"
    js = out.parent / "metrics.json"
    proc = dispatch(
        "simulate", "--instance", SMALL, "--policy", ",".join(POLICIES), "--out", out, "--json", js, "--no-progress"
    )
    return proc, out, js


def test_help() -> None:
    proc = dispatch("--help")
    assert proc.returncode == 0, proc.stderr
    assert "simulate" in proc.stdout and "check" in proc.stdout
    sub = dispatch("simulate", "--help")
    assert sub.returncode == 0, sub.stderr
    for opt in ("--instance", "--policy", "--out", "--interval"):
        assert opt in sub.stdout
    chk = dispatch("check", "--help")
    assert chk.returncode == 0 and "--solution" in chk.stdout


def test_simulate_two_policies_writes_three_files_each(simulated) -> None:  # type: ignore[no-untyped-def]
    proc, out, _ = simulated
    assert proc.returncode == 0, proc.stderr
    no_traceback(proc)
    assert SMALL in proc.stdout
    table = [ln.split() for ln in proc.stdout.splitlines()]
    for policy in POLICIES:
        # Each policy has its own row in the metric table.
        assert any(row and row[0] == policy for row in table), proc.stdout
        folder = out / SMALL / policy
        assert sorted(p.name for p in folder.iterdir()) == sorted([ASSIGNMENTS, COURIERS, ORDERS])
        for f in (ASSIGNMENTS, COURIERS, ORDERS):
            assert len((folder / f).read_text().splitlines()) > 1  # header and rows


def test_simulate_json_matches_the_checker(simulated) -> None:  # type: ignore[no-untyped-def]
    proc, out, js = simulated
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(js.read_text())
    assert sorted(r["policy"] for r in payload) == sorted(POLICIES)
    inst = load(SMALL)
    for r in payload:
        assert r["instance"] == SMALL
        rep = check_solution(inst, out / SMALL / r["policy"])
        assert rep.feasible, rep.violations
        for k, v in r["metrics"].items():
            w = rep.metrics[k]
            assert (math.isnan(v) and math.isnan(w)) or abs(v - w) <= 0.01, (r["policy"], k, v, w)


@pytest.mark.parametrize("policy", POLICIES)
def test_check_accepts_simulated_output(simulated, policy: str) -> None:  # type: ignore[no-untyped-def]
    _, out, _ = simulated
    proc = dispatch("check", "--instance", SMALL, "--solution", out / SMALL / policy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    no_traceback(proc)
    assert proc.stdout.strip().splitlines()[-1] == "feasible"
    assert "VIOLATION" not in proc.stdout


def test_check_rejects_a_corrupted_solution(simulated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, out, _ = simulated
    src = out / SMALL / "nearest"
    dst = tmp_path / "bad"
    dst.mkdir()
    for f in (ASSIGNMENTS, COURIERS, ORDERS):
        (dst / f).write_text((src / f).read_text())
    # Duplicate the first assignment line: its order is now in two assignments (rule 1).
    lines = (dst / ASSIGNMENTS).read_text().splitlines()
    order = lines[1].split()[3]
    (dst / ASSIGNMENTS).write_text("\n".join([*lines, lines[1]]) + "\n")
    proc = dispatch("check", "--instance", SMALL, "--solution", dst)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    no_traceback(proc)
    assert "VIOLATION" in proc.stdout and "(rule 1)" in proc.stdout and order in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("infeasible")


def test_check_unreadable_solution_is_a_clean_error(tmp_path: Path) -> None:
    proc = dispatch("check", "--instance", SMALL, "--solution", tmp_path / "nothing_here")
    assert proc.returncode == 2
    no_traceback(proc)
    assert "nothing_here" in proc.stderr


def test_bad_instance_name_is_a_clean_error(tmp_path: Path) -> None:
    proc = dispatch(
        "simulate",
        "--instance",
        "no_such_instance_xyz",
        "--policy",
        "nearest",
        "--out",
        tmp_path / "o",
        "--no-progress",
    )
    assert proc.returncode != 0
    no_traceback(proc)
    assert "no_such_instance_xyz" in proc.stderr
    chk = dispatch("check", "--instance", "no_such_instance_xyz", "--solution", tmp_path)
    assert chk.returncode != 0
    no_traceback(chk)
    assert "no_such_instance_xyz" in chk.stderr


def test_bad_pattern_and_policy_are_clean_errors() -> None:
    proc = dispatch("simulate", "--instances", "zz*", "--policy", "nearest", "--no-progress")
    assert proc.returncode != 0
    no_traceback(proc)
    assert "zz*" in proc.stderr
    bad = dispatch("simulate", "--instance", SMALL, "--policy", "bogus", "--no-progress")
    assert bad.returncode == 2
    no_traceback(bad)
    assert "--policy 'bogus'" in bad.stderr
    empty = dispatch("simulate", "--instance", SMALL, "--policy", " , ", "--no-progress")
    assert empty.returncode == 2
    assert "names no heuristic" in empty.stderr
