"""trade screen: the strategies, edges, cooldowns, daily limits, state and the command line."""

from __future__ import annotations

import fcntl
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pyarrow as pa
import pytest
from conftest import invoke, ndjson_records
from screen_data import batches_of, enriched_sim, records_batch, to_ndjson

from tradecli.screener import Screener, ScreenState, StateFiles, ny_days
from tradecli.stages.screen import ScreenOptions, configure, screen
from tradecli.strategies import Evaluation, Numbers, Strategy, Zone, builtin_module, param_defaults

NY = ZoneInfo("America/New_York")


def at(hhmm: str, seconds: float = 0.0, day: str = "2026-11-20") -> int:
    """ns since the epoch for a New York wall-clock time."""
    hour, minute = map(int, hhmm.split(":"))
    moment = datetime.fromisoformat(day).replace(hour=hour, minute=minute, tzinfo=NY)
    return int((moment + timedelta(seconds=seconds)).timestamp() * 1e9)


def trade(symbol: str, ns: int, price: float, **fields: Any) -> dict[str, Any]:
    return {"type": "trade", "symbol": symbol, "timestamp": ns, "source": "sim", "price": price, **fields}


def gapper(symbol: str, ns: int, price: float = 112.0, **fields: Any) -> dict[str, Any]:
    """A trade that passes Gap & Go (12 % over a prev_close of 100, 4x volume, above vwap)."""
    base = {"prev_close": 100.0, "vwap": 110.0, "volume_ratio": 4.0, "volume": 500}
    return trade(symbol, ns, price, **{**base, **fields})


def builtin(name: str, cooldown: float = 0.0, max_per_day: int = 0, **params: float) -> Strategy:
    module = builtin_module(name)
    strategy: Strategy = module.build({**param_defaults(module), **params})
    strategy.cooldown, strategy.max_per_day = cooldown, max_per_day
    return strategy


def rows(data: pa.RecordBatch | pa.Table | None) -> list[dict[str, Any]]:
    if data is None:
        return []
    for i, f in enumerate(data.schema):
        if pa.types.is_timestamp(f.type):
            data = data.set_column(i, f.name, data.column(i).cast(pa.int64()))
    return data.to_pylist()  # type: ignore[no-any-return]


def run(records: list[dict[str, Any]] | list[pa.RecordBatch], *strategies: Strategy, **kwargs: Any) -> Any:
    """Signals (as dicts) and the warnings the core gave."""
    warnings: list[str] = []
    batches = [records_batch(records)] if records and isinstance(records[0], dict) else records
    out = list(
        screen(batches, strategies=list(strategies), warn=warnings.append, **kwargs)  # type: ignore[arg-type]
    )
    signals = [r for b in out for r in rows(b)]
    return signals, warnings


# --- edges, cooldowns, days -------------------------------------------------------------------


def test_fires_on_the_edge_not_on_every_record() -> None:
    records = [
        gapper("ABC", at("09:31")),
        gapper("ABC", at("09:32")),  # still on: no signal
        gapper("ABC", at("09:33"), price=109.0),  # under vwap: off
        gapper("ABC", at("09:34")),  # on again: a new edge
    ]
    signals, _ = run(records, builtin("gap_and_go"))
    assert [s["timestamp"] for s in signals] == [at("09:31"), at("09:34")]
    s = signals[0]
    assert s["type"] == "signal" and s["symbol"] == "ABC" and s["source"] == "sim"
    assert s["side"] == "long" and s["signal_type"] == "gap_and_go_continuation"
    assert s["entry_price"] == 112.0 and s["stop_loss"] == 110.0 * 0.97 and s["target"] == 112.0 * 1.15
    assert s["confidence"] == pytest.approx(0.6)
    assert s["rr_ratio"] == pytest.approx((112.0 * 1.15 - 112.0) / (112.0 - 106.7))
    assert s["message"] == "Gap & Go: ABC gapped 12.0% with 4.0x volume"
    assert (s["price"], s["prev_close"], s["vwap"], s["volume_ratio"]) == (112.0, 100.0, 110.0, 4.0)


@pytest.mark.parametrize(("gap_minutes", "expected"), [(4, 1), (6, 2)])
def test_cooldown_holds_back_a_second_edge(gap_minutes: int, expected: int) -> None:
    records = [
        gapper("ABC", at("09:31")),
        gapper("ABC", at("09:32"), price=109.0),
        gapper("ABC", at("09:31", seconds=60 * gap_minutes)),
    ]
    signals, _ = run(records, builtin("gap_and_go", cooldown=300))
    assert len(signals) == expected


def test_cooldown_is_per_symbol_and_strategy() -> None:
    records = [
        gapper("ABC", at("09:31")),
        gapper("XYZ", at("09:31", 1)),
        gapper("ABC", at("09:32"), price=109),
    ]
    records.append(gapper("ABC", at("09:33")))
    signals, _ = run(records, builtin("gap_and_go", cooldown=300))
    assert [s["symbol"] for s in signals] == ["ABC", "XYZ"]


def test_records_missing_a_needed_field_hold_the_condition() -> None:
    quote = {"type": "quote", "symbol": "ABC", "timestamp": at("09:32"), "bid": 111.9, "ask": 112.1}
    no_vwap = gapper("ABC", at("09:33"))
    del no_vwap["vwap"]
    records = [gapper("ABC", at("09:31")), quote, no_vwap, gapper("ABC", at("09:34"))]
    signals, _ = run(records, builtin("gap_and_go"))
    assert [s["timestamp"] for s in signals] == [at("09:31")]


