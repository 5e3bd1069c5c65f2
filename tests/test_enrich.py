"""enrich against TA-Lib: generated streams of many kinds, cut into batches of every size.

The reference here is deliberately plain: TA-Lib's batch functions over each series' whole array,
and Python loops with ``datetime`` for sessions. The engine must match it on every record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pytest
from enrich_helpers import assert_same_bits

from tradecli.indicators import (
    IndicatorState,
    ScanLayout,
    SessionClock,
    Spec,
    seg_cumsum_int,
    seg_scan,
    window_sums,
)
from tradecli.records import normalise

talib = pytest.importorskip("talib")

NEW_YORK = ZoneInfo("America/New_York")
RTOL = 1e-9
FULL = Spec(
    sma=(2, 20, 50),
    ema=(1, 9, 21),
    rsi=(2, 14),
    volume_avg=(20, 5),
    macd=((12, 26, 9), (26, 12, 9), (5, 35, 5), (3, 3, 1)),
    bbands=((20, 2.0), (5, 1.5)),
    atr=(14, 1),
)
MACD_COLUMNS = ("macd_", "macd_signal_", "macd_hist_")


# ---------------------------------------------------------------------------------------------
# Generated streams


def ns(when: datetime) -> int:
    return int(when.timestamp()) * 1_000_000_000


@dataclass
class StreamSpec:
    """What a generated stream holds. Every knob is one of the issue's hard cases."""

    rows: int = 4000
    symbols: int = 12
    seed: int = 1
    flat: int = 0  # symbols whose price never moves
    one_tick: int = 0  # symbols with exactly one trade
    late: int = 0  # symbols that first trade in the second half
    zero_volume: int = 0  # symbols whose trades all have volume 0
    huge_tiny: bool = False  # prices from 1e-5 to 1e7 side by side
    quotes: float = 0.0  # share of rows that are quotes
    others: float = 0.0  # share of rows that are signals (pass through)
    bars: float = 0.0  # share of rows that are bars (own series per symbol)
    days: int = 1  # sessions spanned (timestamps run over several days)
    start: datetime = field(default_factory=lambda: datetime(2026, 11, 20, 14, 30, tzinfo=UTC))
    no_prev_close: int = 0  # symbols without prev_close
    grid: float = 0.0  # round prices to this tick (flat windows after moves)


