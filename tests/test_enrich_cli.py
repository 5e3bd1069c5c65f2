"""trade enrich from the command line: options, formats, bad input, --state and --checkpoint, golden files."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from conftest import ROOT, arrow_table, child_env, invoke, ndjson_records, run_trade, sim_args, trade_argv

GOLDEN = ROOT / "tests" / "golden" / "enrich"


def sim(count: int, *extra: str, seed: int = 7) -> bytes:
    result = run_trade(*sim_args(count, "--quiet", *extra, seed=seed))
    assert result.returncode == 0, result.stderr
    return result.stdout


def values(records: list[dict[str, Any]], name: str) -> np.ndarray:
    return np.array([r.get(name, np.nan) for r in records], dtype=float)


# ---------------------------------------------------------------------------------------------
# Options and columns


def test_defaults_and_summary() -> None:
    result = invoke(["enrich"], input=sim(300, "--symbols", "AAPL,TSLA,GME"))
    assert result.exit_code == 0, result.stderr
    records = ndjson_records(result.stdout_bytes)
    assert len(records) == 300
    trades = [r for r in records if r["type"] == "trade"]
    quotes = [r for r in records if r["type"] == "quote"]
    assert all("vwap" in r and "day_volume" in r and "gap_pct" in r for r in trades)
    assert any("sma_20" in r and "ema_9" in r and "rsi_14" in r and "volume_ratio" in r for r in trades)
    assert all("mid" in r and "spread" in r and "sma_20" not in r for r in quotes)
    assert result.stderr.startswith("trade enrich: 300 in, 300 out, 0 rejected, ")
    assert " symbols in " in result.stderr


def test_periods_and_names() -> None:
    args = ["--sma", "5,10", "--ema", "none", "--rsi", "3", "--volume-avg", "4,8"]
    args += ["--macd", "3,6,2", "--macd", "2,5,3", "--bbands", "5,2.5", "--bbands", "6"]
    result = invoke(["enrich", *args, "--quiet"], input=sim(400, "--types", "trades", "--symbols", "AAPL"))
    assert result.exit_code == 0, result.stderr
    last = ndjson_records(result.stdout_bytes)[-1]
    for name in (
        "sma_5",
        "sma_10",
        "rsi_3",
        "avg_volume_4",
        "avg_volume_8",
        "macd_3_6_2",
        "macd_signal_3_6_2",
        "macd_hist_3_6_2",
        "macd_2_5_3",
        "bb_upper_5_2p5",
        "bb_middle_5_2p5",
        "bb_lower_5_2p5",
        "bb_upper_6_2",
    ):
        assert name in last, name
    assert not any(key.startswith("ema_") for key in last)
    assert last["volume_ratio"] == pytest.approx(last["volume"] / last["avg_volume_4"], rel=1e-12)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--sma", "abc"], "--sma"),
        (["--sma", "0"], "--sma"),
        (["--ema", "100001"], "--ema"),
        (["--rsi", "1"], "--rsi"),
        (["--macd", "12,26"], "--macd"),
        (["--macd", "1,26,9"], "--macd"),
        (["--bbands", "1,2"], "--bbands"),
        (["--bbands", "20,x"], "--bbands"),
        (["--bbands", "20,-1"], "--bbands"),
        (["--atr", "-3"], "--atr"),
        (["--session-start", "25:00"], "--session-start"),
        (["--session-start", "4am"], "--session-start"),
        (["--timezone", "Mars/Olympus_Mons"], "--timezone"),
        (["--checkpoint", "soon"], ""),
    ],
)
def test_bad_options_exit_2(args: list[str], option: str) -> None:
    result = invoke(["enrich", *args], input=b"")
    assert result.exit_code == 2
    assert option in result.stderr
    assert "Traceback" not in result.stderr


def test_arrow_in_arrow_out_and_format_switch() -> None:
    data = sim(500, "--format", "arrow")
    result = run_trade("enrich", "--quiet", input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout[:4] == b"\xff\xff\xff\xff"
    table = arrow_table(result.stdout)
    assert table.num_rows == 500
    assert str(table.schema.field("day_volume").type) == "int64"
    assert str(table.schema.field("sma_20").type) == "double"
    as_json = run_trade("enrich", "--quiet", "--format", "ndjson", input=data)
    records = ndjson_records(as_json.stdout)
    np.testing.assert_allclose(
        values(records, "sma_20"),
        table.column("sma_20").to_numpy(zero_copy_only=False),
        rtol=0,
        equal_nan=True,
    )


def test_bad_records_are_reported_and_the_stream_goes_on(tmp_path: Path) -> None:
    good = sim(40, "--types", "trades")
    lines = good.splitlines(keepends=True)
    bad = (
        b'{"type":"trade","symbol":"AAPL","timestamp":1795185000000000000,"price":"abc","volume":1}\n'
        b"not json\n"
    )
    errors = tmp_path / "rejects.ndjson"
    result = invoke(
        ["enrich", "--errors", str(errors)], input=b"".join(lines[:10]) + bad + b"".join(lines[10:])
    )
    assert result.exit_code == 0
    assert len(ndjson_records(result.stdout_bytes)) == 40
    assert "line 11: field 'price' is \"abc\", expected a number" in result.stderr
    assert "40 out, 2 rejected" in result.stderr
    assert len(errors.read_bytes().splitlines()) == 2
    strict = invoke(["enrich", "--strict"], input=b"".join(lines[:10]) + bad)
    assert strict.exit_code == 65
    assert len(ndjson_records(strict.stdout_bytes)) == 10


def test_empty_input() -> None:
    result = invoke(["enrich"], input=b"")
    assert result.exit_code == 0
    assert result.stdout_bytes == b""


# ---------------------------------------------------------------------------------------------
# --state and --checkpoint


def test_state_restart_continues_without_rewarming(tmp_path: Path) -> None:
    data = sim(3000, "--universe", "5", "--types", "trades")
    lines = data.splitlines(keepends=True)
    state = tmp_path / "enrich.state"
    whole_bytes = invoke(["enrich", "--quiet"], input=data).stdout_bytes
    first = invoke(["enrich", "--state", str(state), "--quiet"], input=b"".join(lines[:1700]))
    assert first.exit_code == 0 and state.exists()
    assert state.stat().st_mode & 0o777 == 0o600
    second = invoke(["enrich", "--state", str(state)], input=b"".join(lines[1700:]))
    assert second.exit_code == 0
    assert "continuing from" in second.stderr
    joined = ndjson_records(first.stdout_bytes) + ndjson_records(second.stdout_bytes)
    assert "sma_20" in joined[1700]  # no warm-up after the restart
    assert joined == ndjson_records(whole_bytes)  # every value exactly as in one run


def test_state_for_other_indicators_is_replaced_with_a_warning(tmp_path: Path) -> None:
    state = tmp_path / "enrich.state"
    data = sim(200)
    assert invoke(["enrich", "--state", str(state), "--quiet"], input=data).exit_code == 0
    other = invoke(["enrich", "--state", str(state), "--sma", "21"], input=data)
    assert other.exit_code == 0
    assert "other indicators" in other.stderr and "starting cold" in other.stderr
    again = invoke(["enrich", "--state", str(state), "--sma", "21"], input=data)
    assert "continuing from" in again.stderr


def test_damaged_state_file_warns(tmp_path: Path) -> None:
    state = tmp_path / "enrich.state"
    state.write_bytes(b"something else entirely")
    result = invoke(["enrich", "--state", str(state)], input=sim(50))
    assert result.exit_code == 0
    assert "not an enrich state file" in result.stderr
    assert state.read_bytes().startswith(b"tradecli-enrich-state\n")


def test_unreadable_and_unwritable_state(tmp_path: Path) -> None:
    result = invoke(["enrich", "--state", str(tmp_path)], input=sim(10))
    assert result.exit_code == 74
    assert "cannot read state file" in result.stderr
    missing = tmp_path / "no" / "such"
    (tmp_path / "no").write_text("a file where a directory should be")
    result = invoke(["enrich", "--state", str(missing)], input=sim(10))
    assert result.exit_code == 74
    assert "cannot write state file" in result.stderr
    assert len(ndjson_records(result.stdout_bytes)) == 10  # the records went out first


def test_checkpoint_saves_while_running(tmp_path: Path) -> None:
    state = tmp_path / "enrich.state"
    lines = sim(60, "--types", "trades").splitlines(keepends=True)
    proc = subprocess.Popen(
        trade_argv("enrich", "--state", str(state), "--checkpoint", "100ms", "--quiet"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        deadline = time.monotonic() + 30
        for line in lines:
            proc.stdin.write(line)
            proc.stdin.flush()
            proc.stdout.readline()  # each record comes back before the next goes in
            if state.exists():
                break
            time.sleep(0.02)
            assert time.monotonic() < deadline, "no checkpoint was written"
        assert state.exists()
        assert proc.poll() is None  # saved while still running
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_no_checkpoint_before_exit_with_zero(tmp_path: Path) -> None:
    state = tmp_path / "enrich.state"
    proc = subprocess.Popen(
        trade_argv("enrich", "--state", str(state), "--checkpoint", "0", "--quiet"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=child_env(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    for line in sim(20, "--types", "trades").splitlines(keepends=True):
        proc.stdin.write(line)
        proc.stdin.flush()
        proc.stdout.readline()
    assert not state.exists()
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    assert state.exists()


# ---------------------------------------------------------------------------------------------
# Golden files (run by tests/test_golden.py): what they must hold besides matching


def test_golden_inputs_pass_through() -> None:
    """Every input field of every golden case comes out unchanged (vwap of bars: as bar_vwap)."""
    for source in GOLDEN.glob("*.in.ndjson"):
        ins = ndjson_records(source.read_bytes())
        outs = ndjson_records((GOLDEN / source.name.replace(".in.", ".out.")).read_bytes())
        for before, after in zip(ins, outs, strict=True):
            for key, value in before.items():
                if before["type"] == "bar" and key == "vwap":
                    assert after["bar_vwap"] == value
                else:
                    assert after[key] == value, (source.name, key)


def test_golden_session_reset() -> None:
    records = ndjson_records((GOLDEN / "session_reset.out.ndjson").read_bytes())
    assert [r["day_volume"] for r in records] == [100, 400, 500, 200, 400, 1000]
    assert records[3]["vwap"] == 240.0 and records[3]["day_high"] == 240.0
    assert "sma_2" in records[3]  # averages run on across the session boundary


def test_orjson_reads_every_golden_output() -> None:
    for path in GOLDEN.glob("*.out.ndjson"):
        for line in path.read_bytes().splitlines():
            orjson.loads(line)