def test_the_condition_starts_afresh_each_new_york_day() -> None:
    records = [
        gapper("ABC", at("15:59")),
        gapper("ABC", at("19:30")),  # 00:30 UTC the next day, but the same New York day
        gapper("ABC", at("09:30", day="2026-11-23")),
    ]
    signals, _ = run(records, builtin("gap_and_go"))
    assert [s["timestamp"] for s in signals] == [at("15:59"), at("09:30", day="2026-11-23")]


def test_max_per_day_counts_per_new_york_day_and_warns_once() -> None:
    day1 = [gapper(s, at("10:00", seconds=i)) for i, s in enumerate("ABCDE")]
    late = [gapper("F", at("23:59"))]  # 04:59 UTC the next day: still the first New York day
    day2 = [gapper(s, at("10:00", day="2026-11-23", seconds=i)) for i, s in enumerate("ABC")]
    signals, warnings = run(day1 + late + day2, builtin("gap_and_go", max_per_day=2))
    assert [s["symbol"] for s in signals] == ["A", "B", "A", "B"]
    limit_warnings = [w for w in warnings if "limit of 2" in w]
    assert (
        len(limit_warnings) == 2 and "2026-11-20" in limit_warnings[0] and "2026-11-23" in limit_warnings[1]
    )


def test_ny_days_follow_daylight_saving() -> None:
    stamps = np.array(
        [
            at(t, day=d)
            for d in ("2026-03-07", "2026-03-08", "2026-03-09", "2026-10-31", "2026-11-01")
            for t in ("00:30", "23:30")
        ]
    )
    expected = [
        (datetime.fromtimestamp(ns / 1e9, NY).date() - datetime(1970, 1, 1).date()).days for ns in stamps
    ]
    assert ny_days(stamps).tolist() == expected
    assert ny_days(stamps[:2]).tolist() == expected[:2]


# --- the other built-ins ----------------------------------------------------------------------


def test_vwap_reclaim_needs_a_dip_below_vwap_first() -> None:
    records = [
        trade("ABC", at("09:31"), 101.0, vwap=100.0),  # first print above: not a reclaim
        trade("ABC", at("09:32"), 99.0, vwap=100.0),  # below the band: armed
        trade("ABC", at("09:33"), 100.1, vwap=100.0),  # inside the band: nothing changes
        trade("ABC", at("09:34"), 100.5, vwap=100.0),  # above the band: reclaim
        trade("ABC", at("09:35"), 100.1, vwap=100.0),  # inside the band again: holds
        trade("ABC", at("09:36"), 100.6, vwap=100.0),  # still above: no new signal
    ]
    signals, _ = run(records, builtin("vwap_reclaim"))
    assert [s["timestamp"] for s in signals] == [at("09:34")]
    s = signals[0]
    assert (s["side"], s["signal_type"], s["confidence"]) == ("long", "vwap_reclaim", 0.6)
    assert s["stop_loss"] == pytest.approx(99.5) and s["target"] == pytest.approx(100.5 + 2 * 1.0)
    assert s["message"] == "VWAP reclaim: ABC back above VWAP 100.00 at 100.50"


def test_rsi_extreme_fires_both_sides() -> None:
    records = [
        trade("ABC", at("09:40"), 50.0, rsi_14=50.0),
        trade("ABC", at("09:41"), 48.0, rsi_14=24.0),
        trade("ABC", at("09:42"), 47.0, rsi_14=20.0),
        trade("ABC", at("09:43"), 55.0, rsi_14=76.0),
        trade("ABC", at("09:44"), 0.5, rsi_14=40.0),
        trade("XYZ", at("09:45"), 0.5, rsi_14=10.0),
    ]
    signals, _ = run(records, builtin("rsi_extreme"))
    assert [(s["symbol"], s["side"], s["signal_type"]) for s in signals] == [
        ("ABC", "long", "rsi_oversold_bounce"),
        ("ABC", "short", "rsi_overbought_fade"),
        ("XYZ", "long", "rsi_oversold_bounce"),
    ]
    long, short, cheap = signals
    assert long["stop_loss"] == pytest.approx(48 * 0.98) and long["target"] == pytest.approx(48 * 1.04)
    assert long["confidence"] == pytest.approx(0.5 + 0.5 * 6 / 30)
    assert short["stop_loss"] == pytest.approx(55 * 1.02) and short["target"] == pytest.approx(55 * 0.96)
    assert short["confidence"] == pytest.approx(0.5 + 0.5 * 6 / 30)
    assert long["message"] == "RSI oversold: ABC RSI(14) 24.0 at 48.00, watch for a bounce"
    assert cheap["message"] == "RSI oversold: XYZ RSI(14) 10.0 at 0.5000, watch for a bounce"
    other_period, _ = run(records, builtin("rsi_extreme", period=9))
    assert other_period == []  # reads rsi_9, which these records lack


def test_hod_breakout_and_volume_spike() -> None:
    hod = {"day_high": 10.5, "day_low": 10.0, "volume_ratio": 3.0}
    records = [
        trade("ABC", at("10:00"), 10.4, **hod),
        trade("ABC", at("10:01"), 10.5, **hod),  # at the high, on 3x volume
        trade("XYZ", at("10:01"), 10.5, **{**hod, "day_low": 10.49}),  # range too small
        trade("QQQ", at("10:01"), 10.5, **{**hod, "volume_ratio": 1.5}),  # not on volume
    ]
    signals, _ = run(records, builtin("hod_breakout"))
    assert [(s["symbol"], s["timestamp"]) for s in signals] == [("ABC", at("10:01"))]
    assert signals[0]["confidence"] == pytest.approx(0.75)
    assert signals[0]["stop_loss"] == pytest.approx(10.29) and signals[0]["target"] == pytest.approx(10.92)

    spike = {"avg_volume_20": 200.0, "vwap": 20.0}
    records = [
        trade("ABC", at("10:00"), 20.5, volume=400, **spike),
        trade("ABC", at("10:01"), 20.5, volume=2000, **spike),  # 10x, above vwap: long
        trade("ABC", at("10:02"), 19.5, volume=3000, **spike),  # 15x below vwap: short
        trade("XYZ", at("10:02"), 19.5, volume=900, **{**spike, "avg_volume_20": 100.0}),  # < 1,000 shares
    ]
    signals, _ = run(records, builtin("volume_spike"))
    assert [(s["side"], s["signal_type"]) for s in signals] == [
        ("long", "volume_spike_up"),
        ("short", "volume_spike_down"),
    ]
    assert signals[0]["message"] == "Volume spike: ABC 2,000 shares, 10.0x the average, at 20.50 above VWAP"
    assert signals[1]["confidence"] == 0.9 and signals[1]["volume"] == 3000