def generate(spec: StreamSpec) -> pa.RecordBatch:
    rng = np.random.default_rng(spec.seed)
    n, k = spec.rows, spec.symbols
    names = [f"S{i:03d}" for i in range(k)]
    if spec.huge_tiny:
        level = np.where(np.arange(k) % 2 == 0, 10 ** rng.uniform(5, 7, k), 10 ** rng.uniform(-5, -3, k))
    else:
        level = np.exp(rng.uniform(0, 6, k))
    weights = rng.uniform(0.2, 3, k)
    sym = rng.choice(k, size=n, p=weights / weights.sum())
    late = np.arange(k) >= k - spec.late
    sym = np.where(late[sym] & (np.arange(n) < n // 2), rng.integers(0, max(k - spec.late, 1), n), sym)
    for one in range(spec.one_tick):  # one trade each, somewhere in the stream
        name_index = len(names)
        names.append(f"ONE{one}")
        level = np.append(level, 10 ** rng.uniform(-2, 4))
        sym = np.insert(sym, rng.integers(0, sym.size + 1), name_index)
    n = sym.size
    steps = rng.normal(0, 0.003, n)
    price = np.empty(n)
    for s in range(len(names)):
        mask = sym == s
        walk = level[s] * np.exp(np.cumsum(steps[mask]))
        price[mask] = level[s] if s < spec.flat else walk
    price = np.round(price, 12) if not spec.huge_tiny else price
    if spec.grid:
        price = np.maximum(np.round(price / spec.grid) * spec.grid, spec.grid)
    volume = rng.choice([0, 1, 7, 50, 100, 200, 500, 1000, 25_000], size=n)
    volume[np.isin(sym, np.arange(spec.flat, spec.flat + spec.zero_volume))] = 0
    span = spec.days * 86_400 - 60
    seconds = np.sort(rng.uniform(0, span, n)) if spec.days > 1 else np.cumsum(rng.exponential(0.5, n))
    timestamp = ns(spec.start) + (seconds * 1e9).astype(np.int64)
    prev_close = level[sym] * 0.97
    no_prev = sym >= len(names) - spec.no_prev_close

    kind = np.full(n, "trade", dtype=object)
    draw = rng.uniform(size=n)
    kind[draw < spec.quotes] = "quote"
    kind[(draw >= spec.quotes) & (draw < spec.quotes + spec.others)] = "signal"
    bar_from = spec.quotes + spec.others
    kind[(draw >= bar_from) & (draw < bar_from + spec.bars)] = "bar"
    is_trade, is_quote, is_bar, is_signal = (kind == t for t in ("trade", "quote", "bar", "signal"))
    high = price * (1 + rng.uniform(0, 0.01, n))
    low = price * (1 - rng.uniform(0, 0.01, n))
    own_vwap = rng.uniform(size=n) < 0.5

    def floats(values: np.ndarray, where: np.ndarray) -> pa.Array:
        return pa.array(values, type=pa.float64(), mask=~where)

    columns = {
        "type": pa.array(kind.tolist()),
        "symbol": pa.array([names[s] for s in sym]),
        "timestamp": pa.array(timestamp, type=pa.int64()),
        "source": pa.array(["test"] * n),
        "price": floats(price, is_trade),
        "volume": pa.array(volume, type=pa.int64(), mask=~(is_trade | is_bar)),
        "prev_close": floats(prev_close, ~no_prev & ~is_signal),
        "bid": floats(price * 0.999, is_quote),
        "ask": floats(price * 1.001, is_quote),
        "open": floats(price, is_bar),
        "high": floats(high, is_bar),
        "low": floats(low, is_bar),
        "close": floats(price, is_bar),
        "vwap": floats((high + low) / 2, is_bar & own_vwap),
        "strategy": pa.array(["gap_and_go" if s else None for s in is_signal]),
        "note": pa.array([f"n{i}" if i % 7 == 0 else None for i in range(n)]),  # an unknown field
    }
    batch, rejects = normalise(pa.record_batch(columns))
    assert not rejects, rejects[:3]
    return batch


def cut(
    batch: pa.RecordBatch, seed: int, sizes: tuple[int, ...] = (1, 2, 3, 17, 500, 4096)
) -> list[pa.RecordBatch]:
    """The batch in pieces of mixed sizes (1 row, a few rows, large)."""
    rng = np.random.default_rng(seed)
    out, at = [], 0
    while at < batch.num_rows:
        size = int(rng.choice(sizes))
        out.append(batch.slice(at, size))
        at += size
    return out


def run(batches: list[pa.RecordBatch], spec: Spec = FULL, state: IndicatorState | None = None) -> pa.Table:
    engine = state or IndicatorState(spec)
    return pa.Table.from_batches([engine.add(b) for b in batches])


# ---------------------------------------------------------------------------------------------
# The reference


def session_of(ns_value: int, start: tuple[int, int] = (4, 0), zone: ZoneInfo = NEW_YORK) -> int:
    local = datetime.fromtimestamp(ns_value / 1e9, tz=zone)
    day = local.date()
    if (local.hour, local.minute) < start:
        day -= timedelta(days=1)
    return (day - datetime(1970, 1, 1).date()).days


def column(table: pa.Table | pa.RecordBatch, name: str) -> np.ndarray:
    if name not in table.schema.names:
        return np.full(table.num_rows, np.nan)
    col = table.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    return np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def reference(batch: pa.RecordBatch, spec: Spec = FULL) -> dict[str, np.ndarray]:
    """Every output column, computed per series with TA-Lib and plain loops."""
    n = batch.num_rows
    kind = np.array(batch.column("type").cast(pa.string()).to_pylist(), dtype=object)
    symbol = np.array(batch.column("symbol").cast(pa.string()).to_pylist(), dtype=object)
    price = np.where(kind == "bar", column(batch, "close"), column(batch, "price"))
    volume = np.nan_to_num(column(batch, "volume"))
    ts = np.asarray(batch.column("timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False))
    high = np.where(kind == "bar", column(batch, "high"), price)
    low = np.where(kind == "bar", column(batch, "low"), price)
    bar_vwap = column(batch, "bar_vwap") if "bar_vwap" in batch.schema.names else column(batch, "vwap")
    typical = (high + low + price) / 3
    vwap_price = np.where(kind == "bar", np.where(np.isnan(bar_vwap), typical, bar_vwap), price)
    prev_close = column(batch, "prev_close")
    names = spec.columns()
    out = {name: np.full(n, np.nan) for name in names}
    updating = ((kind == "trade") | (kind == "bar")) & ~np.isnan(price)
    start = tuple(int(p) for p in spec.session_start.split(":"))
    zone = ZoneInfo(spec.timezone)
    for key in sorted({(k, s) for k, s, u in zip(kind, symbol, updating, strict=True) if u}):
        rows = np.flatnonzero(updating & (kind == key[0]) & (symbol == key[1]))
        x, v = price[rows], volume[rows]
        put = {}
        for p in spec.sma:
            put[f"sma_{p}"] = talib.SMA(x, p)
        for p in spec.ema:
            put[f"ema_{p}"] = talib.EMA(x, p)
        for p in spec.rsi:
            put[f"rsi_{p}"] = talib.RSI(x, p)
        for f, s, g in spec.macd:
            suffix = f"{f}_{s}_{g}"
            line, sig, hist = talib.MACD(x, f, s, g)
            put[f"macd_{suffix}"], put[f"macd_signal_{suffix}"], put[f"macd_hist_{suffix}"] = line, sig, hist
        for p, k in spec.bbands:
            suffix = f"{p}_{k:g}".replace(".", "p")
            upper, middle, lower = talib.BBANDS(x, p, k, k, 0)
            put[f"bb_upper_{suffix}"], put[f"bb_middle_{suffix}"], put[f"bb_lower_{suffix}"] = (
                upper,
                middle,
                lower,
            )
        for p in spec.atr:
            put[f"atr_{p}"] = (
                talib.ATR(high[rows], low[rows], x, p) if key[0] == "bar" else np.full(x.size, np.nan)
            )
        for i, p in enumerate(spec.volume_avg):
            avg = talib.SMA(v, p)
            put[f"avg_volume_{p}"] = avg
            if i == 0:
                with np.errstate(invalid="ignore", divide="ignore"):
                    put["volume_ratio"] = np.where(avg > 0, v / avg, np.nan)
        put["gap_pct"] = x / prev_close[rows] - 1
        vwap, day_high, day_low, day_volume = (np.empty(x.size) for _ in range(4))
        current, pv, vol, hi, lo = None, 0.0, 0, -np.inf, np.inf
        for j, row in enumerate(rows):
            key_now = session_of(int(ts[row]), start, zone)
            if current is None or key_now > current:
                current, pv, vol, hi, lo = key_now, 0.0, 0, -np.inf, np.inf
            pv += vwap_price[row] * volume[row]
            vol += int(volume[row])
            hi, lo = max(hi, high[row]), min(lo, low[row])
            vwap[j] = pv / vol if vol else np.nan
            day_high[j], day_low[j], day_volume[j] = hi, lo, vol
        put.update(vwap=vwap, day_high=day_high, day_low=day_low, day_volume=day_volume)
        for name, values in put.items():
            out[name][rows] = values
    quote = kind == "quote"
    bid, ask = column(batch, "bid"), column(batch, "ask")
    ok = quote & (bid > 0) & (ask > 0)
    out["mid"] = np.where(ok, (bid + ask) / 2, np.nan)
    out["spread"] = np.where(ok, ask - bid, np.nan)
    return out


def assert_matches(table: pa.Table, expected: dict[str, np.ndarray], scale: np.ndarray) -> None:
    """Same nulls, and values within 1e-9 relative (MACD: or 1e-12 of the price, see README)."""
    for name, want in expected.items():
        got = column(table, name)
        nulls = np.isnan(want)
        mismatch = np.flatnonzero(np.isnan(got) != nulls)
        assert mismatch.size == 0, f"{name}: null where TA-Lib has a value (or back) at rows {mismatch[:5]}"
        atol = 1e-12 * scale if name.startswith(MACD_COLUMNS) else 0.0
        bound = RTOL * np.abs(want) + atol
        bad = np.flatnonzero(~nulls & ~(np.abs(got - want) <= bound))
        assert bad.size == 0, (
            f"{name}: {bad.size} values differ, first at row {bad[0]}: {got[bad[0]]!r} vs {want[bad[0]]!r}"
        )


def check(stream: StreamSpec, spec: Spec = FULL, cut_seed: int = 0) -> pa.Table:
    batch = generate(stream)
    table = run(cut(batch, cut_seed), spec)
    scale = np.nan_to_num(
        np.where(column(batch, "close") > 0, column(batch, "close"), column(batch, "price"))
    )
    assert_matches(table, reference(batch, spec), scale)
    return table


# ---------------------------------------------------------------------------------------------
# Against TA-Lib


CASES = {
    "interleaved": StreamSpec(rows=6000, symbols=40, quotes=0.2, others=0.05),
    "flat": StreamSpec(rows=3000, symbols=6, flat=3),
    "one_tick": StreamSpec(rows=2000, symbols=5, one_tick=30),
    "huge_tiny": StreamSpec(rows=5000, symbols=10, huge_tiny=True),
    "zero_volume": StreamSpec(rows=3000, symbols=6, zero_volume=3),
    "late_symbol": StreamSpec(rows=4000, symbols=8, late=3),
    "sessions": StreamSpec(rows=6000, symbols=5, days=9, start=datetime(2026, 3, 3, 12, tzinfo=UTC)),
    "sessions_fall_dst": StreamSpec(
        rows=4000, symbols=4, days=6, start=datetime(2026, 10, 29, 5, tzinfo=UTC)
    ),
    "bars": StreamSpec(rows=4000, symbols=6, bars=0.5, quotes=0.1),
    "no_prev_close": StreamSpec(rows=1500, symbols=6, no_prev_close=3),
    "penny_grid": StreamSpec(rows=6000, symbols=6, grid=0.01),
    "subpenny_grid": StreamSpec(rows=4000, symbols=4, huge_tiny=True, grid=1e-4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_talib(case: str) -> None:
    check(CASES[case], cut_seed=len(case))


def test_default_columns_match_talib() -> None:
    """The design document's defaults, under their names, appended after the input's columns."""
    stream = StreamSpec(rows=3000, symbols=7, seed=4, quotes=0.1)
    names = generate(stream).schema.names
    table = check(stream, Spec())
    # the input has a vwap column (bars carry one): the provider's value is kept as bar_vwap
    assert table.schema.names == [*names, "bar_vwap", *(c for c in Spec().columns() if c not in names)]


def test_column_names() -> None:
    assert Spec().columns() == [
        "vwap",
        "sma_20",
        "ema_9",
        "rsi_14",
        "avg_volume_20",
        "volume_ratio",
        "gap_pct",
        "day_high",
        "day_low",
        "day_volume",
        "mid",
        "spread",
    ]
    spec = Spec(sma=(20, 50), ema=(21,), macd=((12, 26, 9),), bbands=((20, 2.0), (10, 2.5)), atr=(14,))
    names = spec.columns()
    for name in (
        "sma_50",
        "ema_21",
        "macd_12_26_9",
        "macd_signal_12_26_9",
        "macd_hist_12_26_9",
        "bb_upper_20_2",
        "bb_middle_20_2",
        "bb_lower_20_2",
        "bb_upper_10_2p5",
        "atr_14",
    ):
        assert name in names


@pytest.mark.slow
def test_long_stream_stays_within_tolerance() -> None:
    """Two symbols, 300,000 trades each, one at $2,000,000 and one at $0.0004, in large batches."""
    check(
        StreamSpec(rows=600_000, symbols=2, huge_tiny=True, seed=9), Spec(sma=(20, 200), bbands=((20, 2.0),))
    )


def test_seed_row_and_warm_up_across_batches() -> None:
    """Warm-up spans batches of one record: the first value appears exactly at the n-th record."""
    batch = generate(StreamSpec(rows=60, symbols=1))
    table = run(cut(batch, 0, sizes=(1,)), Spec(sma=(5,), ema=(5,), rsi=(5,), volume_avg=(5,)))
    for name, first in (("sma_5", 4), ("ema_5", 4), ("rsi_5", 5), ("avg_volume_5", 4)):
        values = column(table, name)
        assert np.isnan(values[:first]).all() and not np.isnan(values[first:]).any(), name


def test_rsi_of_a_flat_series_is_zero_as_in_talib() -> None:
    x = np.full(40, 12.5)
    batch, _ = normalise(
        pa.record_batch(
            {
                "type": ["trade"] * 40,
                "symbol": ["FLAT"] * 40,
                "timestamp": pa.array(np.arange(40) * 10**9 + 1_795_185_000 * 10**9),
                "price": x,
                "volume": [100] * 40,
            }
        )
    )
    table = run([batch], Spec(rsi=(14,), bbands=((20, 2.0),)))
    np.testing.assert_array_equal(column(table, "rsi_14")[14:], talib.RSI(x, 14)[14:])
    assert (column(table, "rsi_14")[14:] == 0).all()
    assert (column(table, "bb_upper_20_2")[19:] == 12.5).all()


# ---------------------------------------------------------------------------------------------
# Kernels


@pytest.mark.parametrize("seed", range(6))
def test_seg_scan_matches_a_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.choice([0, 1, 2, 5, 31, 32, 33, 100, 2000], size=30)
    values = rng.normal(size=int(lengths.sum()))
    init = rng.normal(size=lengths.size)
    for op, a, step in (
        (0, 0.9, lambda y, v: 0.9 * y + v),
        (0, 1.0, lambda y, v: y + v),
        (0, 1 / 3, lambda y, v: y / 3 + v),
        (0, 0.0, lambda y, v: v),
        (1, 1.0, max),
        (2, 1.0, min),
    ):
        got = seg_scan(values, lengths, init, op, a)
        want, at = np.empty_like(values), 0
        for length, y in zip(lengths, init, strict=True):
            for j in range(at, at + length):
                y = step(y, values[j])
                want[j] = y
            at += length
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("segments", [1, 3, 40])  # few segments: the chain's Python tail; many: vector steps
@pytest.mark.parametrize(("op", "a"), [(0, 1.0), (0, 0.8), (0, 1 / 3), (0, 0.0), (1, 1.0), (2, 1.0)])
def test_scan_split_anywhere_gives_the_same_bits(segments: int, op: int, a: float) -> None:
    """Each segment scanned whole, or in two calls handing on (carry, partial): the same bits."""
    rng = np.random.default_rng(segments)
    lengths = rng.integers(1, 300, segments)
    values = rng.normal(size=int(lengths.sum()))
    start = rng.normal(size=(1, segments))
    zero = np.zeros(segments, dtype=np.int64)
    decay = np.array([a])
    whole, carry, partial = ScanLayout(lengths, zero).scan(
        [values], start, op, decay, np.full((1, segments), -0.0)
    )
    cut = rng.integers(0, lengths + 1)
    rank = np.arange(values.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    head = rank < np.repeat(cut, lengths)
    first, carry1, partial1 = ScanLayout(cut, zero).scan(
        [values[head]], start, op, decay, np.full((1, segments), -0.0)
    )
    second, carry2, partial2 = ScanLayout(lengths - cut, cut).scan(
        [values[~head]], carry1, op, decay, partial1
    )
    joined = np.empty_like(values)
    joined[head], joined[~head] = first[0], second[0]
    assert np.array_equal(joined.view(np.int64), whole[0].view(np.int64))
    assert np.array_equal(carry2.view(np.int64), carry.view(np.int64))
    if op == 0:
        assert np.array_equal(partial2.view(np.int64), partial.view(np.int64))


def test_seg_cumsum_int_is_exact() -> None:
    values = np.array([2**52, 1, 1, 5, 7, 2**40], dtype=np.int64)
    got = seg_cumsum_int(values, np.array([3, 0, 2, 1]), np.array([10, 0, 2**53, 0]))
    assert got.tolist() == [2**52 + 10, 2**52 + 11, 2**52 + 12, 2**53 + 5, 2**53 + 12, 2**40]


def test_a_price_that_falls_a_millionfold_leaves_no_error_behind() -> None:
    """Every window is summed from its own values, in any batches: after a fall from $1,000,000 to
    $0.001 the windows are as exact as any (a running sum, as TA-Lib's, would keep ~1e9 x 1e-16)."""
    rng = np.random.default_rng(2)
    x = np.r_[1e6 * (1 + 1e-3 * rng.normal(size=30)), 1e-3 * (1 + 1e-3 * rng.normal(size=90))]
    n = x.size
    batch, _ = normalise(
        pa.record_batch(
            {
                "type": ["trade"] * n,
                "symbol": ["X"] * n,
                "timestamp": pa.array(1_795_185_000 * 10**9 + np.arange(n)),
                "price": x,
                "volume": [1] * n,
            }
        )
    )
    exact = np.array([np.nan] * 19 + [x[i - 19 : i + 1].mean() for i in range(19, n)])
    spec = Spec(sma=(20, 40), ema=(), rsi=(), volume_avg=(), bbands=((40, 2.0),))
    whole = run([batch], spec)
    np.testing.assert_allclose(column(whole, "sma_20"), exact, rtol=1e-13)
    assert_same_bits(run(cut(batch, 0, sizes=(1,)), spec), whole)
    assert_same_bits(run(cut(batch, 3, sizes=(1, 7, 16, 33)), spec), whole)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_same_bits_however_the_stream_is_cut(case: str) -> None:
    """Whole, in pieces of 1 to 4096 rows, and restarted from a snapshot: identical output."""
    batch = generate(CASES[case])
    spec = Spec(**{**vars(FULL), "sma": (2, 20, 50, 120), "bbands": ((20, 2.0), (40, 1.0))})
    whole = run([batch], spec)
    assert_same_bits(run(cut(batch, 7), spec), whole)
    pieces = cut(batch, 8, sizes=(1, 5, 16, 300))
    first = IndicatorState(spec)
    head = [first.add(piece) for piece in pieces[: len(pieces) // 2]]
    second = IndicatorState(spec)
    second.restore(first.snapshot())
    tail = [second.add(piece) for piece in pieces[len(pieces) // 2 :]]
    assert_same_bits(pa.Table.from_batches(head + tail), whole)


@pytest.mark.parametrize("width", [2, 5, 32, 33, 200])
def test_window_sums_direct_and_van_herk(width: int) -> None:
    x = np.random.default_rng(width).uniform(1, 2, 1000)
    ends = np.arange(width - 1, 1000)
    want = np.array([x[e - width + 1 : e + 1].sum() for e in ends])
    np.testing.assert_allclose(window_sums(x, ends, width), want, rtol=1e-14)


def test_window_sums_use_only_the_window() -> None:
    """A huge neighbour does not blur a tiny series' window (no running sum across them)."""
    flat = np.array([1e12, 1e12, 1e12, 1e-9, 2e-9, 3e-9, 4e-9])
    got = window_sums(flat, np.array([5, 6]), 3)
    np.testing.assert_allclose(got, [6e-9, 9e-9], rtol=1e-15)


# ---------------------------------------------------------------------------------------------
# Sessions


def test_session_clock_is_dst_correct() -> None:
    clock = SessionClock("04:00", "America/New_York")
    cases = [
        datetime(2026, 3, 7, 8, 59, tzinfo=UTC),  # 03:59 EST: still Friday's session
        datetime(2026, 3, 7, 9, 0, tzinfo=UTC),  # 04:00 EST
        datetime(2026, 3, 9, 7, 59, tzinfo=UTC),  # 03:59 EDT, the Monday after the change
        datetime(2026, 3, 9, 8, 0, tzinfo=UTC),  # 04:00 EDT
        datetime(2026, 11, 2, 8, 59, tzinfo=UTC),  # 03:59 EST after the change back
        datetime(2026, 11, 2, 9, 0, tzinfo=UTC),
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC),  # 01:30 EDT, the repeated hour
        datetime(2026, 11, 1, 6, 30, tzinfo=UTC),  # 01:30 EST
    ]
    stamps = np.array([ns(c) for c in cases], dtype=np.int64)
    got = clock.keys(stamps)
    assert got.tolist() == [session_of(int(s)) for s in stamps]
    assert len(set(got[2:4].tolist())) == 2 and len(set(got[4:6].tolist())) == 2


def test_session_clock_other_zone_and_start() -> None:
    clock = SessionClock("08:00", "Europe/London")
    stamps = np.array(
        [ns(datetime(2026, 6, 1, 6, 59, tzinfo=UTC)), ns(datetime(2026, 6, 1, 7, 0, tzinfo=UTC))]
    )
    assert np.diff(clock.keys(stamps)).tolist() == [1]


def test_vwap_resets_at_session_start_and_sma_runs_on() -> None:
    before = ns(datetime(2026, 11, 20, 8, 59, 59, tzinfo=UTC))  # 03:59:59 New York
    after = ns(datetime(2026, 11, 20, 9, 0, 0, tzinfo=UTC))
    batch, _ = normalise(
        pa.record_batch(
            {
                "type": ["trade"] * 4,
                "symbol": ["X"] * 4,
                "timestamp": pa.array([before - 2, before - 1, after, after + 1]),
                "price": [10.0, 20.0, 30.0, 40.0],
                "volume": [1, 3, 2, 2],
            }
        )
    )
    out = run([batch], Spec(sma=(3,), ema=(), rsi=(), volume_avg=()))
    assert column(out, "vwap").tolist() == [10.0, 17.5, 30.0, 35.0]
    assert column(out, "day_volume").tolist() == [1, 4, 2, 4]
    assert column(out, "day_high").tolist() == [10.0, 20.0, 30.0, 40.0]
    assert column(out, "day_low").tolist() == [10.0, 10.0, 30.0, 30.0]
    np.testing.assert_allclose(column(out, "sma_3")[2:], [20.0, 30.0])
    moved = run([batch], Spec(sma=(), ema=(), rsi=(), volume_avg=(), session_start="03:00"))
    assert column(moved, "day_volume").tolist() == [1, 4, 6, 8]


def test_a_late_print_from_the_previous_session_does_not_reset() -> None:
    """An out-of-order trade stamped before the boundary joins the current session."""
    after = ns(datetime(2026, 11, 20, 9, 0, 5, tzinfo=UTC))
    stamps = [after, after - 10 * 10**9, after + 1]
    batch, _ = normalise(
        pa.record_batch(
            {
                "type": ["trade"] * 3,
                "symbol": ["X"] * 3,
                "timestamp": pa.array(stamps),
                "price": [1.0, 2.0, 3.0],
                "volume": [1, 1, 1],
            }
        )
    )
    assert column(run([batch]), "day_volume").tolist() == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# Record types, columns


def test_record_types() -> None:
    batch = generate(StreamSpec(rows=400, symbols=3, quotes=0.3, others=0.2, bars=0.2))
    table = run([batch], Spec(atr=(3,)))
    kind = np.array(table.column("type").cast(pa.string()).to_pylist())
    sma = column(table, "sma_20")
    mid = column(table, "mid")
    assert np.isnan(sma[kind == "quote"]).all() and np.isnan(sma[kind == "signal"]).all()
    assert not np.isnan(mid[kind == "quote"]).any() and np.isnan(mid[kind != "quote"]).all()
    for name in Spec(atr=(3,)).columns():
        assert np.isnan(column(table, name)[kind == "signal"]).all(), name
    assert np.isnan(column(table, "atr_3")[kind == "trade"]).all()
    assert not np.isnan(column(table, "atr_3")[kind == "bar"][20:]).all()


def test_trades_and_bars_of_one_symbol_are_separate_series() -> None:
    rows = 60
    kinds = ["trade", "bar"] * (rows // 2)
    price = np.where(np.arange(rows) % 2 == 0, 100.0, 50.0) + np.arange(rows) * 0.01
    batch, _ = normalise(
        pa.record_batch(
            {
                "type": kinds,
                "symbol": ["X"] * rows,
                "timestamp": pa.array(1_795_185_000 * 10**9 + np.arange(rows) * 10**9),
                "price": pa.array(
                    np.where(np.arange(rows) % 2 == 0, price, np.nan), mask=np.arange(rows) % 2 == 1
                ),
                "open": pa.array(price, mask=np.arange(rows) % 2 == 0),
                "high": pa.array(price + 1, mask=np.arange(rows) % 2 == 0),
                "low": pa.array(price - 1, mask=np.arange(rows) % 2 == 0),
                "close": pa.array(price, mask=np.arange(rows) % 2 == 0),
                "volume": [10] * rows,
            }
        )
    )
    table = run([batch], Spec(sma=(5,)))
    sma = column(table, "sma_5")
    np.testing.assert_allclose(sma[0::2][4:], talib.SMA(price[0::2], 5)[4:], rtol=1e-12)
    np.testing.assert_allclose(sma[1::2][4:], talib.SMA(price[1::2], 5)[4:], rtol=1e-12)
    assert column(table, "day_volume")[-2:].tolist() == [300, 300]


def test_bar_vwap_keeps_the_providers_value() -> None:
    batch = generate(StreamSpec(rows=200, symbols=2, bars=1.0))
    had = column(batch, "vwap")
    table = run([batch])
    np.testing.assert_array_equal(column(table, "bar_vwap"), had)
    assert table.schema.names.count("vwap") == 1
    again = run(
        [pa.record_batch(table.to_batches()[0].columns, names=table.schema.names)] if table.num_rows else []
    )
    np.testing.assert_array_equal(column(again, "bar_vwap"), had)
    np.testing.assert_allclose(column(again, "vwap"), column(table, "vwap"), rtol=1e-12)


def test_enriching_twice_gives_the_same_columns() -> None:
    batch = generate(StreamSpec(rows=500, symbols=4, quotes=0.2, others=0.1))
    once = run([batch]).combine_chunks().to_batches()[0]
    twice = run([once])
    assert twice.schema.names == once.schema.names
    for name in FULL.columns():
        np.testing.assert_allclose(column(twice, name), column(once, name), rtol=1e-12)


def test_batch_without_market_records_is_untouched() -> None:
    batch = pa.record_batch(
        {"type": pa.array(["signal", "alert"]).dictionary_encode(), "message": ["a", "b"]}
    )
    assert IndicatorState().add(batch) is batch
    empty = pa.record_batch({"x": pa.array([], pa.int64())})
    assert IndicatorState().add(empty) is empty


def test_gap_pct() -> None:
    batch = generate(StreamSpec(rows=300, symbols=3, no_prev_close=1))
    table = run([batch])
    price, prev = column(batch, "price"), column(batch, "prev_close")
    np.testing.assert_array_equal(column(table, "gap_pct"), price / prev - 1)


def test_volume_ratio_is_null_without_volume() -> None:
    batch, _ = normalise(
        pa.record_batch(
            {
                "type": ["trade"] * 4,
                "symbol": ["X"] * 4,
                "timestamp": pa.array(1_795_185_000 * 10**9 + np.arange(4)),
                "price": [1.0, 2.0, 3.0, 4.0],
                "volume": pa.array([0, 0, None, 6], type=pa.int64()),
            }
        )
    )
    table = run([batch], Spec(volume_avg=(2,)))
    ratio = column(table, "volume_ratio")
    assert np.isnan(ratio[:3]).all() and ratio[3] == 2.0
    assert np.isnan(column(table, "vwap")[:3]).all() and column(table, "vwap")[3] == 4.0


def test_registry_grows_to_many_symbols() -> None:
    batch = generate(StreamSpec(rows=3000, symbols=300, seed=3))
    engine = IndicatorState(Spec())
    for piece in cut(batch, 1, sizes=(50, 700)):
        engine.add(piece)
    assert engine.symbols == len(set(batch.column("symbol").cast(pa.string()).to_pylist())) > 250


@pytest.mark.slow
def test_more_series_than_a_radix_sort_key_holds() -> None:
    """70,000 symbols with trades and bars: 140,000 series, past the 16-bit sort key."""
    n = 70_000
    names = pa.array([f"Z{i:05d}" for i in range(n)])
    stamp = pa.array(np.full(n, 1_795_185_000 * 10**9)).cast(pa.timestamp("ns", tz="UTC"))
    engine = IndicatorState(Spec(sma=(2,), ema=(), rsi=(), volume_avg=()))
    for kind, price in (("trade", 1.0), ("bar", 5.0), ("trade", 3.0), ("bar", 7.0)):
        columns = {
            "type": pa.array([kind] * n).dictionary_encode(),
            "symbol": names.dictionary_encode(),
            "timestamp": stamp,
            "price" if kind == "trade" else "close": np.full(n, price),
        }
        out = engine.add(pa.record_batch(columns))
    assert engine.series == 2 * n
    assert (column(out, "sma_2") == 6.0).all()


def test_dictionary_indices_are_read_per_batch() -> None:
    """Two batches whose symbol dictionaries list the same names in another order."""
    first = pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int32()), pa.array(["A", "B"]))
    second = pa.DictionaryArray.from_arrays(pa.array([1, 0], pa.int32()), pa.array(["B", "A"]))
    engine = IndicatorState(Spec(sma=(2,), ema=(), rsi=(), volume_avg=()))
    kind = pa.array(["trade", "trade"]).dictionary_encode()
    stamp = pa.array([1_795_185_000 * 10**9] * 2).cast(pa.timestamp("ns", tz="UTC"))
    engine.add(pa.record_batch({"type": kind, "symbol": first, "timestamp": stamp, "price": [1.0, 10.0]}))
    out = engine.add(
        pa.record_batch({"type": kind, "symbol": second, "timestamp": stamp, "price": [3.0, 20.0]})
    )
    assert column(out, "sma_2").tolist() == [2.0, 15.0]


def test_spec_and_state_are_independent_of_format() -> None:
    engine = IndicatorState(FULL)
    engine.add(generate(StreamSpec(rows=100, symbols=2)))
    restored = IndicatorState(FULL)
    restored.restore(engine.snapshot())
    assert restored.symbols == 2


def test_restore_refuses_other_indicators_and_garbage() -> None:
    engine = IndicatorState(Spec())
    engine.add(generate(StreamSpec(rows=100, symbols=2)))
    data = engine.snapshot()
    with pytest.raises(ValueError, match="other indicators"):
        IndicatorState(Spec(sma=(21,))).restore(data)
    for bad in (b"", b"hello", data[:40], data[: len(data) // 2]):
        with pytest.raises(ValueError):
            IndicatorState(Spec()).restore(bad)
    first_format = data.replace(b'"version":2', b'"version":1', 1)  # before the exact scans
    with pytest.raises(ValueError, match="version 1 is not 2"):
        IndicatorState(Spec()).restore(first_format)
    other_session = IndicatorState(Spec(session_start="09:30", timezone="Europe/London"))
    other_session.restore(data)  # sessions may change between runs
