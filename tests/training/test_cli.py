"""The ``dispatch train`` command: registered without importing torch, arguments reach the harness."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_registering_the_cli_does_not_import_torch():
    code = (
        "import argparse, sys; import training.cli as c; p = argparse.ArgumentParser(); "
        "c.register(p.add_subparsers()); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_train_command_runs_and_writes_outputs(tmp_path):
    from training.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "train",
            "--algo",
            "bc",
            "--data",
            "mne:balanced",
            "--steps",
            "40",
            "--eval-every",
            "20",
            "--out",
            str(tmp_path),
            "--no-progress",
            "--set",
            "hidden=8",
        ]
    )
    assert args.handler(args) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["algo"]["hidden"] == 8 and config["train"]["data"] == "mne:balanced"
    assert config["code_version"]
    rows = (tmp_path / "eval.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 3
    assert (tmp_path / "final.json").exists() and any((tmp_path / "tb").iterdir())
