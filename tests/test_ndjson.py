"""NDJSON codec and the wire round trip: whatever is written reads back equal, in both formats."""

from __future__ import annotations

import io
import math
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradecli import ndjson
from tradecli.log import Log
from tradecli.records import TIMESTAMP, normalise
from tradecli.runtime import Session, Stopper
from tradecli.wire import ErrorSink, Input, RecordReader, RecordWriter

NS = 1_795_444_200_000_000_000


def session() -> Session:
    return Session("test", Log("test", stream=io.StringIO()), Stopper())


def write(batches: list[pa.RecordBatch], fmt: str) -> bytes:
    sink = io.BytesIO()
    writer = RecordWriter(sink, session(), fmt)
    for b in batches:
        writer.write(b)
    writer.close()
    return sink.getvalue()


def read(data: bytes) -> tuple[list[pa.RecordBatch], Session]:
    s = session()
    reader = RecordReader(Input(io.BytesIO(data), s), ErrorSink(s))
    return list(reader.batches()), s


def rows(batches: list[pa.RecordBatch]) -> list[dict[str, Any]]:
    """Records as dicts without null fields (NDJSON leaves them out), times as integer ns."""
    out = []
    for b in batches:
        plain = pa.record_batch(
            [c.cast(pa.int64()) if pa.types.is_timestamp(c.type) else c for c in b.columns],
            names=b.schema.names,
        )
        for row in plain.to_pylist():
            out.append({k: v for k, v in row.items() if v is not None and not _nan(v)})
    return out


def _nan(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)


@pytest.mark.parametrize("lines", [2, 40])  # the careful path, and the fast one
def test_unknown_whole_numbers_beyond_int64_pass_through(lines: int) -> None:
    rows = [
        {"type": "trade", "symbol": "A", "timestamp": 1795185000000000000 + i, "price": 1.5}
        for i in range(lines)
    ]
    rows[0]["big"] = 18446744073709551615
    rows[1]["big"] = 1
    block = b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows)
    decoded = ndjson.decode(block, 1)
    assert not decoded.rejects
    values = [v for b in decoded.batches for v in b.column("big").to_pylist()]
    assert values[:2] in ([18446744073709551615, 1], [1.8446744073709552e19, 1.0])


def test_encode_leaves_out_nulls_and_is_compact() -> None:
    b = pa.record_batch(
        {"type": ["trade", "quote"], "symbol": ["A", "B"], "price": [1.5, None], "bid": [None, 2.0]}
    )
    lines = ndjson.encode(b).splitlines()
    assert lines == [b'{"type":"trade","symbol":"A","price":1.5}', b'{"type":"quote","symbol":"B","bid":2.0}']


def test_encode_escapes_text_and_writes_times_as_ns() -> None:
    b = pa.record_batch(
        {
            "message": ['say "hi"\n\t\u0001 \u00e9 \U0001f680'],
            "timestamp": pa.array([NS], pa.int64()).cast(TIMESTAMP),
            "conditions": pa.array([[37, 12]], pa.list_(pa.int64())),
        }
    )
    line = ndjson.encode(b)
    assert line.endswith(b"\n")
    record = orjson.loads(line)
    assert record == {
        "message": 'say "hi"\n\t\u0001 \u00e9 \U0001f680',
        "timestamp": NS,
        "conditions": [37, 12],
    }


def test_encode_drops_non_finite_floats() -> None:
    b = pa.record_batch({"a": [float("nan"), 1.0, float("inf")], "b": [1, 2, 3]})
    assert [orjson.loads(x) for x in ndjson.encode(b).splitlines()] == [
        {"b": 1},
        {"a": 1.0, "b": 2},
        {"b": 3},
    ]


def test_decode_reports_lines_and_keeps_good_ones() -> None:
    block = b'{"a":1}\n[1]\n\n{"a":2}\r\n{"a":\n'
    decoded = ndjson.decode(block, first_line=10)
    got = [r for b in decoded.batches for r in b.to_pylist()]
    assert got == [{"a": 1}, {"a": 2}]
    assert [(r.line, r.reason.split(" (")[0]) for r in decoded.rejects] == [
        (11, "expected a JSON object, got an array"),
        (12, "empty line"),
        (14, "not valid JSON"),
    ]


def test_decode_splits_rows_whose_unknown_field_changes_type() -> None:
    decoded = ndjson.decode(b'{"x":1}\n{"x":"one"}\n{"x":2}\n{"x":3.5}\n', first_line=1)
    values = [r["x"] for b in decoded.batches for r in b.to_pylist()]
    assert values == [1, "one", 2, 3.5]
    assert decoded.rejects == []


# -- property tests: any batch round-trips through either format ---------------------------------

