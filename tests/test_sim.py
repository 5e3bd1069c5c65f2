"""The simulated feed: realistic structure, planted gaps, reproducibility, bounds and pacing."""

from __future__ import annotations

import time
from datetime import date

import numpy as np
import pyarrow as pa
import pytest
from conftest import SESSION_DATE, arrow_table, invoke, run_trade, sim_args

from tradecli.sources.sim import (
    BUILTIN_UNIVERSE,
    SimConfig,
    SimMarket,
    session_open_ns,
    synthetic_ticker,
    universe,
)


@pytest.fixture(scope="module")
def session_table() -> pa.Table:
    result = run_trade(*sim_args(60_000, "--format", "arrow"))
    assert result.returncode == 0, result.stderr
    return arrow_table(result.stdout)


def column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def test_records_have_the_design_fields(session_table: pa.Table) -> None:
    names = set(session_table.schema.names)
    assert {
        "type",
        "symbol",
        "timestamp",
        "recv_ts",
        "source",
        "prev_close",
        "price",
        "volume",
        "exchange",
        "conditions",
        "trade_id",
        "bid",
        "ask",
        "bid_size",
        "ask_size",
    } <= names
    types = set(session_table.column("type").to_pylist())
    assert types == {"trade", "quote"}
    assert set(session_table.column("source").to_pylist()) == {"sim"}
    assert set(session_table.column("symbol").to_pylist()) <= set(BUILTIN_UNIVERSE)


def test_prices_on_the_tick_grid_and_quotes_not_crossed(session_table: pa.Table) -> None:
    kinds = column(session_table, "type")
    trades = session_table.filter(pa.array(kinds == "trade"))
    quotes = session_table.filter(pa.array(kinds == "quote"))
    for values in (column(trades, "price"), column(quotes, "bid"), column(quotes, "ask")):
        tick = np.where(values >= 1.0, 0.01, 0.0001)
        assert np.allclose(np.round(values / tick) * tick, values, rtol=0, atol=1e-9)
        assert (values > 0).all()
    assert (column(quotes, "bid") < column(quotes, "ask")).all()


def test_sizes_mix_odd_and_round_lots(session_table: pa.Table) -> None:
    trades = session_table.filter(pa.array(column(session_table, "type") == "trade"))
    volume = column(trades, "volume")
    odd = volume < 100
    assert 0.2 < odd.mean() < 0.7
    assert (volume[~odd] % 100 == 0).all()
    conditions = trades.column("conditions").to_pylist()
    assert all((c == [37]) == bool(o) for c, o in zip(conditions, odd, strict=True))  # odd lots flagged


def test_timestamps_never_go_backwards_per_symbol(session_table: pa.Table) -> None:
    ts = session_table.column("timestamp").cast(pa.int64()).to_numpy()
    symbols = column(session_table, "symbol")
    for symbol in set(symbols):
        assert (np.diff(ts[symbols == symbol]) >= 0).all()
    opening = session_open_ns(date.fromisoformat(SESSION_DATE))
    assert ts.min() >= opening


def test_some_symbols_gap_ten_to_thirty_percent_on_volume(session_table: pa.Table) -> None:
    trades = session_table.filter(pa.array(column(session_table, "type") == "trade"))
    symbols = column(trades, "symbol")
    price, prev = column(trades, "price"), column(trades, "prev_close")
    volume = column(trades, "volume")
    gaps, quiet = [], []
    for symbol in set(symbols):
        mine = symbols == symbol
        first_gap = price[mine][0] / prev[mine][0] - 1
        (gaps if abs(first_gap) >= 0.09 else quiet).append((symbol, first_gap, volume[mine].mean()))
    assert 3 <= len(gaps) <= 10, gaps
    assert all(abs(g) <= 0.33 for _, g, _ in gaps)
    assert all(abs(g) < 0.05 for _, g, _ in quiet)
    assert np.mean([v for *_, v in gaps]) > 1.5 * np.mean([v for *_, v in quiet])  # the burst of volume


def test_same_seed_same_bytes_however_cut() -> None:
    first = invoke(sim_args(5000, "--quiet")).stdout_bytes
    again = invoke(sim_args(5000, "--quiet")).stdout_bytes
    assert first == again
    longer = invoke(sim_args(7000, "--quiet")).stdout_bytes
    assert longer.startswith(first)
    other = invoke(sim_args(5000, "--quiet", seed=8)).stdout_bytes
    assert other != first


def test_symbols_types_and_universe() -> None:
    result = invoke(sim_args(500, "--symbols", "aapl,GME", "--types", "trades", "--format", "arrow"))
    table = arrow_table(result.stdout_bytes)
    assert set(table.column("symbol").to_pylist()) == {"AAPL", "GME"}
    assert set(table.column("type").to_pylist()) == {"trade"}
    assert "bid" not in table.schema.names
    assert universe(None, 50)[-1] == synthetic_ticker(5)
    assert len(set(universe(None, 10_000))) == 10_000
    bad = invoke([*sim_args(10), "--types", "ticks"])
    assert bad.exit_code == 2
    bars = invoke([*sim_args(10), "--types", "trades,bars"])
    assert bars.exit_code == 2 and "bars come from a file" in bars.stderr
    nothing = invoke([*sim_args(10), "--symbols", " , "])
    assert nothing.exit_code == 2 and "names no symbols" in nothing.stderr


def test_session_rolls_to_next_weekday_with_new_previous_close() -> None:
    market = SimMarket(
        SimConfig(symbols=["AAPL", "GME"], seed=1, day=date(2026, 11, 20), events_per_symbol_second=2.0)
    )
    closes_before = market.prev_close.copy()
    days = set()
    for _ in range(40):
        batch = market.chunk()
        ns = batch.column("timestamp").cast(pa.int64()).to_numpy()
        days.add(int(ns[0] // 86_400_000_000_000))
    assert market.day == date(2026, 11, 23)  # Friday, then the weekend is skipped
    assert len(days) >= 2
    assert not np.array_equal(market.prev_close, closes_before)


def test_count_and_duration_bound_the_feed() -> None:
    assert invoke(sim_args(0)).stdout_bytes == b""
    started = time.monotonic()
    result = run_trade("ingest", "--seed", "1", "--rate", "200", "--duration", "1.5s", "--quiet")
    elapsed = time.monotonic() - started
    assert result.returncode == 0
    count = result.stdout.count(b"\n")
    assert 150 <= count <= 400, count  # paced: about 200 per second for 1.5 s
    assert elapsed >= 1.4


def test_paced_records_carry_the_wall_clock() -> None:
    before = time.time_ns()
    result = run_trade(
        "ingest", "--seed", "1", "--rate", "100", "--count", "20", "--format", "arrow", "--quiet"
    )
    table = arrow_table(result.stdout)
    ts = table.column("timestamp").cast(pa.int64()).to_numpy()
    assert before <= ts.min() and ts.max() <= time.time_ns()
    assert (np.diff(ts) >= 0).all()