def test_a_bar_is_screened_by_its_close() -> None:
    bar = {
        "type": "bar",
        "symbol": "ABC",
        "timestamp": at("09:31"),
        "open": 111.0,
        "high": 113.0,
        "low": 110.0,
        "close": 112.0,
        "volume": 10_000,
        "prev_close": 100.0,
        "vwap": 110.0,
        "volume_ratio": 4.0,
    }
    signals, _ = run([bar], builtin("gap_and_go"))
    assert len(signals) == 1 and signals[0]["entry_price"] == 112.0 and signals[0]["price"] == 112.0


# --- streams: batch sizes, state, pass-through, universe ------------------------------------------


@pytest.fixture(scope="module")
def stream() -> pa.Table:
    return enriched_sim(30_000)


def all_builtins() -> list[Strategy]:
    return configure(ScreenOptions())


def test_batch_sizes_do_not_change_the_signals(stream: pa.Table) -> None:
    results = []
    for size in (997, 4096, stream.num_rows):
        signals, _ = run(batches_of(stream, size), *all_builtins())
        results.append(signals)
    assert len(results[0]) > 20
    assert {s["strategy"] for s in results[0]} == {
        "gap_and_go",
        "hod_breakout",
        "vwap_reclaim",
        "rsi_extreme",
        "volume_spike",
    }
    assert results[0] == results[1] == results[2]


def test_snapshot_and_restore_midstream_equal_one_run(stream: pa.Table) -> None:
    whole, _ = run(batches_of(stream, 4096), *all_builtins())
    first, second = stream.slice(0, 12_345), stream.slice(12_345)
    state = ScreenState()
    part1, _ = run(batches_of(first, 4096), *all_builtins(), state=state)
    restored = ScreenState.restore(state.snapshot())
    assert restored.snapshot() == state.snapshot()
    part2, _ = run(batches_of(second, 4096), *all_builtins(), state=restored)
    assert part1 + part2 == whole
    again, _ = run(batches_of(stream, 4096), *all_builtins(), state=restored)
    assert again == []  # a replay of the same session never fires twice


def test_journal_replay_after_a_kill(tmp_path: Path, stream: pa.Table) -> None:
    """Signals journalled but never snapshotted are not fired again, and still count."""
    first, second = stream.slice(0, 15_000), stream.slice(15_000)
    files = StateFiles(tmp_path)
    state = ScreenState()
    engine = Screener(all_builtins(), state)
    emitted = []
    for batch in batches_of(first, 4096):
        emitted += rows(engine.process(batch))
        files.journal(state.take_pending())
    files.close()  # killed: no snapshot
    assert emitted and not (tmp_path / StateFiles.SNAPSHOT).exists()
    restored = StateFiles(tmp_path).load(lambda message: None)
    assert restored.fire_seq == len(emitted)
    replay, _ = run(batches_of(first, 4096), *all_builtins(), state=restored)
    later, _ = run(batches_of(second, 4096), *all_builtins(), state=restored)
    keys = {(s["strategy"], s["symbol"], s["timestamp"]) for s in emitted}
    assert replay == []
    assert not keys & {(s["strategy"], s["symbol"], s["timestamp"]) for s in later}
    counted = sum(sum(st.counts.values()) for st in restored.strategies.values())
    assert counted == len(emitted) + len(later)


def test_pass_through_puts_each_signal_after_its_record() -> None:
    records = [
        {**gapper("ABC", at("09:31")), "seq": 1},
        {"type": "news", "headline": "x", "seq": 2},
        {**gapper("XYZ", at("09:32")), "seq": 3},
        {**gapper("ABC", at("09:33")), "seq": 4},
    ]
    batch = records_batch(records)
    out, _ = run([batch], builtin("gap_and_go"), pass_through=True)
    assert [(r["type"], r.get("seq"), r["symbol"]) for r in out] == [
        ("trade", 1, "ABC"),
        ("signal", None, "ABC"),
        ("news", 2, None),
        ("trade", 3, "XYZ"),
        ("signal", None, "XYZ"),
        ("trade", 4, "ABC"),
    ]
    assert out[0]["price"] == 112.0 and out[2]["headline"] == "x"


def test_universe_limits_what_is_screened() -> None:
    records = [gapper(s, at("09:31", seconds=i)) for i, s in enumerate(["AAPL", "TSLA", "GME"])]
    signals, _ = run(records, builtin("gap_and_go"), universe=["aapl", "GME"])
    assert [s["symbol"] for s in signals] == ["AAPL", "GME"]
    passed, _ = run(records, builtin("gap_and_go"), universe=["GME"], pass_through=True)
    assert [(r["type"], r["symbol"]) for r in passed] == [
        ("trade", "AAPL"),
        ("trade", "TSLA"),
        ("trade", "GME"),
        ("signal", "GME"),
    ]


# --- failures: NaN/inf, a strategy that raises, a column that never comes ---------------------


