"""Gap & Go against the design document's own function, on every record of generated streams.

``gap_and_go_screener`` below is the design document's per-record function, transcribed as it
was written (its comments translated). ``seed_screen`` wraps it the way the design document's
``RealTimeScreener`` called it: an exception means no signal. The vectorised strategy, run by the
real screener, must give a signal exactly where the function does, with the same numbers and
message - except where a number comes out NaN or infinite, which the screener skips by rule.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from screen_data import batches_of, enriched_sim, records_batch

from tradecli.screener import Screener, ScreenState
from tradecli.strategies import gap_and_go, param_defaults

BASE_NS = 1_795_185_000_000_000_000  # 2026-11-20 09:30 New York


# --- the design document's function, as written ------------------------------------------------
def gap_and_go_screener(market_data):  # type: ignore[no-untyped-def]
    """Screening for Gap & Go in real time"""
    # Check for a significant gap
    if "prev_close" not in market_data:
        return None

    gap_pct = (market_data["price"] - market_data["prev_close"]) / market_data["prev_close"]

    # Basic criteria
    if gap_pct < 0.10:  # Less than a 10% gap
        return None

    if market_data.get("volume_ratio", 1) < 3:  # Less than 3x volume
        return None

    # Check that it is holding the gap
    if market_data["price"] < market_data.get("vwap", market_data["price"]):
        return None

    # If it passes every filter, generate the signal
    return {
        "signal": True,
        "signal_type": "gap_and_go_continuation",
        "confidence": min(0.9, gap_pct / 0.20),  # Max confidence at 20% gap
        "entry_price": market_data["price"],
        "stop_loss": market_data["vwap"] * 0.97,
        "target": market_data["price"] * 1.15,
        "message": f"Gap & Go: {market_data['symbol']} gapped {gap_pct:.1%} with {market_data.get('volume_ratio', 0):.1f}x volume",  # noqa: E501
    }


# -----------------------------------------------------------------------------------------------


def seed_screen(record: dict[str, Any]) -> dict[str, Any] | None:
    """The design document's caller: a strategy that raises gives no signal."""
    market_data = {k: v for k, v in record.items() if v is not None}
    if market_data.get("type") == "bar" and "close" in market_data:
        market_data.setdefault("price", market_data["close"])  # a bar's price is its close
    try:
        return gap_and_go_screener(market_data)  # type: ignore[no-any-return]
    except Exception:
        return None


def finite_signal(record: dict[str, Any], result: dict[str, Any] | None) -> bool:
    """A signal whose numbers, the gap of its message included, are all finite.

    The screener skips the others (with a warning), by its NaN/inf rule.
    """
    if result is None:
        return False
    price = record.get("price", record.get("close"))
    gap = (price - record["prev_close"]) / record["prev_close"]
    numbers = [result[k] for k in ("confidence", "entry_price", "stop_loss", "target")]
    return all(math.isfinite(x) for x in [*numbers, rr(result), gap])


def rr(result: dict[str, Any]) -> float:
    risk = abs(result["entry_price"] - result["stop_loss"])
    reward = abs(result["target"] - result["entry_price"])
    return reward / risk if risk > 0 else 0.0


def screener(**kwargs: Any) -> Screener:
    strategy = gap_and_go.build(param_defaults(gap_and_go))
    strategy.cooldown = kwargs.pop("cooldown", 0.0)
    strategy.max_per_day = 0
    return Screener([strategy], ScreenState(), **kwargs)


def signals_of(batches: list[pa.RecordBatch], **kwargs: Any) -> list[dict[str, Any]]:
    engine = screener(**kwargs)
    out: list[dict[str, Any]] = []
    for batch in batches:
        result = engine.process(batch)
        if result is not None:
            out.extend(plain_rows(result))
    return out


def plain_rows(data: pa.RecordBatch | pa.Table) -> list[dict[str, Any]]:
    """Rows as dicts, with times as integer ns (pyarrow cannot make ns datetimes without pandas)."""
    for i, f in enumerate(data.schema):
        if pa.types.is_timestamp(f.type):
            data = data.set_column(i, f.name, data.column(i).cast(pa.int64()))
    return data.to_pylist()  # type: ignore[no-any-return]


