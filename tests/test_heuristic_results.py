"""``make results`` (``python -m simulator.results``): the cache is stamped with the cadence it was measured at."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulator import results
from simulator.engine import SimConfig
from simulator.epochs import DEFAULT_INTERVAL


def test_a_cache_of_another_cadence_is_measured_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.md"
    argv = ["--out", str(out), "--policies", "nearest", "--instances", "0o50t75s1p100", "--jobs", "1"]
    assert results.main([*argv, "--interval", "2"]) == 0
    two = json.loads(out.with_suffix(".json").read_text())
    assert two[results.SIM_KEY] == results.sim_stamp(SimConfig(dispatch_interval=2))
    assert "Decision epochs every 2 minutes." in out.read_text()
    capsys.readouterr()
    # The default cadence does not take the two-minute figures: it says so and runs the day again.
    assert results.main(argv) == 0
    assert "not reused" in capsys.readouterr().err
    one = json.loads(out.with_suffix(".json").read_text())
    assert one[results.SIM_KEY]["dispatch_interval"] == DEFAULT_INTERVAL == 1
    assert "Decision epochs every minute." in out.read_text()
    a, b = two["nearest"]["0o50t75s1p100"], one["nearest"]["0o50t75s1p100"]
    assert a["orders"] == b["orders"] and a["ctd_mean"] != b["ctd_mean"]
    # Resumed at the same cadence, the cache is used as it is (a planted value survives).
    one["nearest"]["0o50t75s1p100"]["ctd_mean"] = -1.0
    out.with_suffix(".json").write_text(json.dumps(one))
    assert results.main(argv) == 0
    assert json.loads(out.with_suffix(".json").read_text())["nearest"]["0o50t75s1p100"]["ctd_mean"] == -1.0


def test_an_interval_below_one_minute_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        results.main(["--interval", "0", "--out", "/nonexistent/never-made.md"])
    assert exc.value.code == 2
    assert "--interval must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{not json", "unreadable"),
        (b"\xff\xfe", "unreadable"),
        (b"[1, 2]", "holds a JSON list, not a metrics object"),
        (b'{"nearest": {}}', "no engine settings (older than the stamp)"),
    ],
    ids=["corrupt", "not-utf8", "not-an-object", "unstamped"],
)
def test_a_cache_that_cannot_be_used_is_said_and_started_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, why: str
) -> None:
    cache = tmp_path / "results.json"
    cache.write_bytes(content)
    config = SimConfig()
    assert results.load_cache(cache, config) == {results.SIM_KEY: results.sim_stamp(config)}
    assert f"{cache}: " in (err := capsys.readouterr().err) and why in err and "not reused" in err
