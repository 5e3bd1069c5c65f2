"""enrich beside its peers on one generated stream (500 symbols, --events trades).

* ``trade enrich`` through real pipes (``cat file | trade enrich | cat``), Arrow and NDJSON, and
  the engine alone in this process (no pipes, no parsing);
* TA-Lib's streaming handles (``talib.stream``, one ``update`` per indicator per tick);
* TA-Lib's batch functions over each symbol's whole array (in memory, no pipes);
* talipp, one ``add`` per indicator per tick;
* the design document's loop (a pandas DataFrame of the last 200 ticks rebuilt on every tick),
  on a subset;
* peak RSS of enrich with 10,000 symbols, and its start-up time.

Every peer computes the default indicators (SMA 20, EMA 9, RSI 14, average volume 20, and VWAP
where it has one). The per-tick peers run on a prefix of the stream (their rate is per tick, so
a prefix measures it well) to keep the run short.
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections import deque
from typing import Any

import numpy as np
import pyarrow as pa

from benchmarks.harness import Bench, trade
from benchmarks.process import one_process

UNIVERSE = "500"
STREAMING_TICKS = 200_000
TALIPP_TICKS = 100_000
PANDAS_TICKS = 2_000


def _columns(path: str) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    with open(path, "rb") as handle:
        table = pa.ipc.open_stream(handle).read_all()
    symbol = table.column("symbol").combine_chunks()
    codes = np.asarray(symbol.indices.to_numpy(zero_copy_only=False))
    names = symbol.dictionary.to_pylist()
    price = table.column("price").to_numpy()
    volume = table.column("volume").to_numpy().astype(np.float64)
    return table, codes, price, volume, names


def run(bench: Bench) -> None:
    n = bench.events
    sim = ["ingest", "--seed", "1", "--date", "2026-11-20", "--universe", UNIVERSE, "--types", "trades"]
    sim += ["--count", str(n), "--quiet"]
    arrow = bench.file("enrich-trades.arrows", trade(*sim, "--format", "arrow"))
    ndjson = bench.file("enrich-trades.ndjson", trade(*sim))

    for label, path in (("Arrow", arrow), ("NDJSON", ndjson)):
        stages = [["cat", str(path)], trade("enrich", "--quiet"), ["cat"]]
        bench.pipeline(
            "enrich", f"cat | trade enrich | cat  ({label})", stages, n, names=["cat", "enrich", "cat"]
        )
    one_process(
        bench,
        "enrich",
        "trade enrich < Arrow file, its output read through a pipe",
        trade("enrich", "--quiet"),
        n,
        arrow,
        stream=True,
    )
    bench.pipeline(
        "enrich",
        "ingest --source sim | enrich  (Arrow)",
        [trade(*sim, "--format", "arrow"), trade("enrich")],
        n,
        names=["ingest", "enrich"],
    )

    table, codes, price, volume, names = _columns(str(arrow))
    _engine(bench, table)
    _talib_batch(bench, codes, price, volume)
    _talib_stream(bench, codes, price, volume)
    _talipp(bench, codes, price, volume)
    _pandas(bench, codes, price, volume, names)
    _many_symbols(bench)
    _startup(bench)


def _engine(bench: Bench, table: pa.Table) -> None:
    from tradecli.indicators import IndicatorState
    from tradecli.tuning import keep_freed_memory

    keep_freed_memory()  # as the enrich command does; the in-process peers below run with it too

    batches = table.to_batches(max_chunksize=65_536)
    state = IndicatorState()
    bench.in_process(
        "enrich",
        "engine in process (IndicatorState.add, 64k-row batches)",
        table.num_rows,
        lambda: [state.add(b) for b in batches],
        note="no pipes, no parsing: the indicator engine alone",
    )


def _talib_batch(bench: Bench, codes: np.ndarray, price: np.ndarray, volume: np.ndarray) -> None:
    try:
        import talib
    except ImportError:
        return

    def work() -> None:
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        out = {k: np.empty(price.size) for k in ("sma", "ema", "rsi", "avg", "vwap")}
        for rows in np.split(order, bounds):
            x, v = price[rows], volume[rows]
            out["sma"][rows] = talib.SMA(x, 20)
            out["ema"][rows] = talib.EMA(x, 9)
            out["rsi"][rows] = talib.RSI(x, 14)
            out["avg"][rows] = talib.SMA(v, 20)
            with np.errstate(invalid="ignore", divide="ignore"):
                out["vwap"][rows] = np.cumsum(x * v) / np.cumsum(v)

    bench.in_process(
        "peers",
        "TA-Lib batch functions per symbol (in memory)",
        price.size,
        work,
        note="SMA, EMA, RSI, SMA of volume, VWAP by cumsum; grouping included",
    )


def _talib_stream(bench: Bench, codes: np.ndarray, price: np.ndarray, volume: np.ndarray) -> None:
    try:
        from talib import stream
    except ImportError:
        return
    if not hasattr(stream.SMA(np.ones(20), 20), "update"):
        return  # TA-Lib before 0.8 has no stateful streams, only functions over a window
    ticks = min(STREAMING_TICKS, price.size)
    history = 20  # values a symbol needs before all four handles can open

    def work() -> None:
        handles: dict[int, tuple[Any, ...]] = {}
        warming: dict[int, list[tuple[float, float]]] = {}
        session: dict[int, list[float]] = {}
        for i in range(ticks):
            s = int(codes[i])
            p, v = float(price[i]), float(volume[i])
            totals = session.setdefault(s, [0.0, 0.0])
            totals[0] += p * v
            totals[1] += v
            opened = handles.get(s)
            if opened is not None:
                sma, ema, rsi, avg = opened
                sma.update(p)
                ema.update(p)
                rsi.update(p)
                avg.update(v)
                continue
            seen = warming.setdefault(s, [])
            seen.append((p, v))
            if len(seen) == history:
                prices = np.array([x for x, _ in seen])
                volumes = np.array([y for _, y in seen])
                handles[s] = (
                    stream.SMA(prices, 20),
                    stream.EMA(prices, 9),
                    stream.RSI(prices, 14),
                    stream.SMA(volumes, 20),
                )
                del warming[s]

    bench.in_process(
        "peers",
        f"TA-Lib streaming handles (talib.stream) per tick, first {ticks:,}",
        ticks,
        work,
        note="SMA, EMA, RSI, SMA of volume: one update() each per tick, plus VWAP sums",
    )


def _talipp(bench: Bench, codes: np.ndarray, price: np.ndarray, volume: np.ndarray) -> None:
    try:
        from talipp.indicators import EMA, RSI, SMA
    except ImportError:
        return
    ticks = min(TALIPP_TICKS, price.size)

    def work() -> None:
        per: dict[int, tuple[Any, ...]] = {}
        for i in range(ticks):
            s = int(codes[i])
            if s not in per:
                per[s] = (SMA(20), EMA(9), RSI(14), SMA(20), [0.0, 0.0])
            sma, ema, rsi, avg, vwap = per[s]
            p = float(price[i])
            sma.add(p)
            ema.add(p)
            rsi.add(p)
            avg.add(float(volume[i]))
            vwap[0] += p * volume[i]
            vwap[1] += volume[i]
            for indicator in (sma, ema, rsi, avg):
                if len(indicator) > 300:  # keep memory bounded, as a long-running user would
                    indicator.purge_oldest(100)

    bench.in_process(
        "peers",
        f"talipp per tick, first {ticks:,}",
        ticks,
        work,
        note="SMA, EMA, RSI, SMA of volume, VWAP sums",
    )


def _pandas(bench: Bench, codes: np.ndarray, price: np.ndarray, volume: np.ndarray, names: list[str]) -> None:
    try:
        import pandas as pd
    except ImportError:
        return
    ticks = min(PANDAS_TICKS, price.size)

    def calculate_rsi(prices: Any, period: int) -> Any:
        # the design document calls calculate_rsi without defining it; this is the common version
        delta = prices.diff()
        gain = delta.clip(lower=0).rolling(period).mean()
        loss = (-delta.clip(upper=0)).rolling(period).mean()
        return 100 - 100 / (1 + gain / loss)

    class RealTimeDataPipeline:
        """The design document's enrich_with_indicators, transcribed."""

        def __init__(self) -> None:
            self.rolling_data: dict[str, deque[dict[str, Any]]] = {}

        def enrich_with_indicators(self, market_data: dict[str, Any]) -> dict[str, Any]:
            symbol = market_data["symbol"]
            if symbol not in self.rolling_data:
                self.rolling_data[symbol] = deque(maxlen=200)  # 200 periods
            self.rolling_data[symbol].append(market_data)
            df = pd.DataFrame(list(self.rolling_data[symbol]))
            if len(df) >= 20:
                df["vwap"] = (df["price"] * df["volume"]).cumsum() / df["volume"].cumsum()
                df["sma_20"] = df["price"].rolling(20).mean()
                df["ema_9"] = df["price"].ewm(span=9).mean()
                df["rsi"] = calculate_rsi(df["price"], 14)
                df["avg_volume"] = df["volume"].rolling(20).mean()
                df["volume_ratio"] = df["volume"] / df["avg_volume"]
                latest = df.iloc[-1]
                market_data.update(
                    {
                        "vwap": latest["vwap"],
                        "sma_20": latest["sma_20"],
                        "ema_9": latest["ema_9"],
                        "rsi": latest["rsi"],
                        "volume_ratio": latest["volume_ratio"],
                    }
                )
            return market_data

    # a few symbols, so most ticks reach the 20-tick threshold, as on a real watch list
    focus = np.flatnonzero(codes < 5)[:ticks]
    records = [
        {"symbol": names[int(codes[i])], "price": float(price[i]), "volume": float(volume[i])} for i in focus
    ]

    def work() -> None:
        pipeline = RealTimeDataPipeline()
        for record in records:
            pipeline.enrich_with_indicators(record)

    bench.in_process(
        "peers",
        f"design document's pandas loop per tick, {len(records):,} ticks",
        len(records),
        work,
        note="a DataFrame of the last 200 ticks rebuilt on every tick",
    )


