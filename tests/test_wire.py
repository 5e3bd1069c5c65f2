"""Reading records: the bad-input corpus, --errors, --strict, Arrow damage, sniffing, micro-batches."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
from conftest import arrow_table, invoke, ndjson_records

NS = 1_795_444_200_000_000_000


def good(symbol: str = "AAPL", price: float = 100.5) -> bytes:
    return json.dumps(
        {"type": "trade", "symbol": symbol, "timestamp": NS, "price": price, "volume": 10}
    ).encode()


def trade_with(**fields: object) -> bytes:
    record: dict[str, object] = {
        "type": "trade",
        "symbol": "AAPL",
        "timestamp": NS,
        "price": 1.0,
        "volume": 1,
    }
    record.update(fields)
    return json.dumps({k: v for k, v in record.items() if v is not ...}).encode()


# (name, the bad line, a fragment of the reason, the field named or None)
CORPUS: list[tuple[str, bytes, str, str | None]] = [
    ("truncated line", good()[:-12], "not valid JSON", None),
    ("invalid UTF-8", b'{"type":"trade","symbol":"\xff\xfe","price":1}', "not valid UTF-8", None),
    ("JSON array", b'[{"symbol":"AAPL"}]', "expected a JSON object, got an array", None),
    ("JSON string", b'"AAPL 100.5"', "expected a JSON object, got a string", None),
    ("JSON number", b"42", "expected a JSON object, got a number", None),
    ("JSON null", b"null", "expected a JSON object, got null", None),
    ("missing symbol", trade_with(symbol=...), "field 'symbol' is missing", "symbol"),
    ("empty symbol", trade_with(symbol=""), "field 'symbol' is \"\"", "symbol"),
    ("symbol not text", trade_with(symbol=123), "field 'symbol' is 123, expected text", "symbol"),
    ("price abc", trade_with(price="abc"), "field 'price' is \"abc\", expected a number", "price"),
    ("price NaN literal", good().replace(b"100.5", b"NaN"), "field 'price' is nan", "price"),
    ("price NaN text", trade_with(price="NaN"), "field 'price' is nan", "price"),
    ("price Infinity literal", good().replace(b"100.5", b"Infinity"), "field 'price' is inf", "price"),
    ("price overflow", good().replace(b"100.5", b"1e400"), "not valid JSON", None),
    (
        "negative price",
        trade_with(price=-1.5),
        "field 'price' is -1.5, expected a finite positive number",
        "price",
    ),
    ("zero price", trade_with(price=0), "field 'price' is 0.0, expected a finite positive number", "price"),
    ("price boolean", trade_with(price=True), "field 'price' is True, expected a number", "price"),
    (
        "price object",
        trade_with(price={"value": 1}),
        "field 'price' is {'value': 1}, expected a number",
        "price",
    ),
    ("year 3000 ISO", trade_with(timestamp="3000-01-01T00:00:00Z"), "between 1971 and 2200", "timestamp"),
    ("year 3000 seconds", trade_with(timestamp=32_503_680_000), "between 1971 and 2200", "timestamp"),
    ("timestamp words", trade_with(timestamp="yesterday"), "field 'timestamp' is \"yesterday\"", "timestamp"),
    ("timestamp boolean", trade_with(timestamp=True), "field 'timestamp' is True", "timestamp"),
    ("timestamp negative", trade_with(timestamp=-5), "between 1971 and 2200", "timestamp"),
    ("missing timestamp", trade_with(timestamp=...), "field 'timestamp' is missing", "timestamp"),
    ("negative volume", trade_with(volume=-5), "field 'volume' is -5, expected a number >= 0", "volume"),
    ("fractional volume", trade_with(volume=2.5), "field 'volume' is 2.5, expected a whole number", "volume"),
    ("empty line", b"", "empty line", None),
    ("blank line", b"   \t ", "empty line", None),
    (
        "10 MB line",
        b'{"type":"trade","note":"' + b"x" * (10 << 20) + b'"}',
        "longer than 1,048,576 bytes",
        None,
    ),
    ("no type and no clue", b'{"symbol":"AAPL","timestamp":%d}' % NS, "field 'type' is missing", "type"),
    (
        "negative bid",
        b'{"type":"quote","symbol":"A","timestamp":%d,"bid":-1,"ask":2}' % NS,
        "field 'bid' is -1.0",
        "bid",
    ),
    (
        "bar high below low",
        b'{"type":"bar","symbol":"A","timestamp":%d,"open":1,"high":1,"low":2,"close":1}' % NS,
        "field 'high' is 1.0, below 'low' 2.0",
        "high",
    ),
    ("garbage after object", good() + b" trailing", "not valid JSON", None),
    (
        "raw control character",
        b'{"type":"trade","symbol":"A\x01B","timestamp":1,"price":1}',
        "not valid JSON",
        None,
    ),
    ("deep nesting", b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "not valid JSON", None),
    ("conditions not ints", trade_with(conditions=["odd", "lot"]), "field 'conditions'", "conditions"),
]


def ingest_stdin(data: bytes, *extra: str):  # type: ignore[no-untyped-def]
    return invoke(["ingest", "--source", "file", "-", *extra], input=data)


@pytest.mark.parametrize(("name", "line", "reason", "field"), CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_record_between_good_ones(name: str, line: bytes, reason: str, field: str | None) -> None:
    data = good("FIRST") + b"\n" + line + b"\n" + good("LAST") + b"\n"
    result = ingest_stdin(data)
    assert result.exit_code == 0
    assert [r["symbol"] for r in ndjson_records(result.stdout_bytes)] == ["FIRST", "LAST"]
    messages = result.stderr.splitlines()
    assert len(messages) == 2, messages  # one line for the bad record, one summary
    assert messages[0].startswith("trade ingest: stdin line 2: ")
    assert reason in messages[0]
    assert messages[1].startswith("trade ingest: 3 in, 2 out, 1 rejected")


def test_whole_corpus_at_once_keeps_every_good_record(tmp_path: Path) -> None:
    lines: list[bytes] = []
    for i, (_, line, _, _) in enumerate(CORPUS):
        lines += [good(f"G{i}"), line]
    lines.append(good("END"))
    errors = tmp_path / "rejects.ndjson"
    result = ingest_stdin(b"\n".join(lines) + b"\n", "--errors", str(errors))
    assert result.exit_code == 0
    assert [r["symbol"] for r in ndjson_records(result.stdout_bytes)] == [
        f"G{i}" for i in range(len(CORPUS))
    ] + ["END"]
    kept = [orjson.loads(x) for x in errors.read_bytes().splitlines()]
    assert [k["line"] for k in kept] == [2 * i + 2 for i in range(len(CORPUS))]
    for entry, (_, line, reason, field) in zip(kept, CORPUS, strict=True):
        assert reason in entry["error"]
        assert entry["field"] == field
        if len(line) < 1000 and b"\xff" not in line:
            assert entry["input"] == line.decode()
    assert f"{len(CORPUS)} rejected" in result.stderr.splitlines()[-1]


def test_crlf_line_endings_are_fine() -> None:
    result = ingest_stdin(good("A") + b"\r\n" + good("B") + b"\r\n")
    assert [r["symbol"] for r in ndjson_records(result.stdout_bytes)] == ["A", "B"]
    assert "0 rejected" in result.stderr


def test_final_line_without_newline_is_read() -> None:
    result = ingest_stdin(good("A") + b"\n" + good("B"))
    assert [r["symbol"] for r in ndjson_records(result.stdout_bytes)] == ["A", "B"]


def test_strict_stops_at_first_bad_record_after_passing_the_good_ones() -> None:
    data = b"\n".join([good("A"), good("B"), trade_with(price="abc"), good("C")]) + b"\n"
    result = ingest_stdin(data, "--strict")
    assert result.exit_code == 65
    assert [r["symbol"] for r in ndjson_records(result.stdout_bytes)] == ["A", "B"]
    assert "stdin line 3: field 'price'" in result.stderr
    assert "stopped by --strict" in result.stderr


# -- Arrow input ----------------------------------------------------------------------------------


def arrow_stream(*batches: pa.RecordBatch) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, batches[0].schema) as writer:
        for b in batches:
            writer.write_batch(b)
    return sink.getvalue()


def trades(symbols: list[str], prices: list[float]) -> pa.RecordBatch:
    n = len(symbols)
    return pa.record_batch(
        {
            "type": ["trade"] * n,
            "symbol": symbols,
            "timestamp": pa.array([NS] * n, pa.int64()).cast(pa.timestamp("ns", "UTC")),
            "price": prices,
        }
    )


def test_arrow_bad_rows_are_reported_by_batch_and_row() -> None:
    data = arrow_stream(trades(["A", "B"], [1.0, 2.0]), trades(["C", "D", "E"], [3.0, -1.0, float("nan")]))
    result = ingest_stdin(data)
    assert result.exit_code == 0
    assert arrow_table(result.stdout_bytes).column("symbol").to_pylist() == ["A", "B", "C"]
    lines = result.stderr.splitlines()
    assert (
        lines[0]
        == "trade ingest: stdin batch 2 row 2: field 'price' is -1.0, expected a finite positive number"
    )
    assert (
        lines[1]
        == "trade ingest: stdin batch 2 row 3: field 'price' is nan, expected a finite positive number"
    )


def test_arrow_strict_passes_on_every_good_record_before_the_bad_one() -> None:
    """Small messages read together are still handed on when --strict stops at a later one."""
    data = arrow_stream(
        trades(["A"], [1.0]),
        trades(["B"], [2.0]),
        trades(["C", "D", "E"], [3.0, -1.0, 5.0]),
        trades(["F"], [6.0]),
    )
    result = ingest_stdin(data, "--strict")
    assert result.exit_code == 65
    assert arrow_table(result.stdout_bytes).column("symbol").to_pylist() == ["A", "B", "C"]
    assert "stdin batch 3 row 2: field 'price'" in result.stderr


def test_truncated_arrow_message_keeps_the_whole_batches() -> None:
    data = arrow_stream(trades(["A"], [1.0]), trades(["B"], [2.0]), trades(["C"], [3.0]))
    result = ingest_stdin(data[:-30])
    assert result.exit_code == 0
    assert arrow_table(result.stdout_bytes).column("symbol").to_pylist() == ["A", "B"]
    assert "truncated or corrupt Arrow message" in result.stderr


def test_garbage_after_a_valid_arrow_stream() -> None:
    data = arrow_stream(trades(["A", "B"], [1.0, 2.0])) + b"\x00garbage bytes that are not a stream"
    result = ingest_stdin(data)
    assert arrow_table(result.stdout_bytes).num_rows == 2
    assert "bytes after the Arrow stream are not an Arrow stream" in result.stderr


def test_arrow_streams_one_after_another_with_different_schemas() -> None:
    first = trades(["A"], [1.0])
    second = first.append_column("desk", pa.array(["north"]))
    result = ingest_stdin(arrow_stream(first) + arrow_stream(second) + arrow_stream(first))
    table = arrow_table(result.stdout_bytes)
    assert table.num_rows == 3
    assert table.column("desk").to_pylist() == [None, "north", None]


def test_arrow_file_format_on_stdin_is_buffered_by_the_file_feed() -> None:
    sink = io.BytesIO()
    batch = trades(["A"], [1.0])
    with pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    result = invoke(["ingest", "--source", "file", "-"], input=sink.getvalue())
    assert result.exit_code == 0  # `ingest --source file -` reads the file format from stdin by buffering it
    assert arrow_table(result.stdout_bytes).num_rows == 1


def test_output_follows_input_format_unless_told() -> None:
    data = arrow_stream(trades(["A"], [1.0]))
    assert ingest_stdin(data).stdout_bytes[:4] == b"\xff\xff\xff\xff"
    assert ingest_stdin(data, "--format", "ndjson").stdout_bytes.startswith(b"{")
    assert ingest_stdin(good() + b"\n").stdout_bytes.startswith(b"{")
    assert ingest_stdin(good() + b"\n", "--format", "arrow").stdout_bytes[:4] == b"\xff\xff\xff\xff"


def test_malformed_arrow_values_are_rejected_row_by_row() -> None:
    """An IPC reader checks layout only: text that is not UTF-8 or a dictionary index out of range
    must be caught here, not crash a later stage."""
    good_ids = [b"1", b"\xff\xfe", b"3"]
    offsets = np.cumsum([0, *map(len, good_ids)]).astype(np.int32)
    trade_id = pa.Array.from_buffers(
        pa.string(), 3, [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(good_ids))]
    )
    venue = pa.DictionaryArray.from_arrays(pa.array([0, 0, 5], pa.int32()), pa.array(["XNAS"]), safe=False)
    batch = (
        trades(["A", "B", "C"], [1.0, 2.0, 3.0])
        .append_column("trade_id", trade_id)
        .append_column("desk", venue)
    )
    result = ingest_stdin(arrow_stream(batch), "--format", "ndjson")
    assert result.exit_code == 0, result.stderr
    assert [r["symbol"] for r in ndjson_records(result.stdout_bytes)] == ["A"]
    lines = result.stderr.splitlines()
    assert lines[0].startswith("trade ingest: stdin batch 1 row 2: field 'trade_id' is malformed Arrow data")
    assert lines[1].startswith("trade ingest: stdin batch 1 row 3: field 'desk' is malformed Arrow data")