def test_non_finite_numbers_skip_those_rows_with_one_warning() -> None:
    from tradecli.strategies.expressions import parse_expression

    spec = _where("price > 0", stop_loss="price / (volume - 100)")
    records = [
        trade(s, at("09:31", seconds=i), 10.0, volume=100 if i < 3 else 90) for i, s in enumerate("ABCDE")
    ]
    signals, warnings = run(records, spec.build())
    assert [s["symbol"] for s in signals] == ["D", "E"]
    assert len(warnings) == 1 and "3 record(s) gave a non-finite stop_loss" in warnings[0]
    assert parse_expression("price / 0", kind="number").source == "price / 0"


def test_a_failing_strategy_is_reported_once_and_the_others_go_on() -> None:
    def evaluate(cols: Any) -> Evaluation:
        raise ZeroDivisionError("boom")

    broken = Strategy("broken", (Zone("long", "x"),), evaluate, needs=("price",), fields=())
    records = [gapper("ABC", at("09:31")), gapper("XYZ", at("09:32"))]
    batches = [records_batch(records[:1]), records_batch(records[1:])]
    engine = Screener([broken, builtin("gap_and_go")], ScreenState(), warn=(warnings := []).append)
    out = [r for b in batches for r in rows(engine.process(b))]
    assert [s["symbol"] for s in out] == ["ABC", "XYZ"]
    assert warnings == [
        "strategy broken failed on a batch (ZeroDivisionError: boom); it skips that batch and the "
        "other strategies go on (later failures are only counted)"
    ]
    assert engine.stats["strategy errors"] == 2


def test_a_needed_column_that_never_comes_is_reported_once() -> None:
    records = [trade("ABC", at("09:31", seconds=i), 10.0, prev_close=9.0) for i in range(5)]
    signals, warnings = run(records + records, builtin("gap_and_go"), builtin("rsi_extreme"))
    assert signals == []
    assert sorted(warnings) == [
        "strategy gap_and_go needs column 'vwap', which no record has carried so far - is `trade enrich` "
        "upstream, with that period?",
        "strategy rsi_extreme needs column 'rsi_14', which no record has carried so far - is `trade "
        "enrich` upstream, with that period?",
    ]


# --- user strategies ----------------------------------------------------------------------------


def _where(where: str, **keys: str) -> Any:
    from tradecli.strategies.expressions import UserSpec, parse_expression

    exprs = {k: parse_expression(v, kind="number") for k, v in keys.items()}
    return UserSpec(
        name="mine",
        where=parse_expression(where, kind="condition"),
        entry=parse_expression("price", kind="number"),
        stop=exprs.get("stop_loss"),
        target=exprs.get("target"),
        cooldown=0,
        max_per_day=0,
    )


def test_expressions_follow_numpy() -> None:
    from tradecli.strategies.expressions import parse_expression

    rng = np.random.default_rng(1)
    price, vwap = rng.uniform(9, 11, 1000), rng.uniform(9, 11, 1000)
    rsi = rng.uniform(0, 100, 1000)
    batch = pa.record_batch({"price": price, "vwap": vwap, "rsi_14": rsi})
    from tradecli.screener import Columns

    cols = Columns(batch)
    cases = {
        "price > vwap and not rsi_14 > 70": (price > vwap) & ~(rsi > 70),
        "30 < rsi_14 <= 70": (rsi > 30) & (rsi <= 70),
        "price > vwap or rsi_14 < level": (price > vwap) | (rsi < 25),
        "(abs(price - vwap) / vwap < 0.01) & (rsi_14 != 50)": (np.abs(price - vwap) / vwap < 0.01)
        & (rsi != 50),
        "where(price > vwap, price, vwap) >= minimum(price, vwap) ** 1": np.ones(1000, dtype=bool),
    }
    for text, expected in cases.items():
        expr = parse_expression(text, kind="condition", params={"level": 25.0})
        assert np.array_equal(expr.evaluate(cols, {"level": 25.0}), expected), text


BAD_EXPRESSIONS = [
    ("rsi < 30", "unknown column 'rsi'"),
    ("rsi_14 < 30 and prise > vwap", "unknown column 'prise' (did you mean price?)"),
    ("price >", "syntax error"),
    ("price.real > 1", "attribute access (.real) at column 1 is not allowed"),
    ("price[0] > 1", "indexing at column 1 is not allowed"),
    ("__import__('os') > 0", "function '__import__' is not allowed"),
    ("__import__('os').system('true')", "calling attribute access (.system)"),
    ("open('/etc/passwd')", "function 'open' is not allowed"),
    ("eval('1') > 0", "function 'eval' is not allowed"),
    ("(lambda: 1)() > 0", "calling a lambda"),
    ("lambda x: x", "a lambda at column 1 is not allowed"),
    ("symbol == 'AAPL'", "unknown column 'symbol'"),
    ("price == 'AAPL'", "text at column 10 is not allowed"),
    ("[x for x in price] > 1", "a comprehension"),
    ("(y := price) > 1", "assignment (:=)"),
    ("price if vwap else 1", "an if-else expression"),
    ("price // 2 > 1", "the operator //"),
    ("price in vwap", "the comparison in"),
    ("sqrt(x=price) > 1", "a keyword argument to sqrt()"),
    ("sum(price) > 1", "function 'sum' is not allowed"),
    ("_x > 1", "unknown column '_x'"),
    ("price + 1", "a condition must be true or false"),
    ("where(price > 1) > 0", "numexpr cannot evaluate it"),
    ("", "the expression is empty"),
    ("price > " + "1 + " * 1000 + "1", "longer than 2000 characters"),
    ("-" * 900 + "price > 1", "too deeply nested"),
    # enrich's column families only under the names enrich gives them
    ("macd > 0", "unknown column 'macd'"),
    ("bb_upper > price", "unknown column 'bb_upper'"),
    ("bb_uper_20_2 > price", "unknown column 'bb_uper_20_2'"),
    ("macd_12_26 > 0", "unknown column 'macd_12_26'"),
    ("sma_0 > price", "unknown column 'sma_0'"),
]


