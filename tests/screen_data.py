"""Enriched records for the screen tests, computed the plain way (one symbol at a time).

``enrich_table`` adds the columns ``trade enrich`` writes - vwap (per New York day), sma_N, ema_N,
rsi_N (Wilder), avg_volume_N, volume_ratio, gap_pct, day_high/day_low/day_volume on trades and
bars; mid and spread on quotes - null before warm-up. It is a fixture generator, not a second
implementation to be trusted: loops are per symbol and the numbers follow the textbook
definitions closely enough for screening tests.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from datetime import date

import numpy as np
import pyarrow as pa

from tradecli import ndjson
from tradecli.records import FIELD_TYPES, from_numpy
from tradecli.screener import ny_days
from tradecli.sources.sim import SimConfig, simulate, universe


def _ema(values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(len(values), np.nan)
    if len(values) < n:
        return out
    alpha = 2.0 / (n + 1)
    level = float(values[:n].mean())
    out[n - 1] = level
    for i in range(n, len(values)):
        level = alpha * float(values[i]) + (1 - alpha) * level
        out[i] = level
    return out


def _rsi(values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(len(values), np.nan)
    if len(values) <= n:
        return out
    change = np.diff(values)
    gain = np.where(change > 0, change, 0.0)
    loss = np.where(change < 0, -change, 0.0)
    avg_gain = float(gain[:n].mean())
    avg_loss = float(loss[:n].mean())
    for i in range(n, len(values)):
        if i > n:
            avg_gain = (avg_gain * (n - 1) + float(gain[i - 1])) / n
            avg_loss = (avg_loss * (n - 1) + float(loss[i - 1])) / n
        total = avg_gain + avg_loss
        out[i] = 0.0 if total == 0 else 100.0 * avg_gain / total
    return out


def _rolling_mean(values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(len(values), np.nan)
    if len(values) >= n:
        sums = np.cumsum(np.r_[0.0, values.astype(np.float64)])
        out[n - 1 :] = (sums[n:] - sums[:-n]) / n
    return out


def enrich_table(
    table: pa.Table, *, sma: int = 20, ema: int = 9, rsi: int = 14, volume_avg: int = 20
) -> pa.Table:
    """The table with enrich's columns added (trades and bars update them; quotes get mid/spread)."""
    table = table.combine_chunks()
    n = table.num_rows
    kinds = np.asarray(table.column("type").cast(pa.string()).to_pylist(), dtype=object)
    symbols = np.asarray(table.column("symbol").cast(pa.string()).to_pylist(), dtype=object)
    ts = table.column("timestamp").cast(pa.int64()).to_numpy()
    days = ny_days(ts)

    def col(name: str) -> np.ndarray:
        if name not in table.column_names:
            return np.full(n, np.nan)
        return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)

    price = col("price")
    close = col("close")
    price = np.where(np.isnan(price), close, price)
    volume = col("volume")
    out = {
        name: np.full(n, np.nan)
        for name in (
            "vwap",
            f"sma_{sma}",
            f"ema_{ema}",
            f"rsi_{rsi}",
            f"avg_volume_{volume_avg}",
            "volume_ratio",
            "gap_pct",
            "day_high",
            "day_low",
            "day_volume",
            "mid",
            "spread",
        )
    }
    priced = np.isin(kinds, ["trade", "bar"]) & ~np.isnan(price)
    for symbol in np.unique(symbols[priced]):
        rows = np.flatnonzero(priced & (symbols == symbol))
        p = price[rows]
        v = np.nan_to_num(volume[rows])
        out[f"sma_{sma}"][rows] = _rolling_mean(p, sma)
        out[f"ema_{ema}"][rows] = _ema(p, ema)
        out[f"rsi_{rsi}"][rows] = _rsi(p, rsi)
        avg = _rolling_mean(v, volume_avg)
        out[f"avg_volume_{volume_avg}"][rows] = avg
        with np.errstate(all="ignore"):
            out["volume_ratio"][rows] = np.where(avg > 0, v / avg, np.nan)
        d = days[rows]
        for day in np.unique(d):
            part = rows[d == day]
            pp, vv = price[part], np.nan_to_num(volume[part])
            cum_v = np.cumsum(vv)
            with np.errstate(all="ignore"):
                out["vwap"][part] = np.where(cum_v > 0, np.cumsum(pp * vv) / cum_v, pp)
            out["day_high"][part] = np.maximum.accumulate(pp)
            out["day_low"][part] = np.minimum.accumulate(pp)
            out["day_volume"][part] = cum_v
    prev_close = col("prev_close")
    with np.errstate(all="ignore"):
        out["gap_pct"] = np.where(priced, price / prev_close - 1, np.nan)
    quotes = kinds == "quote"
    bid, ask = col("bid"), col("ask")
    out["mid"] = np.where(quotes, (bid + ask) / 2, np.nan)
    out["spread"] = np.where(quotes, ask - bid, np.nan)
    for name, values in out.items():
        missing = np.isnan(values)
        if name == "day_volume":
            array = from_numpy(np.nan_to_num(values).astype(np.int64), mask=missing)
        else:
            array = from_numpy(values, mask=missing)
        table = table.append_column(name, array)
    return table


def sim_table(count: int, *, symbols: int = 44, seed: int = 7, day: str = "2026-11-20") -> pa.Table:
    """``count`` records of the simulated session (trades and quotes) as one table."""
    config = SimConfig(symbols=universe(None, symbols), seed=seed, day=date.fromisoformat(day))
    parts, rows = [], 0
    for batch in simulate(config):
        parts.append(batch)
        rows += batch.num_rows
        if rows >= count:
            break
    return pa.Table.from_batches(parts).slice(0, count)


def enriched_sim(count: int, **kwargs: object) -> pa.Table:
    return enrich_table(sim_table(count, **kwargs))  # type: ignore[arg-type]


def batches_of(table: pa.Table, size: int) -> list[pa.RecordBatch]:
    return table.combine_chunks().to_batches(max_chunksize=size)


def to_ndjson(batches: Iterable[pa.RecordBatch]) -> bytes:
    return b"".join(ndjson.encode(b) for b in batches)


def to_arrow(batches: Iterable[pa.RecordBatch]) -> bytes:
    batches = list(batches)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, batches[0].schema) as writer:
        for batch in batches:
            writer.write_batch(batch)
    return sink.getvalue()


def records_batch(records: list[dict[str, object]]) -> pa.RecordBatch:
    """Hand-written records as a normalised batch (what the reader gives the core)."""
    from tradecli.records import normalise

    names = list(dict.fromkeys(k for r in records for k in r))
    columns = {}
    for name in names:
        values = [r.get(name) for r in records]
        target = FIELD_TYPES.get(name)
        if target is not None and not pa.types.is_dictionary(target) and name != "timestamp":
            columns[name] = pa.array(values, type=target)
        else:
            columns[name] = pa.array(values)
    batch, rejects = normalise(pa.record_batch(columns))
    assert not rejects, rejects
    return batch
