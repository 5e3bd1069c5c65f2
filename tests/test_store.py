"""The tick store engine in-process: layout, WAL, schemas, writing, recovery, reading, upkeep."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from store_helpers import (
    NS,
    OPEN_NS,
    Log,
    dataset_files,
    read_dataset,
    records,
    row_keys,
    sim_batches,
)

from tradecli.tickstore import layout, wal
from tradecli.tickstore.backend import LocalBackend, StoreError
from tradecli.tickstore.expr import ExpressionError, compile_where
from tradecli.tickstore.maintenance import compact, newest_record, plan, prune, stats
from tradecli.tickstore.reader import Query, QueryOptions
from tradecli.tickstore.timeparse import parse_days, parse_time
from tradecli.tickstore.writer import StoreWriter, WriterOptions

NEW_YORK = ZoneInfo("America/New_York")


def writer(root: Path, log: Log | None = None, **options: Any) -> StoreWriter:
    defaults: dict[str, Any] = {"roll_rows": 2_000, "roll_interval": 3600.0}
    defaults.update(options)
    return StoreWriter(LocalBackend(root), WriterOptions(**defaults), log or Log())


def store_all(root: Path, batches: list[pa.RecordBatch], **options: Any) -> StoreWriter:
    w = writer(root, **options).open()
    for batch in batches:
        w.append(batch)
    w.close()
    return w


def query_table(root: Path, **options: Any) -> pa.Table:
    batches = list(Query(LocalBackend(root), QueryOptions(**options)).batches())
    if not batches:
        return pa.table({})
    return pa.concat_tables([pa.Table.from_batches([b]) for b in batches], promote_options="permissive")


def input_table(batches: list[pa.RecordBatch]) -> pa.Table:
    return pa.concat_tables([pa.Table.from_batches([b]) for b in batches], promote_options="permissive")


# -- layout ------------------------------------------------------------------------------------


def test_part_names_round_trip() -> None:
    assert layout.part_name(17) == "part-17.parquet"
    assert layout.part_name(5, 12) == "part-5-12.parquet"
    assert layout.parse_part("part-17.parquet") == (17, 17)
    assert layout.parse_part("part-5-12.parquet") == (5, 12)
    for name in (
        "part-12-5.parquet",
        "part-x.parquet",
        ".part-1.parquet.tmp",
        "foo.parquet",
        "part-1.parquet.tmp",
    ):
        assert layout.parse_part(name) is None
    assert layout.tmp_name("part-1.parquet") == ".part-1.parquet.tmp"
    assert layout.is_tmp(".part-1.parquet.tmp") and layout.is_tmp(".part-1-9.parquet.tmp")
    assert not layout.tmp_name("part-1.parquet").endswith(".parquet")


def test_superseded_files_are_those_inside_a_compacted_range() -> None:
    files = [
        layout.PartFile.of(n, 1)
        for n in ("part-5.parquet", "part-5-12.parquet", "part-9.parquet", "part-13.parquet", "x.parquet")
    ]
    current, superseded = layout.live_files(files)
    assert sorted(f.name for f in superseded) == ["part-5.parquet", "part-9.parquet"]
    assert sorted(f.name for f in current) == ["part-13.parquet", "part-5-12.parquet", "x.parquet"]
    assert layout.covered(files, 7) and layout.covered(files, 13) and not layout.covered(files, 14)


@pytest.mark.parametrize(
    "moment",
    [
        "2026-03-08T06:59:59.999999999Z",  # 01:59:59 EST, the night DST begins
        "2026-03-08T07:00:00Z",  # 03:00 EDT
        "2026-11-01T04:59:59Z",  # 00:59 EDT
        "2026-11-01T05:00:00Z",  # 01:00 EDT (the first one)
        "2026-11-01T06:00:00Z",  # 01:00 EST (the second one)
        "2026-11-20T04:59:59.999999999Z",  # 23:59:59 the day before, New York
        "2026-11-20T05:00:00Z",  # midnight in New York
        "2026-07-01T03:59:59Z",  # 23:59:59 EDT June 30
        "2026-07-01T04:00:00Z",
    ],
)
def test_exchange_date_is_the_new_york_date(moment: str) -> None:
    ns = parse_time(moment)
    batch = pa.record_batch({"timestamp": pa.array([ns], pa.int64()).cast(pa.timestamp("ns", tz="UTC"))})
    day = layout.exchange_days(batch, 0)[0]
    expected = datetime.fromtimestamp(ns // NS, UTC).astimezone(NEW_YORK).date()
    assert layout.day_text(int(day)) == expected.isoformat()


def test_exchange_dates_vectorised_match_zoneinfo_over_two_years() -> None:
    rng = np.random.default_rng(3)
    start = parse_time("2025-01-01T00:00Z")
    ns = np.sort(rng.integers(start, start + 730 * 86_400 * NS, 20_000))
    batch = pa.record_batch({"timestamp": pa.array(ns).cast(pa.timestamp("ns", tz="UTC"))})
    days = layout.exchange_days(batch, 0)
    for value, day in zip(ns[::97].tolist(), days[::97].tolist(), strict=True):
        expected = datetime.fromtimestamp(value // NS, UTC).astimezone(NEW_YORK).date()
        assert layout.day_text(day) == expected.isoformat()


@pytest.mark.parametrize(
    "around",
    ["2026-03-08T07:00:00Z", "2026-11-01T06:00:00Z", "2026-11-20T05:00:00Z", "1969-12-31T23:00:00Z"],
)
@pytest.mark.parametrize("hours", [1, 30, 24 * 6, 24 * 8])
def test_exchange_dates_of_a_short_stretch_match_zoneinfo(around: str, hours: int) -> None:
    """A batch spanning a change of offset, midnight, or neither, as a segment would."""
    rng = np.random.default_rng(hours)
    middle = parse_time(around)
    half = hours * 3600 * NS // 2
    ns = np.sort(rng.integers(middle - half, middle + half, 5_000))
    ns[:2] = [middle - 1, middle]
    batch = pa.record_batch({"timestamp": pa.array(ns).cast(pa.timestamp("ns", tz="UTC"))})
    days = layout.exchange_days(batch, 0)
    want = [datetime.fromtimestamp(v // NS, UTC).astimezone(NEW_YORK).date().isoformat() for v in ns.tolist()]
    assert [layout.day_text(d) for d in days.tolist()] == want


def test_records_without_timestamp_fall_back_to_recv_ts_then_now() -> None:
    ts = pa.array([None, None, OPEN_NS], pa.int64()).cast(pa.timestamp("ns", tz="UTC"))
    recv = pa.array([OPEN_NS + 86_400 * NS, None, None], pa.int64()).cast(pa.timestamp("ns", tz="UTC"))
    batch = pa.record_batch({"timestamp": ts, "recv_ts": recv})
    now = parse_time("2027-01-05T12:00")
    days = [layout.day_text(d) for d in layout.exchange_days(batch, now)]
    assert days == ["2026-11-21", "2027-01-05", "2026-11-20"]


# -- times, dates, expressions -----------------------------------------------------------------


def test_command_line_times_are_new_york_unless_they_say_otherwise() -> None:
    assert parse_time("2026-11-20T09:30") == OPEN_NS
    assert parse_time("2026-11-20 09:30:00") == OPEN_NS
    assert parse_time("2026-11-20T14:30Z") == OPEN_NS
    assert parse_time("2026-11-20T10:30-04:00") == OPEN_NS
    assert parse_time(str(OPEN_NS)) == OPEN_NS
    assert parse_time(str(OPEN_NS // 10**6)) == OPEN_NS
    assert parse_time("2026-11-20T09:30:00.000000123") == OPEN_NS + 123
    midnight = parse_time("2026-11-20")
    assert parse_time("2026-11-20", end=True) - midnight == 86_400 * NS
    assert parse_time("2026-03-08", end=True) - parse_time("2026-03-08") == 23 * 3600 * NS  # DST
    with pytest.raises(ValueError, match="not a time"):
        parse_time("next tuesday")
    assert parse_days("2026-11-16..2026-11-20")[1].isoformat() == "2026-11-20"
    with pytest.raises(ValueError):
        parse_days("2026-11-20..2026-11-16")


WHERE_TABLE = pa.table(
    {
        "symbol": pa.array(["AAPL", "TSLA", "AAPL", "GME", None]).dictionary_encode(),
        "price": [230.0, 250.5, None, 25.0, 10.0],
        "volume": [100, 5000, 300, None, 1],
        "message": ["a", None, "c", "d", None],
        "timestamp": pa.array(
            [OPEN_NS, OPEN_NS + NS, OPEN_NS + 2 * NS, OPEN_NS + 3 * NS, OPEN_NS + 4 * NS]
        ).cast(pa.timestamp("ns", tz="UTC")),
    }
)


@pytest.mark.parametrize(
    ("text", "rows"),
    [
        ("price > 100", [0, 1]),
        ("price > 100 and volume >= 1000", [1]),
        ("(price > 100) & (volume >= 1000)", [1]),
        ("price < 30 or volume > 1000", [1, 3, 4]),
        ("~(price > 100)", [3, 4]),
        ("not price > 100", [3, 4]),
        ('symbol == "AAPL"', [0, 2]),
        ('symbol in ("AAPL", "GME")', [0, 2, 3]),
        ('symbol not in ("AAPL",)', [1, 3]),
        ("message == None", [1, 4]),
        ("message is not None", [0, 2, 3]),
        ("isnull(price)", [2]),
        ("notnull(volume) and volume * price > 30000", [1]),
        ("abs(price - 250) < 1", [1]),
        ("price / 2 > 100", [0, 1]),
        ("-price < -240", [1]),
        ("10 < price < 240", [0, 3]),
        ('timestamp >= ts("2026-11-20T09:30:02")', [2, 3, 4]),
        ("true", [0, 1, 2, 3, 4]),
    ],
)
def test_where_expressions_filter_like_sql(text: str, rows: list[int]) -> None:
    compiled = compile_where(text)
    mask = WHERE_TABLE.filter(compiled.expression)
    expected = WHERE_TABLE.take(pa.array(rows))
    assert mask.equals(expected), (text, mask.to_pydict())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "price >",
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "price.real > 1",
        "x[0] > 1",
        "lambda: 1",
        "[p for p in price]",
        "price if volume else 1",
        "(y := 3)",
        "f'{price}' == 'x'",
        "price ** 2 > 1",
        "volume % 2 == 1",
        "symbol in other",
        "1 < 2",
        "eval('1')",
        "abs(price, volume)",
        "price > b'x'",
        "{1: 2}",
    ],
)
def test_where_refuses_everything_outside_the_grammar(text: str) -> None:
    with pytest.raises(ExpressionError):
        compile_where(text)


# -- the write-ahead log -----------------------------------------------------------------------


def _segment_with_boundaries(directory: Path) -> tuple[Path, list[int], list[int]]:
    """A segment with a schema change and dictionary changes; byte offset after each batch."""
    seg = wal.Segment(directory, 1)
    ends = []
    sizes = []
    for i in range(6):
        names = ["AAPL", "TSLA"] if i % 2 else ["GME", "AMC", "SPY"]
        columns: dict[str, Any] = {
            "symbol": pa.array([names[j % len(names)] for j in range(10 + i)]).dictionary_encode(),
            "price": pa.array(np.arange(10 + i, dtype=np.float64)),
        }
        if i >= 3:
            columns["note"] = pa.array([f"n{i}"] * (10 + i))
        seg.append(pa.record_batch(columns))
        ends.append(seg.size)
        sizes.append(10 + i)
    seg.seal()
    return seg.path, ends, sizes


def test_torn_wal_tails_are_cut_at_the_last_whole_batch(tmp_path: Path) -> None:
    path, ends, sizes = _segment_with_boundaries(tmp_path)
    data = path.read_bytes()
    rng = random.Random(5)
    cuts = sorted(set(rng.sample(range(1, len(data)), 120) + ends + [e + 3 for e in ends[:-1]]))
    for cut in cuts:
        torn = tmp_path / f"{cut}.arrows"
        torn.write_bytes(data[:cut])
        found = wal.read_segment(cut, torn)
        whole = [e for e in ends if e <= cut]
        assert found.rows == sum(sizes[: len(whole)]), cut
        assert found.good_bytes <= cut
        assert (found.problem is None) == (found.good_bytes == cut), (cut, found.problem)
        wal.truncate(torn, found.good_bytes)
        again = wal.read_segment(cut, torn)
        assert again.problem is None and again.rows == found.rows
        torn.unlink()


@pytest.mark.parametrize(
    "garbage", [b"\x00" * 4096, os.urandom(777), b"\xff\xff\xff\xff\x10\x00\x00\x00junk"]
)
def test_garbage_after_the_last_batch_is_cut_off(tmp_path: Path, garbage: bytes) -> None:
    path, ends, sizes = _segment_with_boundaries(tmp_path)
    with open(path, "ab") as handle:
        handle.write(garbage)
    found = wal.read_segment(1, path)
    assert found.rows == sum(sizes)
    assert found.problem is not None
    assert found.good_bytes == ends[-1] + 8  # the end-of-stream marker is whole too


def test_a_sealed_segment_reads_back_whole_or_not_at_all(tmp_path: Path) -> None:
    path, _, sizes = _segment_with_boundaries(tmp_path)
    back = wal.read_sealed(1, path, sum(sizes))
    assert [b.num_rows for b in back] == sizes
    assert back[-1].column("note").to_pylist()[0] == "n5"
    with pytest.raises(OSError, match="does not read back as written"):
        wal.read_sealed(1, path, sum(sizes) + 1)  # a record acknowledged but not in the file
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 20)
    with pytest.raises(OSError, match="does not read back as written"):
        wal.read_sealed(1, path, sum(sizes))


def test_sort_order_is_lexsort_by_keys_then_time() -> None:
    from tradecli.tickstore.files import sort_order

    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 17, 5_000):
        for width in (1, 2, 300, 70_000, 1 << 40):
            kind = rng.integers(0, 3, n)
            key = rng.integers(0, width, n)
            ts = rng.integers(0, 40, n)  # many ties: the input order must break them
            ts[rng.random(n) < 0.1] = layout.NO_TIME
            want = np.lexsort((ts, key, kind))
            assert np.array_equal(sort_order(ts, kind, key), want), (n, width)
            assert np.array_equal(sort_order(ts, key), np.lexsort((ts, key))), (n, width)


def test_appended_batches_are_not_held_in_memory(tmp_path: Path) -> None:
    """The open segment keeps its records in its file only; the roll reads them back."""
    import pyarrow.compute as pc

    source = sim_batches(6_000)
    w = writer(tmp_path, roll_rows=10**9).open()
    try:
        before = pa.total_allocated_bytes()
        for i in range(30):
            # a fresh copy in Arrow's memory pool each time, dropped once appended
            rows = pc.take(pa.Table.from_batches(source), pa.array(np.arange(i * 100, i * 100 + 3_000)))
            w.append(rows.combine_chunks().to_batches()[0])
            del rows
        held = pa.total_allocated_bytes() - before
        assert w.written == 90_000
        one = pa.Table.from_batches(source).slice(0, 3_000).nbytes
        assert held < 3 * one, (held, one)  # 30 batches appended, none of them held
    finally:
        w.close()
    assert read_dataset(tmp_path).num_rows == 90_000


def _malformed_batch() -> pa.RecordBatch:
    """Six trades: row 1's trade_id is not UTF-8; rows 3 and 4 use a symbol whose dictionary
    entry is not UTF-8 (and the dictionary has another bad entry no row uses); row 5's exchange
    index lies outside its dictionary."""
    n = 6
    ts = pa.array([OPEN_NS + i for i in range(n)], pa.int64()).cast(pa.timestamp("ns", tz="UTC"))
    offsets = pa.array([0, 2, 4, 6, 8, 10, 12], pa.int32()).buffers()[1]
    trade_id = pa.Array.from_buffers(pa.string(), n, [None, offsets, pa.py_buffer(b"a0\xff\xfea2a3a4a5")])
    words = pa.Array.from_buffers(
        pa.string(),
        4,
        [None, pa.array([0, 4, 6, 10, 12], pa.int32()).buffers()[1], pa.py_buffer(b"AAPL\xc3(MSFT\xed\xa0")],
    )
    symbol = pa.DictionaryArray.from_arrays(pa.array([0, 0, 2, 1, 1, 2], pa.int32()), words)
    venue = pa.DictionaryArray.from_arrays(
        pa.array([0, 1, 0, 1, 0, 7], pa.int32()), pa.array(["X", "Y"]), safe=False
    )
    return pa.record_batch(
        {
            "type": pa.array(["trade"] * n).dictionary_encode(),
            "symbol": symbol,
            "timestamp": ts,
            "price": pa.array([10.0, 11.0, 12.0, 13.0, 14.0, 15.0]),
            "trade_id": trade_id,
            "venue": venue,
        }
    )


def test_valid_mask_matches_is_valid() -> None:
    from tradecli.tickstore.schemas import valid_mask

    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 9, 100, 1000):
        values = [None if rng.random() < 0.3 else float(i) for i in range(n)]
        floats = pa.array(values, pa.float64())
        for col in (
            floats,
            floats.slice(min(3, n)),
            floats.slice(1, max(0, n - 5)),
            pa.array([None if v is None else "s" for v in values]).dictionary_encode(),
            pa.array([None if v is None else [1, 2] for v in values]),
            pa.nulls(n),
            pa.array(np.arange(n, dtype=np.float64)),
        ):
            mask = valid_mask(col)
            assert mask.dtype == np.bool_ and np.array_equal(mask, np.asarray(col.is_valid())), (col.type, n)


def test_values_arrow_refuses_are_rejected_before_they_are_acknowledged() -> None:
    from tradecli.tickstore.schemas import SchemaRegistry

    batch = _malformed_batch()
    with pytest.raises(pa.ArrowInvalid):
        batch.validate(full=True)
    seen: list[tuple[int, str | None, str]] = []
    kept = SchemaRegistry().admit(batch, lambda _b, problems: seen.extend(problems))
    assert [(row, field) for row, field, _ in seen] == [
        (1, "trade_id"),
        (3, "symbol"),
        (4, "symbol"),
        (5, "venue"),
    ]
    assert "UTF8" in seen[0][2]
    table = pa.Table.from_batches(kept)
    for b in kept:
        b.validate(full=True)
    assert table.column("price").to_pylist() == [10.0, 12.0]
    assert table.column("symbol").cast(pa.string()).to_pylist() == ["AAPL", "MSFT"]


def test_a_crash_before_the_roll_keeps_every_acknowledged_record_of_a_malformed_batch(
    tmp_path: Path,
) -> None:
    """The good rows of a batch with malformed values are logged whole, so recovery finds no
    torn tail and publishes them all, with the batches after them."""
    good = sim_batches(3_000)
    log = Log()
    w = writer(tmp_path / "a", log=log, roll_rows=10**9).open()
    w.append(_malformed_batch())
    for batch in good:
        w.append(batch)
    segment = w._segment
    assert segment is not None and w.stored == 2 + 3_000
    crashed = tmp_path / "b" / "_tradecli" / "wal"
    crashed.mkdir(parents=True)
    (crashed / segment.path.name).write_bytes(segment.path.read_bytes())  # as a kill -9 leaves it
    w.close()
    writer(tmp_path / "b", log=(after := Log())).open().close()
    assert not after.warnings
    assert read_dataset(tmp_path / "b").num_rows == 2 + 3_000


def test_a_segment_is_readable_by_any_arrow_reader(tmp_path: Path) -> None:
    path, _, sizes = _segment_with_boundaries(tmp_path)
    from store_helpers import arrow_stream_rows

    assert arrow_stream_rows(path.read_bytes()) == sum(sizes)


# -- writing and reading back ------------------------------------------------------------------


def test_round_trip_keeps_values_types_nulls_and_unknown_fields(tmp_path: Path) -> None:
    batches = sim_batches(6_000)
    extra = records(
        [
            {
                "type": "signal",
                "symbol": "GME",
                "timestamp": OPEN_NS + 5,
                "strategy": "gap_and_go",
                "confidence": 0.9,
                "tags": ["a", "b"],
                "meta": {"k": 1, "v": "x"},
                "custom_int": 7,
            },
            {
                "type": "signal",
                "symbol": "AMC",
                "timestamp": OPEN_NS + 6,
                "strategy": "vwap",
                "message": None,
            },
            {
                "type": "bar",
                "symbol": "AAPL",
                "timestamp": OPEN_NS,
                "open": 1.0,
                "high": 2.0,
                "low": 0.5,
                "close": 1.5,
                "volume": 10,
                "end_ts": OPEN_NS + 60 * NS,
            },
            {
                "type": "news",
                "symbol": "TSLA",
                "timestamp": OPEN_NS + 7,
                "headline": "héllo <b>",
                "score": -1.5,
            },
        ]
    )
    store_all(tmp_path, [*batches, extra])
    got = query_table(tmp_path)
    want = input_table([*batches, extra])
    assert got.num_rows == want.num_rows
    assert row_keys(got) == row_keys(want)
    for name in want.column_names:
        if want.column(name).null_count == want.num_rows:
            continue  # a field null in every record is no field (NDJSON leaves nulls out too)
        assert got.schema.field(name).type == want.schema.field(name).type, name
    times = got.column("timestamp").cast(pa.int64()).to_numpy()
    assert (np.diff(times) >= 0).all()


def test_files_are_sorted_by_symbol_then_time_zstd_and_row_grouped(tmp_path: Path) -> None:
    store_all(tmp_path, sim_batches(5_000, symbols=40), roll_rows=1_000_000)
    files = dataset_files(tmp_path)
    assert {p.parent.parent.name for p in files} == {"type=trade", "type=quote"}
    for path in files:
        data = path.read_bytes()
        assert data[:4] == b"PAR1" and data[-4:] == b"PAR1"
        meta = pq.read_metadata(path)
        assert meta.row_group(0).column(0).compression == "ZSTD"
        table = pq.read_table(path)
        assert "type" not in table.column_names  # it is the directory
        keys = list(
            zip(
                table.column("symbol").cast(pa.string()).to_pylist(),
                table.column("timestamp").cast(pa.int64()).to_pylist(),
                strict=True,
            )
        )
        assert keys == sorted(keys)
    quote = pq.read_table(next(p for p in files if "quote" in str(p)))
    trade = pq.read_table(next(p for p in files if "trade" in str(p)))
    assert "bid" in quote.column_names and "bid" not in trade.column_names
    assert "price" in trade.column_names and "price" not in quote.column_names


def test_row_groups_have_the_fixed_size(tmp_path: Path) -> None:
    rows = layout.ROW_GROUP_ROWS * 2 + 5
    batch = pa.record_batch(
        {
            "type": pa.array(["bar"] * rows).dictionary_encode(),
            "symbol": pa.array(["X"] * rows).dictionary_encode(),
            "timestamp": pa.array(OPEN_NS + np.arange(rows)).cast(pa.timestamp("ns", tz="UTC")),
            "close": pa.array(np.ones(rows)),
        }
    )
    store_all(tmp_path, [batch], roll_rows=rows)
    (path,) = dataset_files(tmp_path)
    meta = pq.read_metadata(path)
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [
        layout.ROW_GROUP_ROWS,
        layout.ROW_GROUP_ROWS,
        5,
    ]


def test_roll_rows_bounds_every_file_however_large_the_batches(tmp_path: Path) -> None:
    rows = 1_000
    batch = pa.record_batch(
        {
            "type": pa.array(["bar"] * rows).dictionary_encode(),
            "symbol": pa.array(["X"] * rows).dictionary_encode(),
            "timestamp": pa.array(OPEN_NS + np.arange(rows)).cast(pa.timestamp("ns", tz="UTC")),
            "close": pa.array(np.ones(rows)),
        }
    )
    w = store_all(tmp_path, [batch, batch.slice(0, 250)], roll_rows=300)
    counts = [pq.read_metadata(path).num_rows for path in dataset_files(tmp_path)]
    assert sorted(counts) == [50, 300, 300, 300, 300] and w.stored == 1_250


def test_a_new_column_is_added_and_never_dropped(tmp_path: Path) -> None:
    def trade(ts: int, **extra: Any) -> dict[str, Any]:
        return {"type": "trade", "symbol": "AAPL", "timestamp": OPEN_NS + ts, "price": 1.0, **extra}

    store_all(tmp_path, [records([trade(1), trade(2)])])
    store_all(tmp_path, [records([trade(3, venue_id=4)])])
    store_all(tmp_path, [records([trade(4)])])  # a later writer still keeps venue_id
    first, second, third = (pq.read_schema(p) for p in dataset_files(tmp_path))
    assert "venue_id" not in first.names
    assert "venue_id" in second.names and "venue_id" in third.names
    got = query_table(tmp_path)
    assert got.column("venue_id").to_pylist() == [None, None, 4, None]
    counted = duckdb.sql(
        f"select count(*), count(venue_id) from read_parquet('{tmp_path}/**/*.parquet', "
        "hive_partitioning=true, union_by_name=true)"
    ).fetchall()[0]
    assert counted == (4, 1)


def test_values_that_cannot_join_their_column_are_rejected_before_storing(tmp_path: Path) -> None:
    rejected: list[tuple[int, str | None, str]] = []
    w = StoreWriter(
        LocalBackend(tmp_path),
        WriterOptions(roll_rows=10_000, roll_interval=3600),
        Log(),
        reject=lambda batch, problems: rejected.extend(problems),
    ).open()
    base = {"type": "trade", "symbol": "X", "price": 1.0}
    w.append(records([{**base, "timestamp": OPEN_NS, "lot": 5}]))
    w.append(records([{**base, "timestamp": OPEN_NS + 1, "lot": 2.5}]))  # widens to float
    w.append(
        records(
            [{**base, "timestamp": OPEN_NS + 2, "lot": "n/a"}, {**base, "timestamp": OPEN_NS + 3, "lot": "7"}]
        )
    )
    w.append(records([{**base, "timestamp": OPEN_NS + 4, "type": "weird/../type"}]))
    w.close()
    reasons = [r for _, _, r in rejected]
    assert len(rejected) == 2
    assert "field 'lot' is \"n/a\"" in reasons[0]
    assert "record type" in reasons[1]
    got = query_table(tmp_path)
    assert got.column("lot").to_pylist() == [5.0, 2.5, 7.0]
    assert got.schema.field("lot").type == pa.float64()
    assert not list(tmp_path.glob("type=weird*"))


def test_records_reach_parquet_within_the_roll_interval_while_the_input_is_quiet(tmp_path: Path) -> None:
    import time

    w = writer(tmp_path, roll_rows=1_000_000, roll_interval=0.2).open()
    try:
        w.append(sim_batches(50)[0])
        wal_dir = tmp_path / "_tradecli" / "wal"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if dataset_files(tmp_path) and not list(wal_dir.glob("*.arrows")):
                break
            time.sleep(0.05)
        assert dataset_files(tmp_path), "nothing was rolled while the input was idle"
        assert not list(wal_dir.glob("*.arrows")), "the rolled segment was not deleted"
    finally:
        w.close()


@pytest.mark.parametrize("mode", ["batch", "interval", "off"])
def test_fsync_modes_all_store_everything(tmp_path: Path, mode: str) -> None:
    batches = sim_batches(3_000)
    w = store_all(tmp_path, batches, fsync=mode, fsync_interval=0.01)
    assert w.stored == w.written == 3_000
    assert read_dataset(tmp_path).num_rows == 3_000


def test_one_writer_per_wal(tmp_path: Path) -> None:
    first = writer(tmp_path).open()
    try:
        from tradecli.errors import TradeError

        with pytest.raises(TradeError, match="another trade store"):
            writer(tmp_path).open()
    finally:
        first.close()


def test_publishing_never_replaces_an_existing_file(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    backend.publish("type=trade/date=2026-11-20", "part-1.parquet", b"one")
    with pytest.raises(StoreError, match="already exists"):
        backend.publish("type=trade/date=2026-11-20", "part-1.parquet", b"two")
    folder = tmp_path / "type=trade" / "date=2026-11-20"
    assert (folder / "part-1.parquet").read_bytes() == b"one"
    assert sorted(p.name for p in folder.iterdir()) == ["part-1.parquet"]


# -- recovery ----------------------------------------------------------------------------------


class Crash(BaseException):
    """Stands in for kill -9 at a chosen step."""


def _crash_on(monkeypatch: pytest.MonkeyPatch, target: Any, name: str, when: int) -> list[int]:
    calls = [0]
    original = getattr(target, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == when:
            raise Crash(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapped)
    return calls


@pytest.mark.parametrize(
    ("target", "name"),
    [
        ("os", "link"),  # the file is written and fsynced, not yet published
        ("os", "unlink"),  # published, its temporary name (or the WAL segment) not yet removed
        ("backend", "publish"),  # the first partition of a segment published, the second not
        ("writer", "_retire"),  # every partition published, the segment not yet deleted
    ],
)
@pytest.mark.parametrize("when", [1, 2, 3, 5])
def test_a_crash_at_any_step_of_a_roll_loses_and_duplicates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, name: str, when: int
) -> None:
    import tradecli.tickstore.backend as backend_module
    import tradecli.tickstore.writer as writer_module

    batches = sim_batches(9_000)
    owner = {
        "os": backend_module.os,
        "backend": LocalBackend,
        "writer": writer_module.StoreWriter,
    }[target]
    w = writer(tmp_path, roll_rows=300)
    with monkeypatch.context() as patch:
        calls = _crash_on(patch, owner, name, when)
        w.open()
        try:
            for batch in batches:
                w.append(batch)
            w.close()
        except Crash:
            pass
        w._exit.close()  # the process is gone: its lock goes with it
    assert calls[0] >= when, "the crash point was never reached"
    log = Log()
    w2 = writer(tmp_path, log).open()
    w2.close()
    got = read_dataset(tmp_path)
    written = w.written
    want = input_table(batches)
    keys = row_keys(want.slice(0, written))
    assert row_keys(got) == keys  # exactly what reached the WAL, each record once
    assert not list(tmp_path.glob("type=*/date=*/.*.tmp"))
    assert not list((tmp_path / "_tradecli" / "wal").glob("*.arrows"))
    assert any("recovered" in line or "already published" in line for line in log.infos)


def test_a_torn_segment_is_truncated_with_a_warning_and_the_rest_recovered(tmp_path: Path) -> None:
    batches = sim_batches(3_000)
    w = writer(tmp_path, roll_rows=1_000_000).open()
    for batch in batches:
        w.append(batch)
    assert w._segment is not None
    segment_path = w._segment.path
    size = segment_path.stat().st_size
    w._segment.abandon()  # the process dies: no seal, no roll
    w._exit.close()
    with open(segment_path, "r+b") as handle:  # the last batch only half on disk
        handle.truncate(size - 20)
    log = Log()
    writer(tmp_path, log).open().close()
    assert any("truncated to its last whole batch" in m for m in log.warnings)
    got = read_dataset(tmp_path)
    want = input_table(batches[:-1])
    assert row_keys(got) == row_keys(want)


def test_recovery_does_not_republish_a_segment_that_was_compacted_since(tmp_path: Path) -> None:
    batches = sim_batches(6_000)
    w = writer(tmp_path, roll_rows=1_500).open()
    for batch in batches:
        w.append(batch)
    w.close()
    # put back the last segment as if the writer had died before deleting it
    seq = w._last_seq
    wal_dir = tmp_path / "_tradecli" / "wal"
    seg = wal.Segment(wal_dir, seq)
    seg.append(batches[-1])
    seg.seal()
    compact(LocalBackend(tmp_path), target_rows=1_000_000)
    assert all(layout.parse_part(p.name)[0] != layout.parse_part(p.name)[1] for p in dataset_files(tmp_path))
    writer(tmp_path).open().close()
    assert row_keys(read_dataset(tmp_path)) == row_keys(input_table(batches))


def test_sequence_numbers_never_go_back_even_with_a_fresh_wal(tmp_path: Path) -> None:
    store_all(tmp_path, sim_batches(100))
    (tmp_path / "_tradecli" / "wal" / "last-seq").unlink()
    high = max(layout.parse_part(p.name)[1] for p in dataset_files(tmp_path))  # type: ignore[index]
    w = writer(tmp_path).open()
    assert w._last_seq >= high
    w.close()


# -- reading -----------------------------------------------------------------------------------


def test_query_merges_types_and_files_in_time_order(tmp_path: Path) -> None:
    batches = sim_batches(12_000, symbols=30)
    store_all(tmp_path, batches, roll_rows=300)
    got = query_table(tmp_path)
    assert len(dataset_files(tmp_path)) > 10
    times = got.column("timestamp").cast(pa.int64()).to_numpy()
    assert (np.diff(times) >= 0).all()
    assert row_keys(got) == row_keys(input_table(batches))


def test_query_goes_out_in_batches_of_at_most_batch_rows(tmp_path: Path) -> None:
    batches = sim_batches(9_000, symbols=25)
    store_all(tmp_path, batches, roll_rows=4_000)  # files of ~2,000 rows per type
    out = list(Query(LocalBackend(tmp_path), QueryOptions(batch_rows=700)).batches())
    assert max(b.num_rows for b in out) <= 700
    got = pa.concat_tables([pa.Table.from_batches([b]) for b in out], promote_options="permissive")
    times = got.column("timestamp").cast(pa.int64()).to_numpy()
    assert (np.diff(times) >= 0).all()
    assert row_keys(got) == row_keys(input_table(batches))


def test_merge_takes_what_lies_before_the_watermark_in_time_order() -> None:
    from tradecli.tickstore.reader import _merge, _Rows

    rng = np.random.default_rng(11)
    for _ in range(40):
        pieces = []
        for k in range(int(rng.integers(1, 5))):
            n = int(rng.integers(0, 60))
            ts = rng.integers(0, 50, n)
            ts[rng.random(n) < 0.1] = layout.NO_TIME
            table = pa.table({"ts": ts, "piece": np.full(n, k), "row": np.arange(n)})
            pieces.append(_Rows(table, np.argsort(ts, kind="stable"), np.sort(ts, kind="stable")))
        watermark = None if rng.random() < 0.2 else int(rng.integers(0, 55))
        every = pa.concat_tables([p.table for p in pieces])
        ts_all = every.column("ts").to_numpy()
        keys = list(
            zip(
                ts_all.tolist(),
                every.column("piece").to_pylist(),
                every.column("row").to_pylist(),
                strict=True,
            )
        )
        want = sorted(k for k in keys if watermark is None or k[0] < watermark)
        source, chosen, left = _merge(pieces, watermark)
        got = [] if source is None else source.take(pa.array(chosen)).to_pylist()
        assert [(g["ts"], g["piece"], g["row"]) for g in got] == want
        rest = sorted(
            (int(t), int(r.table.column("piece")[0].as_py()), int(r.table.column("row")[i].as_py()))
            for r in left
            for t, i in zip(r.ts.tolist(), r.indices.tolist(), strict=True)
        )
        assert rest == sorted(set(keys) - set(want))
        assert all((np.diff(r.ts) >= 0).all() for r in left)


def test_query_filters(tmp_path: Path) -> None:
    batches = sim_batches(8_000, symbols=12)
    store_all(tmp_path, batches)
    want = input_table(batches)
    trades = query_table(tmp_path, types=["trade"])
    assert set(trades.column("type").to_pylist()) == {"trade"}
    assert trades.num_rows == sum(t == "trade" for t in want.column("type").cast(pa.string()).to_pylist())
    aapl = query_table(tmp_path, symbols=["AAPL", "tsla"])
    assert set(aapl.column("symbol").cast(pa.string()).to_pylist()) == {"AAPL", "TSLA"}
    ts = want.column("timestamp").cast(pa.int64()).to_numpy()
    lo, hi = int(np.quantile(ts, 0.25)), int(np.quantile(ts, 0.5))
    window = query_table(tmp_path, start_ns=lo, end_ns=hi)
    assert window.num_rows == int(((ts >= lo) & (ts < hi)).sum())
    picked = query_table(tmp_path, columns=["symbol", "price"], where="price > 100 and volume >= 200")
    assert picked.column_names == ["symbol", "price"]
    price = want.column("price").to_numpy(zero_copy_only=False)
    volume = want.column("volume").to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        assert picked.num_rows == int(((price > 100) & (volume >= 200)).sum())
    quotes = query_table(tmp_path, where="bid_size > 500")  # trades have no bid_size: no match
    assert set(quotes.column("type").to_pylist()) == {"quote"}


def test_query_by_date_reads_only_that_day(tmp_path: Path) -> None:
    day1 = sim_batches(500, day="2026-11-19")
    day2 = sim_batches(700, day="2026-11-20")
    store_all(tmp_path, [*day1, *day2])
    from datetime import date

    got = query_table(tmp_path, first_day=date(2026, 11, 20), last_day=date(2026, 11, 20))
    assert got.num_rows == 700
    assert query_table(tmp_path, first_day=date(2026, 11, 18), last_day=date(2026, 11, 19)).num_rows == 500


def test_query_is_not_disturbed_by_a_compaction_running_meanwhile(tmp_path: Path) -> None:
    batches = sim_batches(6_000)
    store_all(tmp_path, batches, roll_rows=500)
    q = Query(LocalBackend(tmp_path), QueryOptions())
    stream = q.batches()
    first = next(stream)  # the day's files are open now
    compact(LocalBackend(tmp_path), target_rows=1_000_000)
    rest = list(stream)
    got = pa.concat_tables([pa.Table.from_batches([b]) for b in [first, *rest]], promote_options="permissive")
    assert row_keys(got) == row_keys(input_table(batches))


# -- upkeep ------------------------------------------------------------------------------------


def test_compaction_merges_small_neighbours_and_keeps_every_row_once(tmp_path: Path) -> None:
    batches = sim_batches(10_000)
    store_all(tmp_path, batches, roll_rows=700)
    before = dataset_files(tmp_path)
    backend = LocalBackend(tmp_path)
    result = compact(backend, target_rows=6_000)
    after = dataset_files(tmp_path)
    assert len(after) < len(before)
    assert result.files_in == len(before) - len(after) + len(result.merged)
    for path in after:
        assert layout.parse_part(path.name) is not None
        assert pq.read_metadata(path).num_rows <= 6_000
        table = pq.read_table(path)
        keys = list(
            zip(
                table.column("symbol").cast(pa.string()).to_pylist(),
                table.column("timestamp").cast(pa.int64()).to_pylist(),
                strict=True,
            )
        )
        assert keys == sorted(keys)
    assert row_keys(read_dataset(tmp_path)) == row_keys(input_table(batches))
    counted = duckdb.sql(
        f"select count(*) from read_parquet('{tmp_path}/**/*.parquet', hive_partitioning=true, "
        "union_by_name=true)"
    ).fetchall()[0]
    assert counted == (10_000,)
    assert compact(backend, target_rows=6_000).merged == []  # nothing left to do


def test_plan_merges_only_neighbours_below_half_the_target() -> None:
    from tradecli.tickstore.maintenance import FileInfo

    def info(first: int, rows: int) -> FileInfo:
        return FileInfo(layout.PartFile.of(f"part-{first}.parquet", 1), rows, None, None)

    groups = plan(
        [info(1, 10), info(2, 10), info(3, 60), info(4, 10), info(5, 45), info(6, 40), info(7, 10)], 100
    )
    assert [[g.part.first for g in group] for group in groups] == [[1, 2], [4, 5, 6]]


def test_a_compaction_stopped_between_publish_and_remove_counts_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = sim_batches(4_000)
    store_all(tmp_path, batches, roll_rows=500)
    backend = LocalBackend(tmp_path)
    with monkeypatch.context() as patch:
        _crash_on(patch, LocalBackend, "remove", 1)
        with pytest.raises(Crash):
            compact(backend, target_rows=1_000_000)
    # both the merged file and its inputs are on disk now; the store's readers count each row once
    assert row_keys(query_table(tmp_path)) == row_keys(input_table(batches))
    report = stats(backend)
    assert sum(p.rows for p in report.partitions) == 4_000
    assert sum(p.superseded_files for p in report.partitions) > 0
    compact(backend, target_rows=1_000_000)  # the next run finishes the job
    assert read_dataset(tmp_path).num_rows == 4_000
    assert sum(p.superseded_files for p in stats(backend).partitions) == 0


def test_prune_removes_whole_old_dates(tmp_path: Path) -> None:
    from tradecli.tickstore.timeparse import today

    old_day = today().toordinal() - 3000
    from datetime import date

    old = date.fromordinal(old_day).isoformat()
    recent = date.fromordinal(today().toordinal() - 10).isoformat()
    store_all(tmp_path, [*sim_batches(200, day=old), *sim_batches(300, day=recent)])
    backend = LocalBackend(tmp_path)
    dry = prune(backend, 2555, dry_run=True)
    assert {(p.rtype, p.day) for p in dry} == {("trade", old), ("quote", old)}
    assert read_dataset(tmp_path).num_rows == 500
    prune(backend, 2555)
    assert read_dataset(tmp_path).num_rows == 300
    assert not (tmp_path / "type=trade" / f"date={old}").exists()


def test_stats_match_duckdb_and_report_freshness(tmp_path: Path) -> None:
    batches = sim_batches(5_000)
    store_all(tmp_path, batches, roll_rows=1_000)
    report = stats(LocalBackend(tmp_path))
    rows = duckdb.sql(
        "select type, cast(date as varchar), count(*), epoch_ns(min(timestamp)), epoch_ns(max(timestamp)) "
        f"from read_parquet("
        f"'{tmp_path}/**/*.parquet', hive_partitioning=true, union_by_name=true) group by all"
    ).fetchall()
    by_partition = {(p.type, p.date): p for p in report.partitions}
    assert len(rows) == len(by_partition)
    for rtype, day, count, first, last in rows:
        assert by_partition[(rtype, day)].rows == count
        assert (by_partition[(rtype, day)].first_ts, by_partition[(rtype, day)].last_ts) == (first, last)
    total = report.totals()
    assert total["rows"] == 5_000
    assert total["files"] == len(dataset_files(tmp_path))
    assert total["small_files"] == total["files"]
    want_newest = int(input_table(batches).column("timestamp").cast(pa.int64()).to_numpy().max())
    assert report.newest_ts == want_newest == newest_record(LocalBackend(tmp_path))
    assert report.newest_age_seconds is not None and report.newest_age_seconds > 0


def test_interval_fsync_happens_while_the_input_is_quiet(tmp_path: Path) -> None:
    import time

    w = writer(tmp_path, fsync="interval", fsync_interval=0.05).open()
    try:
        w.append(sim_batches(10)[0])
        assert w.written == 1
        deadline = time.monotonic() + 10
        while w.stored < w.written and time.monotonic() < deadline:
            time.sleep(0.02)
        assert w.stored == w.written  # the ticker fsynced without another append
    finally:
        w.close()


def test_library_store_function(tmp_path: Path) -> None:
    from tradecli.stages.store import store

    counts = store(iter(sim_batches(1_000)), str(tmp_path), options=WriterOptions(roll_rows=400))
    assert counts["stored"] == 1_000
    assert counts["files"] == len(dataset_files(tmp_path))
    assert read_dataset(tmp_path).num_rows == 1_000