@pytest.mark.parametrize(
    "text",
    ["macd_12_26_9 > macd_signal_12_26_9", "macd_hist_5_35_5 > 0", "price > bb_upper_20_2p5", "atr_14 > 1"],
)
def test_enrich_columns_under_their_own_names_are_accepted(text: str, tmp_path: Path) -> None:
    result = invoke(["screen", "--where", text, "--state-dir", str(tmp_path)], input=b"")
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize(("text", "message"), BAD_EXPRESSIONS)
def test_bad_where_is_refused_at_start_up_with_exit_2(text: str, message: str, tmp_path: Path) -> None:
    result = invoke(["screen", "--where", text, "--state-dir", str(tmp_path)], input=b"")
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / StateFiles.LOCK).exists()  # refused before anything ran


BAD_FILES = [
    ("[strategy.x]\nwhere = 'price >'\n", "[strategy.x]: where: syntax error"),
    ("[strategy.x]\nwhere = 'price > 1'\ntarget = 'price > 2'\n", "target: expected a number"),
    ("[strategy.x]\nwhere = 'price > 1'\nstop_loss = 'vwapp'\n", "stop_loss: unknown column 'vwapp'"),
    ("[strategy.x]\nside = 'long'\n", "a strategy needs `where`"),
    ("[strategy.x]\nwhere = 'price > 1'\nside = 'up'\n", "side must be 'long' or 'short'"),
    ("[strategy.x]\nwhere = 'price > 1'\nwhen = 'now'\n", "unknown key 'when'"),
    ("[strategy.x]\nwhere = 'price > 1'\nmessage = '{price.__class__}'\n", "must be a plain name"),
    ("[strategy.x]\nwhere = 'price > 1'\nmessage = '{0}'\n", "must be a plain name"),
    ("[strategy.x]\nwhere = 'price > 1'\nmessage = '{pirce}'\n", "unknown column 'pirce'"),
    ("[strategy.x]\nwhere = 'price > 1'\nmessage = '{price:.2q}'\n", "is not a valid format"),
    ("[strategy.x]\nwhere = 'price > 1'\nmessage = '{price:{w}}'\n", "nested fields"),
    ("[strategy.x]\nwhere = 'price > 1'\ncooldown = 'soon'\n", "cooldown 'soon' is not a duration"),
    ("[strategy.x]\nwhere = 'price > 1'\nmax_per_day = -1\n", "max_per_day must be a whole number"),
    ("[strategy.x]\nwhere = 'price > 1'\nparams = { vwap = 1 }\n", "'vwap' is a column or function name"),
    (
        "[strategy.x]\nwhere = 'price > 1'\nparams = { level = 'high' }\n",
        "params: level must be a finite number",
    ),
    (
        "[strategy.x]\nwhere = 'price > 1'\nparams = { level = nan }\n",
        "params: level must be a finite number",
    ),
    ("[builtin.gap_and_go]\nmin_gap = true\n", "gap_and_go.min_gap must be a number, not True"),
    ("[builtin.gap_and_go]\nmin_gap = 'abc'\n", "gap_and_go.min_gap must be a number, not 'abc'"),
    ("[builtin.gap_and_go]\nmin_gap = inf\n", "gap_and_go.min_gap must be a finite number"),
    ("[strategy.gap_and_go]\nwhere = 'price > 1'\n", "'gap_and_go' is a built-in name"),
    ("[strategy.X]\nwhere = 'price > 1'\n", "a strategy name is lower-case"),
    ("[builtin.gap_and_goo]\nmin_gap = 0.1\n", "no built-in strategy is called 'gap_and_goo'"),
    ("[builtin.gap_and_go]\nmin_gapp = 0.1\n", "gap_and_go has no parameter 'min_gapp'"),
    ("[builtin.rsi_extreme]\nperiod = 1.5\n", "rsi_extreme.period must be a whole number"),
    ("[strategies.x]\nwhere = 'price > 1'\n", "unknown table or key 'strategies'"),
    ("columns = ['Bad Name']\n", "columns must be a list of lower-case names"),
    ("[strategy.x\n", "rules.toml"),
]


@pytest.mark.parametrize(("content", "message"), BAD_FILES)
def test_bad_strategies_file_is_refused_with_exit_2(content: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(content)
    result = invoke(["screen", "--strategies", str(path), "--state-dir", str(tmp_path)], input=b"")
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split()), result.stderr


def test_missing_strategies_file_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(["screen", "--strategies", str(tmp_path / "none.toml")], input=b"")
    assert result.exit_code == 2 and "no such file" in result.stderr


RULES = """
columns = ["float_shares"]

[strategy.low_float_gap]
where = "gap_pct >= min_gap and float_shares < 20e6"
side = "long"
signal_type = "low_float_gap"
entry_price = "price"
stop_loss = "vwap * 0.98"
target = "price * (1 + 2 * min_gap)"
confidence = 0.7
message = "{symbol} gapped {gap_pct:.1%} on a {float_shares:,.0f}-share float (R/R {rr_ratio:.1f}, {side})"
cooldown = "1m"
max_per_day = 3
params = { min_gap = 0.1 }

[strategy.fade]
where = "rsi_14 > 80"
side = "short"

[builtin.gap_and_go]
min_gap = 0.3
cooldown = "1h"
"""