def _many_symbols(bench: Bench) -> None:
    n = bench.events
    sim = ["ingest", "--seed", "2", "--date", "2026-11-20", "--universe", "10000", "--types", "trades"]
    sim += ["--count", str(n), "--quiet", "--format", "arrow"]
    path = bench.file("enrich-10k-symbols.arrows", trade(*sim))
    for label, extra in (
        ("defaults", []),
        ("+ MACD, Bollinger, SMA 200", ["--macd", "12,26,9", "--bbands", "20,2"]),
    ):
        spec = ["--sma", "20,200"] if extra else []
        bench.pipeline(
            "enrich",
            f"10,000 symbols, {label}: cat | enrich | cat (Arrow)",
            [["cat", str(path)], trade("enrich", "--quiet", *extra, *spec), ["cat"]],
            n,
            names=["cat", "enrich", "cat"],
        )


def _startup(bench: Bench) -> None:
    runs = []
    for _ in range(7):
        started = time.perf_counter()
        subprocess.run(trade("enrich", "--quiet"), stdin=subprocess.DEVNULL, env=bench.env(), check=True)
        runs.append(time.perf_counter() - started)
    median = statistics.median(runs)
    bench.record(
        "enrich",
        "start-up: trade enrich < /dev/null (median of 7)",
        1,
        median,
        note=f"{median * 1000:.0f} ms from exec to exit (min {min(runs) * 1000:.0f} ms)",
    )
