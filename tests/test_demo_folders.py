"""``make demo`` remakes its own folders under ``--out`` and never deletes one it did not make."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatch_cli.demo import clear


def test_a_folder_an_earlier_demo_made_is_removed(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    (logs / "orders").mkdir(parents=True)
    (logs / "manifest.json").write_text("{}")
    (logs / "orders" / "part.parquet").write_bytes(b"x")
    clear(logs, "manifest.json")
    assert not logs.exists()
    empty = tmp_path / "ab"
    empty.mkdir()
    clear(empty, "ab.json")  # an empty folder (a demo killed before writing) is removed too
    assert not empty.exists()
    clear(tmp_path / "never-made", "config.json")  # nothing there: nothing to do


def test_a_folder_the_demo_did_not_make_is_left_alone(tmp_path: Path) -> None:
    mine = tmp_path / "logs"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    with pytest.raises(SystemExit, match=r"is not a folder an earlier demo made \(no manifest\.json\)"):
        clear(mine, "manifest.json")
    assert (mine / "precious.txt").read_text() == "keep me"
    stray = tmp_path / "run-inspo"
    stray.write_text("a file, not a folder")
    with pytest.raises(SystemExit):
        clear(stray, "config.json")
    assert stray.read_text() == "a file, not a folder"