def user_records() -> bytes:
    records = [
        trade("AAA", at("09:31"), 12.0, gap_pct=0.2, vwap=11.5, float_shares=5e6, rsi_14=50.0),
        trade("BBB", at("09:31", 1), 12.0, gap_pct=0.05, vwap=11.5, float_shares=5e6, rsi_14=85.0),
        trade("CCC", at("09:31", 2), 12.0, gap_pct=0.2, vwap=11.5, float_shares=50e6, rsi_14=50.0),
        trade("DDD", at("09:31", 3), 12.0, gap_pct=0.12, vwap=11.5, float_shares=1e6),
    ]
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def test_user_strategies_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text(RULES)
    args = ["screen", "--strategies", str(tmp_path / "rules.toml"), "--state-dir", str(tmp_path / "s")]
    result = invoke([*args, "-s", "low_float_gap", "-s", "fade"], input=user_records())
    assert result.exit_code == 0, result.stderr
    out = ndjson_records(result.stdout_bytes)
    assert [(s["strategy"], s["symbol"], s["side"]) for s in out] == [
        ("low_float_gap", "AAA", "long"),
        ("fade", "BBB", "short"),
        ("low_float_gap", "DDD", "long"),
    ]
    first = out[0]
    assert first["signal_type"] == "low_float_gap" and first["confidence"] == 0.7
    assert first["stop_loss"] == pytest.approx(11.27) and first["target"] == pytest.approx(14.4)
    assert first["message"] == "AAA gapped 20.0% on a 5,000,000-share float (R/R 3.3, long)"
    assert first["gap_pct"] == 0.2 and first["float_shares"] == 5e6  # the columns the rule read
    assert out[1]["message"] == "fade signal on BBB" and out[1]["confidence"] == 0.5
    assert "stop_loss" not in out[1] and "rr_ratio" not in out[1]  # no stop: no R/R

    args[-1] = str(tmp_path / "t")  # a fresh state: the same records again
    stricter = invoke(
        [*args, "-s", "low_float_gap", "--param", "low_float_gap.min_gap=0.15"], input=user_records()
    )
    assert [s["symbol"] for s in ndjson_records(stricter.stdout_bytes)] == ["AAA"]
    listing = invoke([*args, "--list"])
    assert "low_float_gap (long): cooldown 1m, at most 3 a day" in listing.stdout
    assert "where gap_pct >= min_gap and float_shares < 20e6" in listing.stdout
    assert "gap_and_go (long): cooldown 1h, at most 50 a day" in listing.stdout
    assert "min_gap              0.3 " in listing.stdout


def test_where_alone_runs_only_the_expression(tmp_path: Path) -> None:
    data = to_ndjson([records_batch([gapper("ABC", at("09:31"), rsi_14=20.0)])])
    state = ["--state-dir", str(tmp_path / "a")]
    result = invoke(
        ["screen", "--where", "rsi_14 < 25 and price > vwap", "--side", "short", *state], input=data
    )
    out = ndjson_records(result.stdout_bytes)
    assert [(s["strategy"], s["side"]) for s in out] == [("where", "short")]
    assert out[0]["message"] == "ABC matched rsi_14 < 25 and price > vwap"
    assert out[0]["entry_price"] == 112.0 and out[0]["rsi_14"] == 20.0
    both = invoke(
        ["screen", "--where", "rsi_14 < 25", "-s", "gap_and_go", "--state-dir", str(tmp_path / "b")],
        input=data,
    )
    assert [s["strategy"] for s in ndjson_records(both.stdout_bytes)] == ["gap_and_go", "where"]


# --- command line ---------------------------------------------------------------------------------


def test_list_shows_every_built_in_with_its_parameters() -> None:
    result = invoke(["screen", "--list"])
    assert result.exit_code == 0
    for name in ("gap_and_go", "hod_breakout", "vwap_reclaim", "rsi_extreme", "volume_spike"):
        assert f"\n{name} (" in "\n" + result.stdout
    assert "min_gap              0.1        smallest gap" in result.stdout
    assert "rsi_extreme (long, short): cooldown 10m, at most 50 a day" in result.stdout
    assert "Needs: price, rsi_14." in result.stdout
    changed = invoke(
        ["screen", "--list", "-s", "rsi_extreme", "-p", "rsi_extreme.period=9", "--max-per-day", "0"]
    )
    assert "rsi_extreme (long, short): cooldown 10m, no daily limit" in changed.stdout
    assert "Needs: price, rsi_9." in changed.stdout and "gap_and_go" not in changed.stdout


def test_list_shows_a_where_that_reads_a_declared_column(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('columns = ["score"]\n')
    result = invoke(["screen", "--strategies", str(rules), "--where", "score > 1", "--list"])
    assert result.exit_code == 0, result.stderr
    assert "where score > 1" in result.stdout


def test_universe_may_be_given_more_than_once(tmp_path: Path) -> None:
    records = [gapper(s, at("09:31", seconds=i)) for i, s in enumerate(["AAPL", "TSLA", "GME"])]
    result = invoke(
        ["screen", "-s", "gap_and_go", "-u", "aapl", "-u", "GME,aapl", "--state-dir", str(tmp_path)],
        input=to_ndjson([records_batch(records)]),
    )
    assert result.exit_code == 0, result.stderr
    assert [orjson.loads(line)["symbol"] for line in result.stdout.splitlines()] == ["AAPL", "GME"]


def test_help_documents_each_rule() -> None:
    text = " ".join(invoke(["screen", "--help"]).stdout.split())
    for name in ("gap_and_go", "hod_breakout", "vwap_reclaim", "rsi_extreme", "volume_spike"):
        module = builtin_module(name)
        assert " ".join(module.RULE.split()) in text, name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-s", "gap_and_goo"], "no strategy is called 'gap_and_goo'"),
        (["-p", "gap_and_go.min_gap"], "is not NAME.KEY=VALUE"),
        (["-p", "gap_and_go.min_gapp=1"], "gap_and_go has no parameter 'min_gapp'"),
        (["-p", "gap_and_go.min_gap=abc"], "gap_and_go.min_gap: 'abc' is not a number"),
        (["-p", "gap_and_go.min_gap=nan"], "gap_and_go.min_gap: 'nan' is not a finite number"),
        (["-p", "rsi_extreme.period=0"], "rsi_extreme.period must be a whole number >= 1"),
        (["-p", "gap_and_go.cooldown=soon"], "gap_and_go.cooldown: 'soon' is not a duration"),
        (["-p", "gap_and_go.max_per_day=-2"], "gap_and_go.max_per_day must be >= 0"),
        (
            ["-s", "gap_and_go", "-p", "rsi_extreme.period=9"],
            "'rsi_extreme' is not a strategy that runs here",
        ),
        (["--cooldown", "later"], "is not a duration"),
        (["--max-per-day", "-1"], "--max-per-day"),
        (["--universe", " , "], "names no symbols"),
        (["--universe", "@/nonexistent/list.txt"], "cannot read /nonexistent/list.txt"),
        (["--side", "up"], "--side"),
    ],
)
def test_bad_options_exit_2(args: list[str], message: str) -> None:
    result = invoke(["screen", *args], input=b"")
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split()), result.stderr


