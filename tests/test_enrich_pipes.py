"""trade enrich between real processes joined by real pipes, in both formats."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import arrow_table, child_env, ndjson_records, sim_args, trade_argv

from tradecli.indicators import IndicatorState, Spec

pytestmark = [pytest.mark.pipes, pytest.mark.slow]


def pipeline(*stages: list[str], timeout: float = 120) -> tuple[bytes, list[int], list[bytes]]:
    """Run stages joined by pipes; the last one's stdout, every exit code and every stderr."""
    procs: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in stages]
        return _run(stages, logs, procs, timeout)


def _run(
    stages: tuple[list[str], ...], logs: list[Any], procs: list[subprocess.Popen[bytes]], timeout: float
) -> tuple[bytes, list[int], list[bytes]]:
    upstream = None
    for argv, log in zip(stages, logs, strict=True):
        proc = subprocess.Popen(
            trade_argv(*argv), stdin=upstream, stdout=subprocess.PIPE, stderr=log, env=child_env()
        )
        if upstream is not None:
            upstream.close()
        upstream = proc.stdout
        procs.append(proc)
    out, _ = procs[-1].communicate(timeout=timeout)
    errors = []
    for proc, log in zip(procs, logs, strict=True):
        proc.wait(timeout=timeout)
        log.seek(0)
        errors.append(log.read())
    return out, [p.returncode for p in procs], errors


def engine_on(table: pa.Table, spec: Spec = Spec()) -> pa.Table:
    engine = IndicatorState(spec)
    return pa.Table.from_batches([engine.add(b) for b in table.to_batches(max_chunksize=5000)])


@pytest.mark.parametrize("fmt", ["ndjson", "arrow"])
def test_ingest_enrich_reader(fmt: str) -> None:
    """ingest | enrich --macd | ingest --source file - : the enriched stream reads back as records."""
    extra = ["--format", "arrow"] if fmt == "arrow" else []
    sim = sim_args(20_000, "--universe", "30", "--quiet", *extra)
    out, codes, errors = pipeline(
        sim,
        ["enrich", "--macd", "12,26,9", "--bbands", "20,2"],
        ["ingest", "--source", "file", "-", "--quiet"],
    )
    assert codes == [0, 0, 0], errors
    assert errors[1].startswith(b"trade enrich: 20,000 in, 20,000 out, 0 rejected, 30 symbols in ")
    if fmt == "arrow":
        assert out[:4] == b"\xff\xff\xff\xff"
        table = arrow_table(out)
        got = {name: table.column(name).to_numpy(zero_copy_only=False) for name in ("sma_20", "macd_12_26_9")}
    else:
        records = ndjson_records(out)
        got = {
            name: np.array([r.get(name, np.nan) for r in records], dtype=float)
            for name in ("sma_20", "macd_12_26_9")
        }
    source, _, _ = pipeline([*sim_args(20_000, "--universe", "30", "--quiet"), "--format", "arrow"])
    want = engine_on(arrow_table(source), Spec(macd=((12, 26, 9),), bbands=((20, 2.0),)))
    for name, values in got.items():
        expected = want.column(name).to_numpy(zero_copy_only=False)
        # the pipe cut the stream into other batches than the engine's here: the same values all the same
        np.testing.assert_array_equal(values, expected, err_msg=name)


def test_downstream_closed_exits_141_quietly() -> None:
    out, codes, errors = pipeline(
        sim_args(200_000, "--quiet"), ["enrich"], ["ingest", "--source", "file", "-", "-n", "1"]
    )
    assert codes[1] == 141
    assert errors[1] == b""
    assert len(ndjson_records(out)) == 1


def test_one_record_in_one_record_out_before_eof() -> None:
    """A quiet stream is passed on record by record: each line comes out before the next goes in."""
    lines = subprocess.run(
        trade_argv(*sim_args(5, "--quiet", "--types", "trades")),
        capture_output=True,
        env=child_env(),
        check=True,
    ).stdout.splitlines(keepends=True)
    proc = subprocess.Popen(
        trade_argv("enrich", "--quiet"), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env()
    )
    assert proc.stdin is not None and proc.stdout is not None
    latencies = []
    for line in lines:
        started = time.perf_counter()
        proc.stdin.write(line)
        proc.stdin.flush()
        record = ndjson_records(proc.stdout.readline())[0]
        latencies.append(time.perf_counter() - started)
        assert "vwap" in record
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    print(f"enrich latency per record: median {sorted(latencies)[2] * 1000:.1f} ms")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_state(tmp_path: Path, signum: int, code: int) -> None:
    state = tmp_path / "enrich.state"
    feed = subprocess.Popen(
        trade_argv("ingest", "--rate", "2000", "--quiet"), stdout=subprocess.PIPE, env=child_env()
    )
    proc = subprocess.Popen(
        trade_argv("enrich", "--state", str(state), "--checkpoint", "0"),
        stdin=feed.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    assert feed.stdout is not None and proc.stdout is not None
    feed.stdout.close()
    try:
        assert proc.stdout.readline()  # running
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
    finally:
        feed.kill()
        feed.wait()
    assert proc.returncode == code
    assert b"Traceback" not in stderr
    restored = IndicatorState()
    restored.restore(state.read_bytes())
    assert restored.symbols > 0
