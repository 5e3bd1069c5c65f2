"""Real `trade` processes joined by real pipes: closed pipes, signals, sniffing, flushing."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from conftest import SESSION_DATE, arrow_table, child_env, ndjson_records, trade_argv

pytestmark = pytest.mark.pipes
NS = 1_795_444_200_000_000_000


def shell(script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    trade = " ".join(trade_argv())
    return subprocess.run(
        ["bash", "-c", script.replace("trade ", trade + " ")],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )


def test_head_closes_the_pipe_quietly() -> None:
    result = shell(
        "trade ingest --seed 1 2>err.txt | head -n 3 >/dev/null; echo ${PIPESTATUS[0]}; cat err.txt;"
        " rm -f err.txt"
    )
    assert result.stdout.splitlines() == ["141"]


def test_head_on_arrow_output_and_through_two_hops() -> None:
    result = shell(
        "trade ingest --seed 1 --format arrow 2>e1 | trade ingest --source file - 2>e2 | head -c 100 "
        ">/dev/null; echo ${PIPESTATUS[@]}; cat e1 e2; rm -f e1 e2"
    )
    assert result.stdout.splitlines() == ["141 141 0"]


def test_sniffing_through_two_hops_keeps_the_format() -> None:
    for fmt, magic in (("arrow", b"\xff\xff\xff\xff"), ("ndjson", b"{")):
        first = subprocess.Popen(
            trade_argv(
                "ingest", "--seed", "3", "--date", SESSION_DATE, "--count", "5000", "--format", fmt, "--quiet"
            ),
            stdout=subprocess.PIPE,
            env=child_env(),
        )
        second = subprocess.Popen(
            trade_argv("ingest", "--source", "file", "-", "--quiet"),
            stdin=first.stdout,
            stdout=subprocess.PIPE,
            env=child_env(),
        )
        assert first.stdout is not None
        first.stdout.close()
        third = subprocess.run(
            trade_argv("ingest", "--source", "file", "-", "--quiet"),
            stdin=second.stdout,
            capture_output=True,
            env=child_env(),
            timeout=60,
        )
        assert first.wait() == 0 and second.wait() == 0 and third.returncode == 0
        assert third.stdout.startswith(magic)
        count = arrow_table(third.stdout).num_rows if fmt == "arrow" else len(ndjson_records(third.stdout))
        assert count == 5000


def endless(*extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        trade_argv("ingest", "--seed", "2", "--rate", "2000", *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_ends_cleanly_after_flushing(signum: int, code: int) -> None:
    proc = endless()
    time.sleep(1.2)  # started, and writing at 2,000 records a second
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == code
    lines = out.splitlines()
    assert len(lines) > 100
    assert all(orjson.loads(line)["source"] == "sim" for line in lines)  # no half line
    assert b"Traceback" not in err
    assert err.decode().splitlines()[-1].startswith("trade ingest: ")  # the closing summary


def test_sigterm_on_arrow_output_closes_the_stream() -> None:
    proc = endless("--format", "arrow")
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, _err = proc.communicate(timeout=20)
    assert proc.returncode == 143
    assert out.endswith(b"\xff\xff\xff\xff\x00\x00\x00\x00")  # end-of-stream marker written
    assert arrow_table(out).num_rows > 0


def test_sigterm_while_waiting_for_input() -> None:
    proc = subprocess.Popen(
        trade_argv("ingest", "--source", "file", "-"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    time.sleep(1.0)  # started and blocked reading an idle pipe
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 143
    assert b"Traceback" not in err


@pytest.mark.parametrize("fmt", ["ndjson", "arrow"])
def test_each_record_is_passed_on_before_the_input_ends(fmt: str) -> None:
    """A record written into a quiet pipe comes out the other end at once, not at EOF."""
    proc = subprocess.Popen(
        trade_argv("ingest", "--source", "file", "-", "--format", fmt, "--quiet"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=child_env(),
    )
    assert proc.stdin is not None and proc.stdout is not None
    latencies = []
    reader = None
    for i in range(3):
        line = orjson.dumps({"symbol": "A", "timestamp": NS + i, "price": 1.0 + i}) + b"\n"
        sent = time.monotonic()
        proc.stdin.write(line)
        proc.stdin.flush()
        if fmt == "ndjson":
            out = proc.stdout.readline()
            assert orjson.loads(out)["price"] == 1.0 + i
        else:
            if reader is None:
                reader = pa.ipc.open_stream(proc.stdout)
            batch = reader.read_next_batch()
            assert batch.column("price").to_pylist() == [1.0 + i]
        latencies.append(time.monotonic() - sent)
    proc.stdin.close()
    proc.wait(timeout=10)
    print(f"one-record latency through ingest ({fmt}): {[f'{x * 1000:.1f} ms' for x in latencies]}")
    assert proc.returncode == 0


def test_no_traceback_when_stderr_is_closed_too() -> None:
    result = shell("trade ingest --seed 1 2>&- | head -n 1 >/dev/null; echo ${PIPESTATUS[0]}")
    assert result.stdout.strip() == "141"


def test_arrow_reader_accepts_batches_one_by_one() -> None:
    """A writer that flushes one small batch at a time is read as it goes (no EOF needed)."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        trade_argv("ingest", "--source", "file", "-", "--quiet", "--format", "ndjson"),
        stdin=read_fd,
        stdout=subprocess.PIPE,
        env=child_env(),
    )
    os.close(read_fd)
    schema = pa.schema([("symbol", pa.string()), ("timestamp", pa.int64()), ("price", pa.float64())])
    sink = io.BytesIO()
    writer = pa.ipc.new_stream(sink, schema)
    writer.write_batch(pa.record_batch([["A"], [NS], [1.0]], schema=schema))
    os.write(write_fd, sink.getvalue())
    assert proc.stdout is not None
    assert orjson.loads(proc.stdout.readline())["symbol"] == "A"
    os.close(write_fd)
    proc.wait(timeout=10)
    assert proc.returncode == 0


