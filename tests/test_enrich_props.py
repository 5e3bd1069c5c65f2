"""Properties of the enrich engine (talipp-style): however a stream is cut into batches, and
wherever the state is saved and restored, the output is the same to the last bit; input columns
pass untouched."""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np
import pyarrow as pa
from enrich_helpers import assert_same_bits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradecli.indicators import IndicatorState, Spec
from tradecli.records import normalise

SPEC = Spec(
    sma=(3, 34),  # 34: a long window, summed in blocks of its own length
    ema=(2, 4),
    rsi=(2, 3),
    volume_avg=(3,),
    macd=((2, 4, 2),),
    bbands=((3, 2.0),),
    atr=(2,),
)
START = 1_795_185_000 * 10**9  # 2026-11-20 09:30 New York
DAY = 86_400 * 10**9
EXAMPLES = int(os.environ.get("ENRICH_EXAMPLES", "60"))  # more for a deeper search by hand
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LEVELS = st.sampled_from([1e-4, 0.5, 20.0, 150.0, 3e5])  # each symbol keeps its own price scale
levels = st.fixed_dictionaries({symbol: LEVELS for symbol in ("AAA", "BBB", "CCC", "DDD")})
records = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["trade", "trade", "trade", "quote", "bar", "signal"]),
            "symbol": st.sampled_from(["AAA", "BBB", "CCC", "DDD"]),
            "step": st.sampled_from([0, 1, 1000, 10**9, 3 * 3600 * 10**9, DAY]),
            "move": st.floats(-0.05, 0.05),
            "volume": st.one_of(st.none(), st.integers(0, 5000)),
            "prev_close": st.one_of(st.none(), st.floats(0.01, 500)),
            "memo": st.one_of(st.none(), st.text(max_size=5), st.integers(-5, 5).map(str)),
        }
    ),
    min_size=1,
    max_size=120,
)


def build(rows: list[dict[str, Any]], scale: dict[str, float] | None = None) -> pa.RecordBatch:
    """Records as the reader hands them on: normalised Arrow columns."""
    n = len(rows)
    scale = scale or {}
    stamp = START + np.cumsum([r["step"] for r in rows])
    price = np.array([scale.get(r["symbol"], 20.0) * (1 + r["move"]) for r in rows])
    kind = [r["type"] for r in rows]
    is_ = {t: np.array([k == t for k in kind]) for t in ("trade", "quote", "bar", "signal")}

    def floats(values: np.ndarray, where: np.ndarray) -> pa.Array:
        return pa.array(values, type=pa.float64(), mask=~where)

    columns = {
        "type": pa.array(kind),
        "symbol": pa.array([r["symbol"] for r in rows]),
        "timestamp": pa.array(stamp, type=pa.int64()),
        "price": floats(price, is_["trade"]),
        "volume": pa.array([r["volume"] for r in rows], type=pa.int64()),
        "prev_close": pa.array([r["prev_close"] for r in rows], type=pa.float64()),
        "bid": floats(price * 0.99, is_["quote"]),
        "ask": floats(price * 1.01, is_["quote"]),
        "open": floats(price, is_["bar"]),
        "high": floats(price * 1.02, is_["bar"]),
        "low": floats(price * 0.98, is_["bar"]),
        "close": floats(price, is_["bar"]),
        "vwap": floats(price * 1.001, is_["bar"] & (np.arange(n) % 2 == 0)),
        "memo": pa.array([r["memo"] for r in rows], type=pa.string()),
        "strategy": pa.array(["x" if s else None for s in is_["signal"]], type=pa.string()),
    }
    batch, rejects = normalise(pa.record_batch(columns))
    assert not rejects
    return batch


def pieces(batch: pa.RecordBatch, cuts: list[int]) -> list[pa.RecordBatch]:
    points = sorted({min(c, batch.num_rows) for c in cuts} | {0, batch.num_rows})
    return [batch.slice(a, b - a) for a, b in itertools.pairwise(points)]


def run(batches: list[pa.RecordBatch], engine: IndicatorState | None = None) -> pa.Table:
    engine = engine or IndicatorState(SPEC)
    return concat([engine.add(b) for b in batches])


def concat(batches: list[pa.RecordBatch]) -> pa.Table:
    """A batch of only other records comes back untouched, so schemas may differ: unify them."""
    return pa.concat_tables([pa.Table.from_batches([b]) for b in batches], promote_options="permissive")


@SETTINGS
@given(records, levels, st.lists(st.integers(0, 120), max_size=8))
def test_batch_size_invariance(rows: list[dict[str, Any]], scale: dict[str, float], cuts: list[int]) -> None:
    batch = build(rows, scale)
    whole = run([batch])
    cut = run(pieces(batch, cuts))
    one_by_one = run(pieces(batch, list(range(batch.num_rows))))
    assert_same_bits(cut, whole)
    assert_same_bits(one_by_one, whole)


@SETTINGS
@given(records, levels, st.lists(st.integers(0, 120), max_size=5), st.integers(0, 8))
def test_snapshot_restore_mid_stream(
    rows: list[dict[str, Any]], scale: dict[str, float], cuts: list[int], at: int
) -> None:
    batches = pieces(build(rows, scale), cuts)
    at = min(at, len(batches))
    straight = run(batches)
    first = IndicatorState(SPEC)
    head = [first.add(b) for b in batches[:at]]
    data = first.snapshot()
    second = IndicatorState(SPEC)
    second.restore(data)
    tail = [second.add(b) for b in batches[at:]]
    restarted = concat(head + tail)
    assert restarted.equals(straight)  # the very same arithmetic: identical, bit for bit
    again = IndicatorState(SPEC)
    again.restore(second.snapshot())
    assert again.snapshot() == second.snapshot()


@SETTINGS
@given(records, levels, st.lists(st.integers(0, 120), max_size=4))
def test_input_columns_and_unknown_fields_untouched(
    rows: list[dict[str, Any]], scale: dict[str, float], cuts: list[int]
) -> None:
    batch = build(rows, scale)
    out = run(pieces(batch, cuts))
    kind = np.array(batch.column("type").cast(pa.string()).to_pylist())
    for name in batch.schema.names:
        before = batch.column(name)
        after = out.column(name).combine_chunks()
        if name == "vwap" and "bar_vwap" in out.schema.names:
            # a bar's own VWAP moves to bar_vwap; vwap becomes the session's
            assert out.column("bar_vwap").combine_chunks().equals(before)
            keep = ~np.isin(kind, ["trade", "bar"])
            assert after.filter(pa.array(keep)).equals(before.filter(pa.array(keep)))
            continue
        assert after.equals(before), name
    others = pa.array(kind == "signal")
    for name in SPEC.columns():
        if name not in out.schema.names:
            continue
        assert out.column(name).combine_chunks().filter(others).null_count == int(np.sum(kind == "signal"))