def test_param_and_limit_overrides_change_the_signals(tmp_path: Path) -> None:
    records = [gapper(s, at("09:31", seconds=i), price=112.0 + i) for i, s in enumerate("ABCDEF")]
    data = to_ndjson([records_batch(records)])

    def symbols(*args: str) -> list[str]:
        result = invoke(
            [
                "screen",
                "-s",
                "gap_and_go",
                "--state-dir",
                str(tmp_path / str(len(os.listdir(tmp_path)))),
                *args,
            ],
            input=data,
        )
        assert result.exit_code == 0, result.stderr
        return [s["symbol"] for s in ndjson_records(result.stdout_bytes)]

    assert symbols() == list("ABCDEF")
    assert symbols("-p", "gap_and_go.min_gap=0.15") == list("DEF")
    assert symbols("--max-per-day", "2") == list("AB")
    assert symbols("--max-per-day", "0", "-p", "gap_and_go.max_per_day=1") == list("A")
    assert symbols("-p", "gap_and_go.max_per_day=0", "--max-per-day", "1") == list("ABCDEF")
    assert symbols("--max-per-day", "2", "-p", "gap_and_go.max_per_day=4") == list("ABCD")
    assert symbols("--universe", "b,F") == list("BF")
    (tmp_path / "list.txt").write_text("# watchlist\nC\n e, A\n")
    assert symbols("--universe", f"@{tmp_path / 'list.txt'}") == list("ACE")


def test_restart_same_day_never_refires_nor_resets_counts(tmp_path: Path, stream: pa.Table) -> None:
    state = ["--state-dir", str(tmp_path / "state"), "--max-per-day", "40"]
    whole = invoke(
        ["screen", "--state-dir", str(tmp_path / "once"), "--max-per-day", "40"],
        input=to_ndjson(batches_of(stream, 4096)),
    )
    expected = ndjson_records(whole.stdout_bytes)
    half = stream.num_rows // 2
    first = invoke(["screen", *state], input=to_ndjson(batches_of(stream.slice(0, half), 4096)))
    second = invoke(["screen", *state], input=to_ndjson(batches_of(stream.slice(half), 4096)))
    assert first.exit_code == second.exit_code == 0
    assert ndjson_records(first.stdout_bytes) + ndjson_records(second.stdout_bytes) == expected
    assert "over daily limit" in whole.stderr  # the limit binds, so the counters are exercised
    replay = invoke(["screen", *state], input=to_ndjson(batches_of(stream, 4096)))
    assert ndjson_records(replay.stdout_bytes) == []


def test_a_second_screen_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    with open(tmp_path / "state" / StateFiles.LOCK, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = invoke(["screen", "--state-dir", str(tmp_path / "state")], input=b"")
    assert result.exit_code == 1
    assert "is in use by another trade screen; give each screen its own --state-dir" in result.stderr


def test_an_unreadable_state_file_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / StateFiles.SNAPSHOT).write_text("{not json")
    data = to_ndjson([records_batch([gapper("ABC", at("09:31"))])])
    result = invoke(["screen", "--state-dir", str(tmp_path)], input=data)
    assert result.exit_code == 0
    assert "is unreadable" in result.stderr and len(ndjson_records(result.stdout_bytes)) == 1
    assert [p.name for p in tmp_path.glob("screen-state.json.corrupt-*")]
    assert orjson.loads((tmp_path / StateFiles.SNAPSHOT).read_bytes())["fire_seq"] == 1


def test_state_files_are_private_and_small(tmp_path: Path, stream: pa.Table) -> None:
    result = invoke(["screen", "--state-dir", str(tmp_path)], input=to_ndjson(batches_of(stream, 4096)))
    assert result.exit_code == 0
    snapshot = tmp_path / StateFiles.SNAPSHOT
    assert oct(snapshot.stat().st_mode & 0o777) == "0o600"
    assert snapshot.stat().st_size < 50_000
    assert (tmp_path / StateFiles.JOURNAL).stat().st_size == 0  # emptied by the closing snapshot


def test_summary_counts_signals(tmp_path: Path) -> None:
    records = [gapper("ABC", at("09:31")), gapper("ABC", at("09:32"), price=109), gapper("ABC", at("09:33"))]
    result = invoke(
        ["screen", "-s", "gap_and_go", "--state-dir", str(tmp_path)],
        input=to_ndjson([records_batch(records)]),
    )
    assert result.stderr.startswith("trade screen: 3 in, 1 out, 0 rejected, 1 signals, 1 in cooldown in ")


