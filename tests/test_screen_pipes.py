"""trade screen as a real process between real pipes: pipelines, signals, restarts, closed pipes."""

from __future__ import annotations

import select
import signal
import subprocess
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from conftest import SESSION_DATE, arrow_table, child_env, ndjson_records, sim_args, trade_argv
from screen_data import batches_of, enriched_sim, records_batch, to_arrow, to_ndjson

from tradecli.sources.sim import SimConfig, SimMarket, universe
from tradecli.stages.screen import ScreenOptions, configure, screen

pytestmark = pytest.mark.pipes


def planted_gaps(seed: int = 7) -> set[str]:
    """The symbols the simulator gaps up by 10-30 % at the open of SESSION_DATE."""
    market = SimMarket(SimConfig(universe(None, None), seed=seed, day=date.fromisoformat(SESSION_DATE)))
    opening = np.exp(market.log_mid) / market.prev_close - 1
    return {
        str(s) for s, gap, g in zip(market.names, opening, market.gapper, strict=True) if g and gap >= 0.1
    }


def pipeline(
    *stages: list[str], stdin: Any = subprocess.DEVNULL, timeout: float = 120
) -> tuple[bytes, list[int], bytes]:
    """Run stages joined by pipes; stdout of the last, every exit code, and all stderr."""
    procs: list[subprocess.Popen[bytes]] = []
    upstream = stdin
    for i, argv in enumerate(stages):
        proc = subprocess.Popen(
            trade_argv(*argv), stdin=upstream, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env()
        )
        if i > 0 and upstream is not None:
            upstream.close()
        upstream = proc.stdout
        procs.append(proc)
    out, err = procs[-1].communicate(timeout=timeout)
    errors = err
    for proc in procs[:-1]:
        proc.wait(timeout=timeout)
        assert proc.stderr is not None
        errors += proc.stderr.read()
    return out, [p.returncode for p in procs], errors


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["ndjson", "arrow"])
def test_sim_enrich_screen_finds_the_planted_gaps(tmp_path: Path, fmt: str) -> None:
    out, codes, errors = pipeline(
        sim_args(20_000, "--format", fmt),
        ["enrich"],
        ["screen", "-s", "gap_and_go", "--state-dir", str(tmp_path), "--format", "ndjson"],
    )
    assert codes == [0, 0, 0], errors
    signals = ndjson_records(out)
    assert {s["symbol"] for s in signals} == planted_gaps()
    assert all(s["strategy"] == "gap_and_go" and s["side"] == "long" for s in signals)
    assert all((s["price"] - s["prev_close"]) / s["prev_close"] >= 0.1 for s in signals)
    assert all(s["volume_ratio"] >= 3 and s["price"] >= s["vwap"] for s in signals)


@pytest.fixture(scope="module")
def enriched() -> pa.Table:
    return enriched_sim(30_000)


def core_signals(table: pa.Table, **options: Any) -> list[dict[str, Any]]:
    strategies = configure(ScreenOptions(**options))
    out = list(screen(batches_of(table, 4096), strategies=strategies))
    if not out:
        return []
    table = pa.Table.from_batches(out)
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.int64()))
    return [{k: v for k, v in row.items() if v is not None} for row in table.to_pylist()]


def test_generated_enriched_records_through_a_real_screen(tmp_path: Path, enriched: pa.Table) -> None:
    """What runs today: enriched NDJSON made here, replayed by ingest, screened by a real process."""
    path = tmp_path / "enriched.ndjson"
    path.write_bytes(to_ndjson(batches_of(enriched, 4096)))
    out, codes, errors = pipeline(
        ["ingest", "--source", "file", str(path)], ["screen", "--state-dir", str(tmp_path / "state")]
    )
    assert codes == [0, 0], errors
    signals = ndjson_records(out)
    assert {s["strategy"] for s in signals} == {
        "gap_and_go",
        "hod_breakout",
        "vwap_reclaim",
        "rsi_extreme",
        "volume_spike",
    }
    expected = core_signals(enriched)
    assert [(s["strategy"], s["symbol"], s["timestamp"]) for s in signals] == [
        (s["strategy"], s["symbol"], s["timestamp"]) for s in expected
    ]
    gaps = {s["symbol"] for s in signals if s["strategy"] == "gap_and_go"}
    assert gaps == planted_gaps()
    assert b"trade screen: 30,000 in, " in errors