# --- generated records --------------------------------------------------------------------------
EDGE_FLOATS = [0.0, -0.0, 1e-300, 5e-324, 1e300, 1.7e308, math.nan, math.inf, -math.inf, -1.0]
EXACT_GAPS = [
    (100.0, 110.0),
    (20.0, 22.0),
    (10.0, 12.0),
    (50.0, 60.0),
    (100.0, 109.99999999999999),
    (20.0, 22.000000000000004),
]
prices = st.one_of(
    st.floats(min_value=0.01, max_value=5000, allow_nan=False),
    st.sampled_from([1e-9, 1e-300, 1e300, 1.5e308]),
)
prev_closes = st.one_of(st.floats(min_value=0.01, max_value=5000), st.sampled_from([1e-300, 1e300]))
gaps = st.one_of(
    st.floats(min_value=-0.5, max_value=1.0),
    st.sampled_from([0.1, 0.0999999999999, 0.1000000000001, 0.2, 0.19999999999, 0.5]),
)
ratios = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=20),
    st.sampled_from([3.0, 2.9999999999999996, 3.0000000000000004, 1.0, *EDGE_FLOATS]),
)
vwap_scale = st.one_of(
    st.floats(min_value=0.8, max_value=1.2),
    st.sampled_from([1.0, 0.9999999999, 1.0000000001, *EDGE_FLOATS]),
)


@st.composite
def record(draw: Any, symbol: str, ns: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["trade"] * 8 + ["bar", "quote"]))
    rec: dict[str, Any] = {"type": kind, "symbol": symbol, "timestamp": ns, "source": "sim"}
    prev_close = draw(prev_closes) if draw(st.booleans()) or draw(st.booleans()) else None
    if prev_close is not None:
        rec["prev_close"] = prev_close
    choice = draw(st.integers(0, 5))
    if choice == 0 or prev_close is None:
        price = draw(prices)
    elif choice == 1:  # gaps of exactly 10 % and 20 %, and a hair either side
        prev_close, price = draw(st.sampled_from(EXACT_GAPS))
        rec["prev_close"] = prev_close
    else:
        price = prev_close * (1 + draw(gaps))
        if not (math.isfinite(price) and price > 0):
            price = draw(prices)
    if kind == "trade":
        rec["price"] = price
        rec["volume"] = draw(st.integers(0, 10**6))
    elif kind == "bar":
        rec.update(open=price, high=price, low=price, close=price, volume=draw(st.integers(0, 10**6)))
    else:
        quote = min(price, 1e6)
        rec.update(bid=quote, ask=quote * 1.001)
    if draw(st.integers(0, 4)):
        rec["volume_ratio"] = draw(ratios)
    if draw(st.integers(0, 4)):
        scale = draw(vwap_scale)
        rec["vwap"] = price * scale if math.isfinite(scale) and scale > 0 else scale
    return rec


@st.composite
def independent_records(draw: Any) -> list[dict[str, Any]]:
    """Each record its own symbol, so the first-record edge makes every on-record fire."""
    n = draw(st.integers(1, 150))
    return [draw(record(f"S{i}", BASE_NS + i * 1000)) for i in range(n)]


@st.composite
def symbol_stream(draw: Any) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 150))
    symbols = draw(st.lists(st.sampled_from(["AAA", "BBB", "CCC", "DDD"]), min_size=n, max_size=n))
    day_jump = draw(st.integers(0, n))  # the New York day changes here
    out = []
    for i, symbol in enumerate(symbols):
        ns = BASE_NS + i * 1_000_000 + (86_400 * 10**9 if i >= day_jump else 0)
        out.append(draw(record(symbol, ns)))
    return out