def test_small_arrow_messages_already_waiting_go_on_together(tmp_path: Path) -> None:
    """2,000 one-record messages that are all there at once come out as a few batches, in order
    and complete, across a change of stream (and so of schema)."""
    schema = pa.schema(
        [
            ("symbol", pa.dictionary(pa.int32(), pa.string())),
            ("timestamp", pa.int64()),
            ("price", pa.float64()),
        ]
    )
    wider = schema.append(pa.field("note", pa.string()))
    sink = io.BytesIO()
    for part, fields in enumerate((schema, wider)):
        writer = pa.ipc.new_stream(sink, fields)
        for i in range(1000):
            columns = [pa.array([f"S{i % 7}"]).dictionary_encode(), [NS + i], [100.0 + part * 1000 + i]]
            writer.write_batch(pa.record_batch(columns + ([["n"]] if part else []), schema=fields))
        writer.close()
    source = tmp_path / "small.arrows"
    source.write_bytes(sink.getvalue())
    with source.open("rb") as stdin:
        done = subprocess.run(
            trade_argv("ingest", "--source", "file", "-", "--quiet", "--format", "arrow"),
            stdin=stdin,
            capture_output=True,
            env=child_env(),
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    batches = []
    stream = io.BytesIO(done.stdout)
    while stream.tell() < len(done.stdout):
        batches += list(pa.ipc.open_stream(stream))
    assert 2 <= len(batches) <= 4  # joined, but never across the change of schema
    prices = [p for b in batches for p in b.column("price").to_pylist()]
    assert prices == [100.0 + i for i in range(1000)] + [1100.0 + i for i in range(1000)]
    symbols = [s for b in batches for s in b.column("symbol").cast(pa.string()).to_pylist()]
    assert symbols == [f"S{i % 7}" for i in range(1000)] * 2


@pytest.mark.parametrize(
    ("fmt", "stage"),
    [("ndjson", "enrich"), ("arrow", "enrich"), ("ndjson", "screen --pass-through"), ("arrow", "store")],
)
def test_sigterm_mid_stream_loses_no_record_already_read(fmt: str, stage: str, tmp_path: Path) -> None:
    """Upstream goes on writing; the stage stops reading, and writes (or stores) every record it
    counted in: none is left in its read-ahead."""
    if stage == "store":
        stage = f"store {tmp_path / 'store'}"
    elif stage.startswith("screen"):
        stage += f" --state-dir {tmp_path / 'screen'}"
    upstream = subprocess.Popen(
        trade_argv("ingest", "--seed", "3", "--rate", "40000", "--quiet", "--format", fmt),
        stdout=subprocess.PIPE,
        env=child_env(),
    )
    proc = subprocess.Popen(
        trade_argv(*stage.split()),
        stdin=upstream.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    assert upstream.stdout is not None and proc.stdout is not None and proc.stderr is not None
    upstream.stdout.close()
    # read the output as it comes: the stage keeps the stream's pace instead of waiting on a full
    # pipe, where how much it had read would depend on the producer's timing more than on it
    chunks: list[bytes] = []
    stdout = proc.stdout
    drain = threading.Thread(target=lambda: chunks.extend(iter(lambda: stdout.read(1 << 16), b"")))
    drain.start()
    time.sleep(2.0)  # started, and reading 40,000 records a second
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    proc.wait(timeout=30)
    drain.join(timeout=30)
    out = b"".join(chunks)
    upstream.kill()
    upstream.wait()
    assert proc.returncode == 143, err
    summary = err.decode().splitlines()[-1]
    counted_in = int(summary.split(" in,")[0].rsplit(" ", 1)[-1].replace(",", ""))
    assert counted_in > 10_000 and ", 0 rejected" in summary, summary
    if stage.startswith("store"):
        import duckdb

        glob = str(tmp_path / "store" / "**" / "*.parquet")
        [(stored,)] = duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall()
        assert stored == counted_in
    else:
        types = [r["type"] for r in ndjson_records(out)] if fmt == "ndjson" else None
        if types is None:
            types = arrow_table(out).column("type").to_pylist()
        assert sum(t in ("trade", "quote") for t in types) == counted_in