def test_arrow_in_arrow_out(tmp_path: Path, enriched: pa.Table) -> None:
    data = to_arrow(batches_of(enriched, 4096))
    result = subprocess.run(
        trade_argv("screen", "--state-dir", str(tmp_path), "--pass-through"),
        input=data,
        capture_output=True,
        env=child_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"\xff\xff\xff\xff")
    table = arrow_table(result.stdout)
    types = table.column("type").to_pylist()
    assert types.count("trade") + types.count("quote") == enriched.num_rows
    signal_rows = [i for i, t in enumerate(types) if t == "signal"]
    assert len(signal_rows) == len(core_signals(enriched))
    symbols = table.column("symbol").to_pylist()
    stamps = table.column("timestamp").cast(pa.int64()).to_pylist()
    for i in signal_rows:  # each signal right after the record that fired it
        assert types[i - 1] in ("trade", "signal") and symbols[i - 1] == symbols[i]
        assert stamps[i - 1] == stamps[i]


def test_a_signal_leaves_before_the_input_ends(tmp_path: Path) -> None:
    """Signals are flushed as they fire, not when the pipe closes."""
    line = to_ndjson(
        [
            records_batch(
                [
                    {
                        "type": "trade",
                        "symbol": "ABC",
                        "timestamp": 1_795_185_060_000_000_000,
                        "price": 112.0,
                        "prev_close": 100.0,
                        "vwap": 110.0,
                        "volume_ratio": 4.0,
                    }
                ]
            )
        ]
    )
    proc = subprocess.Popen(
        trade_argv("screen", "-s", "gap_and_go", "--state-dir", str(tmp_path)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    started = time.monotonic()
    proc.stdin.write(line)
    proc.stdin.flush()
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready, "no signal before EOF"
    signal_line = proc.stdout.readline()
    latency = time.monotonic() - started
    proc.stdin.close()
    proc.wait(timeout=30)
    record = orjson.loads(signal_line)
    assert record["type"] == "signal" and record["symbol"] == "ABC"
    assert latency < 30  # (measured, not asserted tightly: the machine is shared)


class Feeder:
    """Write bytes into a process's stdin from a thread and read its NDJSON output line by line."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            trade_argv(*args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
        )
        self.lines: list[bytes] = []

    def feed(self, data: bytes) -> None:
        def write() -> None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

        thread = threading.Thread(target=write, daemon=True)
        thread.start()

    def read_until(self, count: int, timeout: float = 120) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while len(self.lines) < count:
            assert time.monotonic() < deadline, f"only {len(self.lines)} of {count} lines"
            line = self.proc.stdout.readline()
            assert line, "the stage ended early"
            self.lines.append(line)

    def stop(self, signum: int) -> tuple[int, bytes]:
        self.proc.send_signal(signum)
        self.proc.wait(timeout=60)
        assert self.proc.stderr is not None
        return self.proc.returncode, self.proc.stderr.read()

    def signals(self) -> list[dict[str, Any]]:
        return [r for r in ndjson_records(b"".join(self.lines)) if r["type"] == "signal"]


def keys(signals: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return [(s["strategy"], s["symbol"], s["timestamp"]) for s in signals]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)]
)
def test_stop_and_restart_the_same_day(tmp_path: Path, enriched: pa.Table, signum: int, code: int) -> None:
    """Stopped (or killed) after the first half and restarted: the signals of one uninterrupted run.

    After SIGTERM/SIGINT the snapshot holds everything and the second half follows on. After
    SIGKILL only the journal is left, so the restarted screen is given the whole session again:
    what it fired before the kill it does not fire again, and the daily counts go on.
    """
    limits = ["--max-per-day", "6", "--checkpoint", "1h"]
    expected = core_signals(enriched, max_per_day=6)
    half = enriched.num_rows // 2
    first, second = enriched.slice(0, half), enriched.slice(half)
    first_signals = core_signals(first, max_per_day=6)
    state = ["--state-dir", str(tmp_path)]
    run1 = Feeder(["screen", "--pass-through", *state, *limits])
    run1.feed(to_ndjson(batches_of(first, 4096)))
    run1.read_until(half + len(first_signals))  # everything of the first half is through
    returncode, errors = run1.stop(signum)
    assert returncode == code
    assert b"Traceback" not in errors
    again = enriched if signum == signal.SIGKILL else second
    result = subprocess.run(
        trade_argv("screen", *state, *limits),
        input=to_ndjson(batches_of(again, 4096)),
        capture_output=True,
        env=child_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert keys(run1.signals()) == keys(first_signals)
    assert keys(run1.signals()) + keys(ndjson_records(result.stdout)) == keys(expected)
    assert "over daily limit" in result.stderr.decode()  # the counts carried over and bind


def test_head_closing_the_pipe_ends_screen_quietly(tmp_path: Path, enriched: pa.Table) -> None:
    path = tmp_path / "in.ndjson"
    path.write_bytes(to_ndjson(batches_of(enriched.slice(0, 20_000), 500)))
    with open(path, "rb") as source:
        screen_proc = subprocess.Popen(
            trade_argv("screen", "--pass-through", "--state-dir", str(tmp_path / "s")),
            stdin=source,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
        )
        head = subprocess.Popen(["head", "-n1"], stdin=screen_proc.stdout, stdout=subprocess.PIPE)
        assert screen_proc.stdout is not None
        screen_proc.stdout.close()
        first, _ = head.communicate(timeout=60)
        _, errors = screen_proc.communicate(timeout=60)
    assert orjson.loads(first)["type"] in ("trade", "quote")
    assert screen_proc.returncode == 141
    assert errors == b""


def test_bad_records_are_reported_and_the_stream_goes_on(tmp_path: Path) -> None:
    good = {
        "type": "trade",
        "symbol": "ABC",
        "timestamp": 1_795_185_060_000_000_000,
        "price": 112.0,
        "prev_close": 100.0,
        "vwap": 110.0,
        "volume_ratio": 4.0,
    }
    lines = [b'{"type":"trade","symbol":"ABC","price":"abc"}', orjson.dumps(good)]
    result = subprocess.run(
        trade_argv("screen", "--state-dir", str(tmp_path)),
        input=b"\n".join(lines) + b"\n",
        capture_output=True,
        env=child_env(),
        timeout=60,
    )
    assert result.returncode == 0
    assert b"trade screen: line 1: field 'price' is \"abc\", expected a number" in result.stderr
    assert [r["symbol"] for r in ndjson_records(result.stdout)] == ["ABC"]


def test_checkpoints_rewrite_the_snapshot_while_running(tmp_path: Path, enriched: pa.Table) -> None:
    from tradecli.screener import StateFiles

    run = Feeder(["screen", "--pass-through", "--state-dir", str(tmp_path), "--checkpoint", "100ms"])
    first, second = enriched.slice(0, 5_000), enriched.slice(5_000, 5_000)
    run.feed(to_ndjson(batches_of(first, 5_000)))
    run.read_until(5_000)
    snapshot = tmp_path / StateFiles.SNAPSHOT
    time.sleep(0.3)
    run.feed(to_ndjson(batches_of(second, 5_000)))
    run.read_until(10_000)
    deadline = time.monotonic() + 30
    while not snapshot.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert snapshot.exists(), "no checkpoint while running"
    assert run.proc.poll() is None  # still running: the snapshot came from a checkpoint
    state = orjson.loads(snapshot.read_bytes())
    assert len(state["symbols"]) == len(set(enriched.slice(0, 10_000).column("symbol").to_pylist()))
    returncode, _ = run.stop(signal.SIGKILL)
    assert returncode == -9
