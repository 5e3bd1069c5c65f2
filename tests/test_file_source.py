"""ingest --source file: every file format, column names, time units, filters and paced replay."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import arrow_table, invoke, ndjson_records, run_trade, sim_args

NS = 1_795_444_200_000_000_000


def replay(*args: str, input: bytes | None = None):  # type: ignore[no-untyped-def]
    return invoke(["ingest", "--source", "file", *args], input=input)


def symbols_of(result) -> list[str]:  # type: ignore[no-untyped-def]
    data = result.stdout_bytes
    if data[:4] == b"\xff\xff\xff\xff":
        return arrow_table(data).column("symbol").to_pylist()  # type: ignore[no-any-return]
    return [r["symbol"] for r in ndjson_records(data)]


def test_csv_with_spelled_out_headers(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(
        "Ticker,Time,Last Price,Size,Exchange,Note\n"
        "aapl,2026-11-23T14:30:00Z,230.10,100,12,opening print\n"
        "TSLA,2026-11-23T14:30:01.5Z,250.00,7,4,\n"
    )
    result = replay(str(path))
    assert result.exit_code == 0, result.stderr
    records = ndjson_records(result.stdout_bytes)
    assert [r["symbol"] for r in records] == ["AAPL", "TSLA"]
    assert records[0]["price"] == 230.10 and records[0]["volume"] == 100 and records[0]["exchange"] == 12
    assert records[0]["timestamp"] == NS and records[1]["timestamp"] == NS + 1_500_000_000
    assert records[0]["type"] == "trade" and records[0]["source"] == "file"
    assert records[0]["Note"] == "opening print"
    assert "recv_ts" in records[0]


def test_csv_bad_rows_named_by_line(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(
        "symbol,timestamp,price\nA,1795444200,1.5\nB,1795444200,abc\nC,1795444200,2.5\nD,1795444200\n"
    )
    result = replay(str(path))
    assert symbols_of(result) == ["A", "C"]
    stderr = result.stderr
    assert f"{path} line 3: field 'price' is \"abc\", expected a number" in stderr
    assert "CSV row 'D,1795444200' has 2 fields, expected 3" in stderr
    assert "4 in, 2 out, 2 rejected" in stderr


def test_csv_lists_and_nanosecond_text_keep_every_digit(tmp_path: Path) -> None:
    path = tmp_path / "polygon.csv"
    path.write_text(
        "symbol,sip_timestamp,price,size,conditions\n"
        'A,1795444200123456789,1.5,1,"12,37"\n'
        "B,1795444200123456001,1.5,1,37\n"
        "C,1795444200000000001,1.5,1,\n"
        "D,1795444200000000002,1.5,1,[12 37]\n"
        'E,1795444200000000003,1.5,1,"[12, 37.0]"\n'
        "F,1795444200000000004,1.5,1,12;x\n"
    )
    result = replay(str(path))
    records = ndjson_records(result.stdout_bytes)
    assert [r["symbol"] for r in records] == ["A", "B", "C", "D", "E"]
    assert [r.get("conditions") for r in records] == [[12, 37], [37], None, [12, 37], [12, 37]]
    assert records[0]["timestamp"] == 1795444200123456789 and records[1]["timestamp"] == 1795444200123456001
    assert "line 7: field 'conditions' is \"12;x\", expected a list of whole numbers" in result.stderr


def test_a_byte_order_mark_is_not_data(tmp_path: Path) -> None:
    line = b'{"symbol":"A","timestamp":1795444200,"price":1.5}\n'
    path = tmp_path / "ticks"  # no extension: the content decides
    path.write_bytes(b"\xef\xbb\xbf" + line + line)
    for result in (replay(str(path)), replay("-", input=path.read_bytes())):
        assert result.exit_code == 0 and "0 rejected" in result.stderr, result.stderr
        assert symbols_of(result) == ["A", "A"]


def test_tsv(tmp_path: Path) -> None:
    path = tmp_path / "quotes.tsv"
    path.write_text("sym\tts\tbid_price\task_price\nMSFT\t1795444200000\t420.1\t420.2\n")
    records = ndjson_records(replay(str(path)).stdout_bytes)
    assert records == [
        {
            "sym": "MSFT",
            "ts": NS,
            "bid": 420.1,
            "ask": 420.2,
            "type": "quote",
            "source": "file",
            "recv_ts": records[0]["recv_ts"],
        }
    ] or (records[0]["type"] == "quote" and records[0]["bid"] == 420.1)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_numeric_time_units(tmp_path: Path, unit: str) -> None:
    value = {"s": NS // 10**9, "ms": NS // 10**6, "us": NS // 10**3, "ns": NS}[unit]
    path = tmp_path / "t.ndjson"
    path.write_bytes(orjson.dumps({"symbol": "A", "ts": value, "price": 1.0}) + b"\n")
    assert ndjson_records(replay(str(path)).stdout_bytes)[0]["timestamp"] == NS


def test_parquet_and_arrow_files(tmp_path: Path) -> None:
    table = pa.table(
        {
            "Symbol": ["A", "B", "C"],
            "Timestamp": pa.array([NS, NS + 1, NS + 2], pa.int64()),
            "Price": [1.0, -2.0, 3.0],
            "desk": ["x", "y", "z"],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    with pa.ipc.new_file(tmp_path / "t.arrow", table.schema) as writer:
        writer.write_table(table)
    with pa.ipc.new_stream(tmp_path / "t.arrows", table.schema) as writer:
        writer.write_table(table)
    for name in ("t.parquet", "t.arrow", "t.arrows"):
        result = replay(str(tmp_path / name), "--format", "arrow")
        out = arrow_table(result.stdout_bytes)
        assert out.column("symbol").to_pylist() == ["A", "C"], name
        assert out.column("desk").to_pylist() == ["x", "z"]
        assert f"{tmp_path / name}" in result.stderr and "'price' is -2.0" in result.stderr


def test_several_files_in_order_and_stdin(tmp_path: Path) -> None:
    first = tmp_path / "a.ndjson"
    first.write_bytes(b'{"symbol":"A","timestamp":%d,"price":1}\n' % NS)
    second = tmp_path / "b.csv"
    second.write_text(f"symbol,timestamp,price\nB,{NS},2\n")
    result = replay(str(first), "-", str(second), input=b'{"symbol":"S","timestamp":%d,"price":3}\n' % NS)
    assert symbols_of(result) == ["A", "S", "B"]


def test_filters(tmp_path: Path) -> None:
    data = invoke(sim_args(2000, "--quiet")).stdout_bytes
    path = tmp_path / "sim.ndjson"
    path.write_bytes(data)
    result = replay(str(path), "--symbols", "aapl,tsla", "--types", "quotes")
    records = ndjson_records(result.stdout_bytes)
    assert records and {r["symbol"] for r in records} <= {"AAPL", "TSLA"}
    assert {r["type"] for r in records} == {"quote"}
    limited = replay(str(path), "--count", "7")
    assert len(ndjson_records(limited.stdout_bytes)) == 7


def test_replay_speed_follows_recorded_time(tmp_path: Path) -> None:
    lines = [
        orjson.dumps({"symbol": "A", "timestamp": NS + i * 200_000_000, "price": 1.0}) for i in range(11)
    ]
    path = tmp_path / "two-seconds.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    started = time.monotonic()
    result = run_trade("ingest", "--source", "file", str(path), "--speed", "4", "--quiet")
    elapsed = time.monotonic() - started
    assert result.returncode == 0 and result.stdout.count(b"\n") == 11
    assert elapsed >= 0.5  # 2 s of recorded time at 4x; start-up adds to it, never subtracts
    fast = time.monotonic()
    run_trade("ingest", "--source", "file", str(path), "--speed", "max", "--quiet")
    assert time.monotonic() - fast < elapsed
    assert invoke(["ingest", "--source", "file", str(path), "--speed", "0"]).exit_code == 2


def test_no_progress_bar_on_a_pipe(tmp_path: Path) -> None:
    path = tmp_path / "sim.ndjson"
    path.write_bytes(invoke(sim_args(3000, "--quiet")).stdout_bytes)
    result = run_trade("ingest", "--source", "file", str(path))
    assert result.stderr.decode().count("\n") == 1  # the summary only


def test_progress_bar_on_a_terminal_goes_to_stderr(tmp_path: Path) -> None:
    """On a terminal a long replay shows a progress bar - on stderr, never mixed into the records."""
    import os
    import pty
    import subprocess

    from conftest import child_env, trade_argv

    path = tmp_path / "sim.ndjson"
    path.write_bytes(invoke(sim_args(200_000, "--quiet")).stdout_bytes)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        trade_argv("ingest", "--source", "file", str(path), "--speed", "max"),
        stdout=subprocess.PIPE,
        stderr=slave,
        env=child_env(COLUMNS="100", TERM="xterm"),
    )
    os.close(slave)
    out, _ = proc.communicate(timeout=120)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.returncode == 0
    assert len(ndjson_records(out)) == 200_000  # stdout is records only
    assert b"replay" in seen and b"\x1b[" in seen  # the bar was drawn on the terminal