def assert_same_signal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["signal_type"] == want["signal_type"] == "gap_and_go_continuation"
    assert got["side"] == "long"
    assert got["strategy"] == "gap_and_go"
    for key in ("confidence", "entry_price", "stop_loss", "target"):
        assert got[key] == want[key], (key, got[key], want[key])
    assert got["rr_ratio"] == rr(want)
    assert got["message"] == want["message"]


# --- per record ---------------------------------------------------------------------------------
# (a failing example takes hypothesis up to five minutes to shrink: let it finish and report it)
@pytest.mark.timeout(900)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(independent_records())
def test_vectorised_equals_design_document_on_every_record(records: list[dict[str, Any]]) -> None:
    batch = records_batch(records)
    got = {s["symbol"]: s for s in signals_of([batch])}
    for rec in records:
        want = seed_screen(rec)
        if finite_signal(rec, want):
            assert rec["symbol"] in got, (rec, want)
            assert_same_signal(got.pop(rec["symbol"]), want)  # type: ignore[arg-type]
    assert not got, f"signals the design document's function does not give: {list(got.values())[:3]}"


# --- streams: rising edges of the per-record verdict, per symbol and New York day ----------------
def expected_edges(records: list[dict[str, Any]]) -> list[tuple[str, int, dict[str, Any]]]:
    """Signals the documented edge rule gives on top of the design document's verdicts.

    A record missing price, prev_close or vwap, or whose signal has a non-finite number, is not
    judged and leaves the symbol's state alone; the state starts off each New York day.
    """
    state: dict[str, tuple[int, int]] = {}  # symbol -> (on, day)
    out = []
    for rec in records:
        price = rec.get("price", rec.get("close") if rec["type"] == "bar" else None)
        if price is None or rec.get("prev_close") is None or rec.get("vwap") is None:
            continue
        verdict = seed_screen(rec)
        if verdict is not None and not finite_signal(rec, verdict):
            continue
        on = int(verdict is not None)
        day = (rec["timestamp"] - 5 * 3600 * 10**9) // (86_400 * 10**9)  # EST, as in November
        previous, previous_day = state.get(rec["symbol"], (0, day))
        if previous_day != day:
            previous = 0
        if on and not previous:
            out.append((rec["symbol"], rec["timestamp"], verdict))  # type: ignore[arg-type]
        state[rec["symbol"]] = (on, day)
    return out


@pytest.mark.timeout(900)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(symbol_stream(), st.integers(1, 50))
def test_edges_follow_the_design_document_verdicts(records: list[dict[str, Any]], cut: int) -> None:
    batch = records_batch(records)
    want = expected_edges(records)
    for batches in ([batch], batches_of(pa.Table.from_batches([batch]), cut)):
        got = signals_of(batches)
        assert [(s["symbol"], s["timestamp"]) for s in got] == [(s, t) for s, t, _ in want]
        for signal, (_, _, verdict) in zip(got, want, strict=True):
            assert_same_signal(signal, verdict)


def test_large_simulated_stream_with_planted_edge_values() -> None:
    """200,000 enriched simulated records, some fields blanked or set to NaN, inf, 0 or thresholds."""
    table = enriched_sim(200_000)
    rng = np.random.default_rng(3)
    n = table.num_rows
    for name, specials in (
        ("vwap", [np.nan, np.inf, -np.inf, 0.0]),
        ("volume_ratio", [np.nan, np.inf, 3.0, 2.9999999999999996, 0.0]),
    ):
        values = table.column(name).to_numpy(zero_copy_only=False).copy()
        valid = ~np.isnan(values)
        hit = rng.random(n) < 0.01
        values[hit] = rng.choice(specials, hit.sum())
        blank = rng.random(n) < 0.01
        mask = (~valid & ~hit) | blank
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, pa.array(values, mask=mask))
    records = plain_rows(table)
    want = expected_edges(records)
    got = signals_of(batches_of(table, 8192))
    assert len(want) > 5  # the simulator plants gaps: some must be found
    assert [(s["symbol"], s["timestamp"]) for s in got] == [(s, t) for s, t, _ in want]
    for signal, (_, _, verdict) in zip(got, want, strict=True):
        assert_same_signal(signal, verdict)