symbols = st.sampled_from(["AAPL", "TSLA", "GME", "BRK.B", "X"])
finite = st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False)
text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@st.composite
def record_batches(draw: st.DrawFn) -> pa.RecordBatch:
    n = draw(st.integers(min_value=1, max_value=12))
    maybe = lambda s: st.one_of(st.none(), s)  # noqa: E731
    columns: dict[str, pa.Array] = {
        "type": pa.array(draw(st.lists(st.sampled_from(["trade", "signal"]), min_size=n, max_size=n))),
        "symbol": pa.array(draw(st.lists(symbols, min_size=n, max_size=n))),
        "timestamp": pa.array(
            draw(st.lists(st.integers(NS - 10**15, NS + 10**15), min_size=n, max_size=n)), pa.int64()
        ).cast(TIMESTAMP),
        "price": pa.array(draw(st.lists(finite, min_size=n, max_size=n)), pa.float64()),
        "volume": pa.array(draw(st.lists(maybe(st.integers(0, 10**12)), min_size=n, max_size=n)), pa.int64()),
    }
    if draw(st.booleans()):
        columns["note"] = pa.array(draw(st.lists(maybe(text), min_size=n, max_size=n)), pa.string())
    if draw(st.booleans()):
        floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
        columns["score"] = pa.array(draw(st.lists(maybe(floats), min_size=n, max_size=n)), pa.float64())
    if draw(st.booleans()):
        columns["count"] = pa.array(
            draw(st.lists(maybe(st.integers(-(2**62), 2**62)), min_size=n, max_size=n)), pa.int64()
        )
    if draw(st.booleans()):
        columns["flag"] = pa.array(draw(st.lists(maybe(st.booleans()), min_size=n, max_size=n)))
    if draw(st.booleans()):
        lists = st.lists(st.integers(0, 100), max_size=3)
        columns["conditions"] = pa.array(
            draw(st.lists(maybe(lists), min_size=n, max_size=n)), pa.list_(pa.int64())
        )
    batch = pa.record_batch(columns)
    good, bad = normalise(batch)
    assert bad == []
    return good


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(record_batches(), min_size=1, max_size=3), st.sampled_from(["ndjson", "arrow"]))
def test_round_trip(batches: list[pa.RecordBatch], fmt: str) -> None:
    data = write(batches, fmt)
    back, s = read(data)
    assert s.counters.rejected == 0
    assert rows(back) == rows(batches)
    if fmt == "arrow":
        for b in back:  # Arrow keeps the canonical types
            assert b.schema.field("timestamp").type == TIMESTAMP
            assert b.schema.field("price").type == pa.float64()


@pytest.mark.parametrize("fmt", ["ndjson", "arrow"])
def test_schema_change_mid_stream(fmt: str) -> None:
    first = pa.record_batch({"type": ["trade"], "symbol": ["A"], "timestamp": [NS], "price": [1.0]})
    second = pa.record_batch({"type": ["signal"], "symbol": ["A"], "label": pa.array([7], pa.int64())})
    third = pa.record_batch({"type": ["signal"], "symbol": ["A"], "label": ["text now"]})
    data = write([first, second, third], fmt)
    if fmt == "arrow":
        assert data.count(b"\xff\xff\xff\xff\x00\x00\x00\x00") >= 2  # the writer started new streams
    back, s = read(data)
    assert s.counters.rejected == 0
    assert rows(back) == [
        {"type": "trade", "symbol": "A", "timestamp": NS, "price": 1.0},
        {"type": "signal", "symbol": "A", "label": 7},
        {"type": "signal", "symbol": "A", "label": "text now"},
    ]


def test_unknown_text_that_looks_like_a_time_passes_as_written() -> None:
    lines = [
        b'{"type":"signal","symbol":"A","opened_at":"2026-11-23T09:30:00-05:00","n":%d}' % i
        for i in range(100)
    ]
    back, s = read(b"\n".join(lines) + b"\n")
    assert s.counters.rejected == 0
    assert {r["opened_at"] for r in rows(back)} == {"2026-11-23T09:30:00-05:00"}
    assert orjson.loads(write(back, "ndjson").splitlines()[0])["opened_at"] == "2026-11-23T09:30:00-05:00"


def test_a_large_batch_encodes_in_parts_to_the_same_bytes() -> None:
    n = ndjson.PARALLEL_ROWS * 2 + 17
    values = [float(i) + 0.25 if i % 7 else None for i in range(n)]
    batch = pa.record_batch(
        {
            "type": ["trade"] * n,
            "symbol": [f"S{i % 13}" for i in range(n)],
            "price": pa.array(values, pa.float64()),
            "volume": pa.array(range(n), pa.int64()),
        }
    )
    whole = ndjson._encode(batch)
    assert ndjson.encode(batch) == whole
    assert whole.count(b"\n") == n


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record_batches())
def test_small_batches_encode_row_by_row_to_the_same_bytes(batch: pa.RecordBatch) -> None:
    assert ndjson._encode_rows(batch) == ndjson._encode(batch)