def test_numbers_of_a_custom_strategy_are_used_as_given() -> None:
    def evaluate(cols: Any) -> Evaluation:
        price = cols.values("price")

        def numbers(rows: np.ndarray) -> Numbers:
            return Numbers(price[rows], price[rows] - 1, price[rows] + 3, np.full(len(rows), 1.7))

        return Evaluation((price > 0).astype(np.int8), numbers, lambda r, s: [f"hi {x}" for x in s])

    custom = Strategy("custom", (Zone("short", "test"),), evaluate, needs=("price",), fields=("price",))
    custom.cooldown = 0
    signals, _ = run([trade("ABC", at("09:31"), 10.0)], custom)
    assert signals[0]["confidence"] == 1.0  # clipped to 0..1
    assert (
        signals[0]["rr_ratio"] == 3.0 and signals[0]["message"] == "hi ABC" and signals[0]["side"] == "short"
    )


def test_a_strategy_failing_at_run_time_is_reported_once_from_the_command_line(tmp_path: Path) -> None:
    """A declared column that arrives as text makes its strategy fail; Gap & Go goes on."""
    (tmp_path / "rules.toml").write_text('columns = ["note"]\n[strategy.noted]\nwhere = "note > 1"\n')
    records = [gapper(s, at("09:31", seconds=i), note="abc") for i, s in enumerate("AB")]
    data = b"".join(orjson.dumps(r) + b"\n" for r in records)
    args = ["screen", "--strategies", str(tmp_path / "rules.toml"), "--state-dir", str(tmp_path / "s")]
    result = invoke([*args, "-s", "noted", "-s", "gap_and_go"], input=data)
    assert result.exit_code == 0
    assert [s["symbol"] for s in ndjson_records(result.stdout_bytes)] == ["A", "B"]
    assert result.stderr.count("strategy noted failed on a batch (TypeError: column 'note' holds string") == 1


def test_columns_read_arrow_buffers_with_offsets_and_nulls() -> None:
    from tradecli.screener import Columns

    batch = pa.record_batch(
        {
            "f": pa.array([1.5, None, 3.5, 4.5, None]),
            "i": pa.array([1, 2, None, 4, 5], type=pa.int64()),
            "h": pa.array([1, 2, 3, 4, 5], type=pa.int32()),
            "b": pa.array([True, None, False, True, True]),
            "s": pa.array(["a", "b", "c", "d", "e"]),
            "close": pa.array([None, 7.0, None, None, 9.0]),
            "price": pa.array([1.0, None, None, 2.0, None]),
        }
    ).slice(1, 4)
    cols = Columns(batch)
    assert np.array_equal(cols.values("f"), [np.nan, 3.5, 4.5, np.nan], equal_nan=True)
    assert cols.valid("f").tolist() == [False, True, True, False]
    assert np.array_equal(cols.values("i"), [2.0, np.nan, 4.0, 5.0], equal_nan=True)
    assert cols.values("h").tolist() == [2.0, 3.0, 4.0, 5.0] and cols.valid("h").all()
    assert np.array_equal(cols.values("b"), [np.nan, 0.0, 1.0, 1.0], equal_nan=True)
    assert np.array_equal(cols.values("price"), [7.0, np.nan, 2.0, 9.0], equal_nan=True)
    assert cols.valid("price").tolist() == [True, False, True, True]
    assert cols.pylist("i", np.array([0, 1])) == [2, None]
    assert not cols.valid("nope").any() and cols.missing_any(("f", "i")).tolist() == [True, True, False, True]
    with pytest.raises(TypeError, match="column 's' holds string"):
        cols.values("s")


def test_a_null_reads_as_nan_whatever_its_slot_holds() -> None:
    """enrich leaves NaN under its nulls (then the buffer is read as it is); other writers leave
    anything there, and that must never show."""
    from tradecli.screener import Columns

    validity = pa.py_buffer(np.packbits([1, 0, 1, 0, 1, 1], bitorder="little"))

    def column(*values: float) -> pa.Array:
        data = pa.py_buffer(np.array(values))
        return pa.Array.from_buffers(pa.float64(), len(values), [validity, data], null_count=2)

    batch = pa.record_batch(
        {
            "nan": column(1.0, np.nan, 3.0, np.nan, 5.0, 6.0),
            "junk": column(1.0, 7.0, 3.0, -2.0, 5.0, 6.0),
            "half": column(1.0, np.nan, 3.0, 8.0, np.nan, 6.0),  # a valid NaN too
        }
    ).slice(1)
    cols = Columns(batch)
    assert np.array_equal(cols.values("nan"), [np.nan, 3.0, np.nan, 5.0, 6.0], equal_nan=True)
    assert np.array_equal(cols.values("junk"), [np.nan, 3.0, np.nan, 5.0, 6.0], equal_nan=True)
    assert np.array_equal(cols.values("half"), [np.nan, 3.0, np.nan, np.nan, 6.0], equal_nan=True)
    for name in ("nan", "junk", "half"):
        assert cols.valid(name).tolist() == [False, True, False, True, True]


def test_a_new_where_expression_starts_with_a_clean_state(tmp_path: Path) -> None:
    data = to_ndjson([records_batch([gapper("ABC", at("09:31"), rsi_14=20.0)])])
    state = ["--state-dir", str(tmp_path)]
    first = invoke(["screen", "--where", "rsi_14 < 25", *state], input=data)
    same = invoke(["screen", "--where", "rsi_14 < 25", *state], input=data)
    other = invoke(["screen", "--where", "rsi_14 < 30", *state], input=data)
    assert [len(ndjson_records(r.stdout_bytes)) for r in (first, same, other)] == [1, 0, 1]
    keys = orjson.loads((tmp_path / StateFiles.SNAPSHOT).read_bytes())["strategies"]
    assert sorted(k.split("#")[0] for k in keys) == ["where", "where"]
