"""The engine behind ``trade screen``: strategies over whole batches, edges, cooldowns, daily limits.

For each batch the screener

1. keeps the market records (trade, quote, bar) of the screening universe that have a symbol and
   an event time, and gives every symbol a small integer id;
2. asks each strategy for the zone of every row (-1 cannot tell, 0 off, k on), all columnar;
3. finds the rows where a symbol's zone changes to an on-zone - the rising edges - with one stable
   sort by symbol id and a forward fill, carrying each symbol's last zone from batch to batch and
   resetting it when the New York day changes;
4. walks the (few) edges in order and drops those inside the (symbol, strategy) cooldown or over
   the strategy's daily limit;
5. builds the signal records, and with pass-through puts each right after its triggering record.

State (the zone, its day and the last signal time per symbol and strategy, and the signal count
per strategy and New York day) lives in :class:`ScreenState`: a few numpy arrays indexed by
symbol id, which snapshot to JSON. Every accepted signal is also handed out as a :class:`Fire`,
so the command can journal it before the signal is written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from tradecli.errors import TradeError
from tradecli.records import DICT_STRING, FIELD_TYPES, MARKET_TYPES, STR, TIMESTAMP, from_numpy
from tradecli.state import atomic_write
from tradecli.strategies import Strategy

NEW_YORK = ZoneInfo("America/New_York")
DAY_NS = 86_400 * 10**9
HOUR_NS = 3_600 * 10**9
NEVER = np.iinfo(np.int64).min  # no signal yet
NO_DAY = -1
STATE_VERSION = 1
WARN_AFTER_ROWS = 10_000  # a needed column still unseen after this many screened rows is reported
EPOCH = date(1970, 1, 1)


# ---------------------------------------------------------------------------------------------
# Time


def _offset_ns(ns: int) -> int:
    moment = datetime.fromtimestamp(ns / 1e9, NEW_YORK)
    offset = moment.utcoffset()
    return int(offset.total_seconds()) * 10**9 if offset is not None else 0


def ny_days(ts: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 on the New York calendar, for int64 ns UTC timestamps."""
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = int(ts.min()), int(ts.max())
    offset = _offset_ns(lo)
    # US clock changes are months apart: equal offsets at both ends of a short span mean none between
    if hi - lo < 20 * DAY_NS and _offset_ns(hi) == offset:
        return (ts + offset) // DAY_NS  # type: ignore[no-any-return]
    hours = ts // HOUR_NS  # offsets change on whole UTC hours
    unique, inverse = np.unique(hours, return_inverse=True)
    offsets = np.array([_offset_ns(int(h) * HOUR_NS) for h in unique], dtype=np.int64)
    return (ts + offsets[inverse]) // DAY_NS  # type: ignore[no-any-return]


def day_text(day: int) -> str:
    return (EPOCH + timedelta(days=int(day))).isoformat()


def day_number(text: str) -> int:
    return (date.fromisoformat(text) - EPOCH).days


# ---------------------------------------------------------------------------------------------
# Columns of one batch, as the strategies read them


class Columns:
    """Numeric columns of a batch as float64 numpy arrays (NaN where null), converted once.

    ``price`` is the record's price, or a bar's ``close`` where there is no price.
    """

    def __init__(self, batch: pa.RecordBatch) -> None:
        self.batch = batch
        self.n = batch.num_rows
        self.names = set(batch.schema.names)
        self._values: dict[str, np.ndarray] = {}
        self._valid: dict[str, np.ndarray] = {}

    def has(self, name: str) -> bool:
        if name == "price":
            return "price" in self.names or "close" in self.names
        return name in self.names

    def _convert(self, name: str) -> None:
        if name == "price" and "close" in self.names:
            price, has_price = self._plain("price")
            close, has_close = self._plain("close")
            use_close = ~has_price & has_close
            self._values[name] = np.where(use_close, close, price)
            self._valid[name] = has_price | has_close
        else:
            self._values[name], self._valid[name] = self._plain(name)

    def _plain(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.names:
            return np.full(self.n, np.nan), np.zeros(self.n, dtype=bool)
        col = self.batch.column(name)
        t = col.type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise TypeError(f"column {name!r} holds {t}, not numbers")
        if pa.types.is_boolean(t):
            col = col.cast(pa.float64())
        values = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        if col.null_count == 0:
            return values, np.ones(self.n, dtype=bool)
        return values, np.asarray(col.is_valid().to_numpy(zero_copy_only=False))

    def values(self, name: str) -> np.ndarray:
        if name not in self._values:
            self._convert(name)
        return self._values[name]

    def valid(self, name: str) -> np.ndarray:
        if name not in self._valid:
            self._convert(name)
        return self._valid[name]

    def pylist(self, name: str, rows: np.ndarray) -> list[Any]:
        """Python values at ``rows`` in the column's own type (so volumes stay whole numbers)."""
        if name == "price" and "close" in self.names:
            valid = self.valid(name)[rows]
            return [v if ok else None for v, ok in zip(self.values(name)[rows].tolist(), valid, strict=True)]
        if name not in self.names:
            return [None] * len(rows)
        return self.batch.column(name).take(pa.array(rows, type=pa.int64())).to_pylist()  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# State


@dataclass
class Fire:
    """One accepted signal, as the journal records it."""

    seq: int
    strategy: str
    symbol: str
    ts: int
    day: int
    zone: int

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "seq": self.seq,
                "strategy": self.strategy,
                "symbol": self.symbol,
                "ts": self.ts,
                "day": day_text(self.day),
                "zone": self.zone,
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )


@dataclass
class StrategyState:
    zone: np.ndarray  # int8: the symbol's last judged zone
    day: np.ndarray  # int64: the New York day of that record (NO_DAY: none yet)
    fired: np.ndarray  # int64 ns: the event time of the symbol's last signal (NEVER: none)
    counts: dict[int, int] = field(default_factory=dict)  # signals per New York day

    @classmethod
    def empty(cls, size: int) -> StrategyState:
        return cls(
            np.zeros(size, dtype=np.int8),
            np.full(size, NO_DAY, dtype=np.int64),
            np.full(size, NEVER, dtype=np.int64),
        )

    def grow(self, size: int) -> None:
        have = len(self.zone)
        if size <= have:
            return
        new = max(size, 2 * have, 64)
        extra = StrategyState.empty(new - have)
        self.zone = np.concatenate([self.zone, extra.zone])
        self.day = np.concatenate([self.day, extra.day])
        self.fired = np.concatenate([self.fired, extra.fired])

    def prune_counts(self, keep_days: int = 7) -> None:
        if len(self.counts) > keep_days:
            for day in sorted(self.counts)[:-keep_days]:
                del self.counts[day]


class ScreenState:
    """Per-symbol, per-strategy memory of the screener; snapshots to JSON and back.

    ``fire_seq`` numbers every accepted signal; a snapshot records the last one it includes, so a
    journal replayed on top of it applies only what came later.
    """

    def __init__(self) -> None:
        self.symbols: list[str] = []
        self.index: dict[str, int] = {}
        self.strategies: dict[str, StrategyState] = {}
        self.fire_seq = 0
        self.pending: list[Fire] = []

    # -- symbols ------------------------------------------------------------------------------
    def ids_for(self, names: Sequence[str]) -> np.ndarray:
        out = np.empty(len(names), dtype=np.int64)
        index = self.index
        for i, name in enumerate(names):
            sid = index.get(name)
            if sid is None:
                sid = index[name] = len(self.symbols)
                self.symbols.append(name)
            out[i] = sid
        return out

    def strategy(self, name: str) -> StrategyState:
        state = self.strategies.get(name)
        if state is None:
            state = self.strategies[name] = StrategyState.empty(max(len(self.symbols), 64))
        state.grow(len(self.symbols))
        return state

    # -- journal ------------------------------------------------------------------------------
    def take_pending(self) -> list[Fire]:
        out, self.pending = self.pending, []
        return out

    def apply(self, fire: Fire) -> None:
        """Replay one journalled signal (those already in the snapshot are skipped)."""
        if fire.seq <= self.fire_seq:
            return
        self.fire_seq = fire.seq
        sid = int(self.ids_for([fire.symbol])[0])
        st = self.strategy(fire.strategy)
        st.fired[sid] = max(int(st.fired[sid]), fire.ts)
        st.counts[fire.day] = st.counts.get(fire.day, 0) + 1
        if fire.day >= st.day[sid]:
            st.zone[sid] = fire.zone
            st.day[sid] = fire.day

    # -- snapshot -----------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        n = len(self.symbols)
        strategies = {}
        for name, st in self.strategies.items():
            st.prune_counts()
            strategies[name] = {
                "zone": st.zone[:n],
                "day": st.day[:n],
                "fired": st.fired[:n],
                "counts": {day_text(d): c for d, c in sorted(st.counts.items())},
            }
        return orjson.dumps(
            {
                "version": STATE_VERSION,
                "fire_seq": self.fire_seq,
                "symbols": self.symbols,
                "strategies": strategies,
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    @classmethod
    def restore(cls, data: bytes) -> ScreenState:
        """A state from :meth:`snapshot`'s bytes; ValueError when they are not one."""
        try:
            doc = orjson.loads(data)
            if doc.get("version") != STATE_VERSION:
                raise ValueError(f"state version {doc.get('version')!r}, expected {STATE_VERSION}")
            state = cls()
            symbols = [str(s) for s in doc["symbols"]]
            state.ids_for(symbols)
            n = len(symbols)
            state.fire_seq = int(doc["fire_seq"])
            for name, entry in doc["strategies"].items():
                st = StrategyState(
                    np.asarray(entry["zone"], dtype=np.int8),
                    np.asarray(entry["day"], dtype=np.int64),
                    np.asarray(entry["fired"], dtype=np.int64),
                    {day_number(d): int(c) for d, c in entry["counts"].items()},
                )
                if not (len(st.zone) == len(st.day) == len(st.fired) == n):
                    raise ValueError(f"strategy {name}: arrays do not match the {n} symbols")
                state.strategies[str(name)] = st
            return state
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"not a screen state ({type(err).__name__}: {err})") from err

    def nbytes(self) -> int:
        """Memory held by the arrays and the symbol table (roughly), for the benchmark."""
        arrays = sum(st.zone.nbytes + st.day.nbytes + st.fired.nbytes for st in self.strategies.values())
        return arrays + sum(len(s) + 100 for s in self.symbols)


# ---------------------------------------------------------------------------------------------
# Edges


@dataclass
class Groups:
    """Rows of a batch grouped by symbol id (stable: within a symbol, rows keep their order)."""

    order: np.ndarray  # positions of the rows, sorted by symbol id
    sym: np.ndarray  # symbol id of each sorted row
    day: np.ndarray  # New York day of each sorted row
    start: np.ndarray  # for each sorted row, the sorted position where its symbol's run starts
    ends: np.ndarray  # sorted position of the last row of each run

    @classmethod
    def of(cls, sym_ids: np.ndarray, days: np.ndarray) -> Groups:
        order = np.argsort(sym_ids, kind="stable")
        sym = sym_ids[order]
        n = len(sym)
        first = np.ones(n, dtype=bool)
        first[1:] = sym[1:] != sym[:-1]
        positions = np.arange(n)
        start = np.maximum.accumulate(np.where(first, positions, 0))
        ends = np.flatnonzero(np.r_[first[1:], True]) if n else np.zeros(0, dtype=np.int64)
        return cls(order, sym, days[order], start, ends)


def rising_edges(zone: np.ndarray, groups: Groups, st: StrategyState, initial: int) -> np.ndarray:
    """Sorted positions where a symbol's zone turns to an on-zone; updates the carried zones.

    ``zone`` is in batch order (-1 = hold). A row's previous zone is that of the symbol's last
    judged row before it (in this batch, else carried from earlier ones); when that row was on
    another New York day, the previous zone is ``initial``.
    """
    z = zone[groups.order]
    n = len(z)
    positions = np.arange(n)
    judged = z >= 0
    last_judged = np.maximum.accumulate(np.where(judged, positions, -1))
    before = np.empty(n, dtype=np.int64)
    before[0] = -1
    before[1:] = last_judged[:-1]
    inside = before >= groups.start
    at = np.where(inside, before, 0)
    prev_zone = np.where(inside, z[at], st.zone[groups.sym])
    prev_day = np.where(inside, groups.day[at], st.day[groups.sym])
    prev_zone = np.where(prev_day == groups.day, prev_zone, initial)
    fired = judged & (z > 0) & (z != prev_zone)
    # carry each symbol's last judged zone and its day into the next batch
    last = last_judged[groups.ends]
    ok = last >= groups.start[groups.ends]
    sids = groups.sym[groups.ends[ok]]
    st.zone[sids] = z[last[ok]]
    st.day[sids] = groups.day[last[ok]]
    return np.flatnonzero(fired)


# ---------------------------------------------------------------------------------------------
# The screener


SIGNAL_COLUMNS = (
    "strategy",
    "side",
    "signal_type",
    "confidence",
    "entry_price",
    "stop_loss",
    "target",
    "rr_ratio",
    "message",
)


@dataclass
class Accepted:
    """The signals one strategy gave on one batch (rows index the screened sub-batch)."""

    strategy: int
    rows: np.ndarray
    zones: np.ndarray
    entry: np.ndarray | None
    stop: np.ndarray | None
    target: np.ndarray | None
    confidence: np.ndarray
    rr: np.ndarray | None
    messages: list[str]


class Screener:
    """Runs strategies over batches; :meth:`process` is the whole per-batch job, with no I/O.

    Example: Screener([gap_and_go.build(params)], ScreenState()).process(batch)
    """

    def __init__(
        self,
        strategies: Sequence[Strategy],
        state: ScreenState | None = None,
        *,
        universe: Iterable[str] | None = None,
        pass_through: bool = False,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.strategies = list(strategies)
        self.state = state or ScreenState()
        self.universe = None if universe is None else pa.array(sorted({s.upper() for s in universe}))
        self.pass_through = pass_through
        self.warn = warn or (lambda message: None)
        self.stats: dict[str, int] = {
            "signals": 0,
            "in cooldown": 0,
            "over daily limit": 0,
            "non-finite": 0,
            "strategy errors": 0,
        }
        self.screened_rows = 0
        self._seen: set[str] = set()
        self._warned: set[tuple[str, str]] = set()
        self._zone_table = [
            (i, k, zone) for i, s in enumerate(self.strategies) for k, zone in enumerate(s.zones, start=1)
        ]
        self.fields = tuple(dict.fromkeys(f for s in self.strategies for f in s.fields))
        self._uses = {f: np.array([f in s.fields for s in self.strategies]) for f in self.fields}
        self._sides = pa.array([z.side for _, _, z in self._zone_table], type=STR)
        self._types = pa.array([z.signal_type for _, _, z in self._zone_table], type=STR)
        self._names = pa.array([s.name for s in self.strategies], type=STR)
        self._zone_offset = np.cumsum([0] + [len(s.zones) for s in self.strategies])

    # -- the per-batch job ----------------------------------------------------------------
    def process(self, batch: pa.RecordBatch) -> pa.RecordBatch | None:
        """The output for one input batch: its signals (and with pass-through, the input too)."""
        signals, rows = self._signals(batch)
        if not self.pass_through:
            return signals
        if signals is None:
            return batch if batch.num_rows else None
        return _interleave(batch, signals, rows)

    def _signals(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch | None, np.ndarray]:
        none = np.zeros(0, dtype=np.int64)
        selected = self._screenable(batch)
        if selected is None:
            return None, none
        sub, rows_map = selected
        self._seen.update(sub.schema.names)
        if "close" in self._seen:
            self._seen.add("price")
        n = sub.num_rows
        self.screened_rows += n
        symbol_col = sub.column("symbol")
        if not pa.types.is_dictionary(symbol_col.type):
            symbol_col = pc.dictionary_encode(symbol_col.cast(STR))
        indices = np.asarray(symbol_col.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        dictionary = symbol_col.dictionary.cast(STR).to_pylist()
        used = np.flatnonzero(np.bincount(indices, minlength=len(dictionary)))
        mapping = np.zeros(len(dictionary), dtype=np.int64)
        mapping[used] = self.state.ids_for([dictionary[i] for i in used])
        sym_ids = mapping[indices]
        ts = np.asarray(sub.column("timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False))
        days = ny_days(ts)
        groups = Groups.of(sym_ids, days)
        cols = Columns(sub)
        accepted: list[Accepted] = []
        for i, strategy in enumerate(self.strategies):
            result = self._run(i, strategy, cols, groups, sym_ids, ts, days)
            if result is not None:
                accepted.append(result)
        self._check_columns()
        if not accepted:
            return None, none
        signals, sub_rows = self._build(sub, cols, accepted)
        return signals, rows_map[sub_rows]

    def _screenable(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, np.ndarray] | None:
        names = batch.schema.names
        if batch.num_rows == 0 or not {"type", "symbol", "timestamp"} <= set(names):
            return None
        mask = _in_set(batch.column("type"), MARKET_TYPES)
        mask &= np.asarray(batch.column("symbol").is_valid().to_numpy(zero_copy_only=False))
        mask &= np.asarray(batch.column("timestamp").is_valid().to_numpy(zero_copy_only=False))
        if self.universe is not None:
            mask &= _in_set(batch.column("symbol"), self.universe)
        if mask.all():
            return batch, np.arange(batch.num_rows)
        if not mask.any():
            return None
        return batch.filter(pa.array(mask)), np.flatnonzero(mask)

    def _run(
        self,
        index: int,
        strategy: Strategy,
        cols: Columns,
        groups: Groups,
        sym_ids: np.ndarray,
        ts: np.ndarray,
        days: np.ndarray,
    ) -> Accepted | None:
        if not all(cols.has(name) for name in strategy.needs):
            return None  # every row lacks a needed column: nothing can be judged
        try:
            ev = strategy.evaluate(cols)
            zone = np.array(ev.zone, dtype=np.int8, copy=True)
            for name in strategy.needs:
                valid = cols.valid(name)
                if not valid.all():
                    zone[~valid] = -1
            values = {"entry_price": ev.entry, "stop_loss": ev.stop, "target": ev.target}
            confidence = np.clip(np.broadcast_to(ev.confidence, zone.shape), 0.0, 1.0)
            rr = None
            if ev.entry is not None and ev.stop is not None and ev.target is not None:
                with np.errstate(all="ignore"):
                    risk = np.abs(ev.entry - ev.stop)
                    rr = np.where(risk > 0, np.abs(ev.target - ev.entry) / np.where(risk > 0, risk, 1), 0.0)
            on = zone > 0
            if on.any():
                checked = {**values, "confidence": confidence, "rr_ratio": rr, **ev.checks}
                self._skip_non_finite(strategy, zone, on, checked)
            st = self.state.strategy(strategy.name)
            edges = rising_edges(zone, groups, st, strategy.initial)
            if len(edges) == 0:
                return None
            candidates = np.sort(groups.order[edges])
            rows = self._admit(strategy, st, candidates, sym_ids, ts, days, zone)
            if len(rows) == 0:
                return None
            symbols = [self.state.symbols[s] for s in sym_ids[rows].tolist()]
            messages = ev.message(rows, symbols)
        except Exception as err:  # a strategy's failure must not stop the others (the seed's try/except)
            self.stats["strategy errors"] += 1
            self._once(
                (strategy.name, "error"),
                f"strategy {strategy.name} failed on a batch ({type(err).__name__}: {err}); it skips that "
                "batch and the other strategies go on (later failures are only counted)",
            )
            return None

        def at(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else np.asarray(values)[rows]

        return Accepted(
            index,
            rows,
            zone[rows],
            at(ev.entry),
            at(ev.stop),
            at(ev.target),
            confidence[rows],
            at(rr),
            messages,
        )

    def _skip_non_finite(
        self, strategy: Strategy, zone: np.ndarray, on: np.ndarray, values: dict[str, np.ndarray | None]
    ) -> None:
        bad_total = np.zeros(len(zone), dtype=bool)
        first_bad = ""
        for name, array in values.items():
            if array is None:
                continue
            bad = on & ~np.isfinite(array)
            if bad.any():
                bad_total |= bad
                first_bad = first_bad or name
        count = int(bad_total.sum())
        if count:
            zone[bad_total] = -1
            self.stats["non-finite"] += count
            self._once(
                (strategy.name, "non-finite"),
                f"strategy {strategy.name}: {count} record(s) gave a non-finite {first_bad} (NaN or inf) and "
                "were skipped (later ones are only counted in the summary)",
            )

    def _admit(
        self,
        strategy: Strategy,
        st: StrategyState,
        candidates: np.ndarray,
        sym_ids: np.ndarray,
        ts: np.ndarray,
        days: np.ndarray,
        zone: np.ndarray,
    ) -> np.ndarray:
        """The candidates that pass the cooldown and the daily limit, in order; state updated."""
        cooldown = round(strategy.cooldown * 1e9)
        limit = strategy.max_per_day
        sids = sym_ids[candidates]
        times = ts[candidates]
        last = st.fired[sids]
        fresh = last == NEVER
        with np.errstate(over="ignore"):
            clear = fresh | ((times > last) & (times - last >= cooldown))
        self.stats["in cooldown"] += int((~clear).sum())
        keep: list[int] = []
        counts = st.counts
        for row, sid, t, day, z in zip(
            candidates[clear].tolist(),
            sids[clear].tolist(),
            times[clear].tolist(),
            days[candidates[clear]].tolist(),
            zone[candidates[clear]].tolist(),
            strict=True,
        ):
            previous = int(st.fired[sid])
            if previous != NEVER and (t <= previous or t - previous < cooldown):
                self.stats["in cooldown"] += 1  # an earlier signal in this batch started the cooldown
                continue
            if limit and counts.get(day, 0) >= limit:
                self.stats["over daily limit"] += 1
                self._once(
                    (strategy.name, f"limit {day}"),
                    f"strategy {strategy.name} reached its limit of {limit} signals for {day_text(day)}; "
                    "later ones that day are dropped (counted in the summary)",
                )
                continue
            st.fired[sid] = t
            counts[day] = counts.get(day, 0) + 1
            self.state.fire_seq += 1
            self.state.pending.append(
                Fire(self.state.fire_seq, strategy.name, self.state.symbols[sid], t, day, z)
            )
            keep.append(row)
        st.prune_counts()
        self.stats["signals"] += len(keep)
        return np.array(keep, dtype=np.int64)

    # -- output -------------------------------------------------------------------------------
    def _build(
        self, sub: pa.RecordBatch, cols: Columns, accepted: list[Accepted]
    ) -> tuple[pa.RecordBatch, np.ndarray]:
        rows = np.concatenate([a.rows for a in accepted])
        order = np.argsort(rows, kind="stable")  # input order; strategies in list order per row
        rows = rows[order]
        strat = np.concatenate([np.full(len(a.rows), a.strategy) for a in accepted])[order]
        zone_index = np.concatenate(
            [self._zone_offset[a.strategy] + a.zones.astype(np.int64) - 1 for a in accepted]
        )[order]
        n = len(rows)
        take = pa.array(rows, type=pa.int64())

        def numbers(pick: Callable[[Accepted], np.ndarray | None]) -> pa.Array:
            parts, masks = [], []
            for a in accepted:
                values = pick(a)
                missing = values is None
                parts.append(
                    np.full(len(a.rows), np.nan) if missing else np.asarray(values, dtype=np.float64)
                )
                masks.append(np.full(len(a.rows), missing))
            return from_numpy(np.concatenate(parts)[order], mask=np.concatenate(masks)[order])

        messages = [m for a in accepted for m in a.messages]
        columns: dict[str, pa.Array] = {
            "type": pa.DictionaryArray.from_arrays(
                from_numpy(np.zeros(n, dtype=np.int32)), pa.array(["signal"], type=STR)
            ),
            "symbol": _take_or_null(sub, "symbol", take, n),
            "timestamp": _take_or_null(sub, "timestamp", take, n),
            "recv_ts": _take_or_null(sub, "recv_ts", take, n),
            "source": _take_or_null(sub, "source", take, n),
            "strategy": self._names.take(pa.array(strat, type=pa.int64())),
            "side": self._sides.take(pa.array(zone_index, type=pa.int64())),
            "signal_type": self._types.take(pa.array(zone_index, type=pa.int64())),
            "confidence": numbers(lambda a: a.confidence),
            "entry_price": numbers(lambda a: a.entry),
            "stop_loss": numbers(lambda a: a.stop),
            "target": numbers(lambda a: a.target),
            "rr_ratio": numbers(lambda a: a.rr),
            "message": pa.array([messages[i] for i in order.tolist()], type=STR),
        }
        for name in self.fields:
            if name in SIGNAL_COLUMNS or name in columns:
                continue
            unused = ~self._uses[name][strat]
            if name == "price":
                values = cols.values("price")[rows]
                mask = ~cols.valid("price")[rows] | unused
                columns[name] = from_numpy(values, mask=mask)
                continue
            column = _take_or_null(sub, name, take, n)
            if unused.any():
                column = pc.if_else(pa.array(unused), pa.nulls(n, column.type), column)
            columns[name] = column
        return pa.record_batch(list(columns.values()), names=list(columns)), rows

    # -- diagnostics ----------------------------------------------------------------------
    def _once(self, key: tuple[str, str], message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.warn(message)

    def _check_columns(self, final: bool = False) -> None:
        if not final and self.screened_rows < WARN_AFTER_ROWS:
            return
        for strategy in self.strategies:
            for name in strategy.needs:
                if name not in self._seen:
                    hint = " - is `trade enrich` upstream, with that period?" if strategy.builtin else ""
                    self._once(
                        (strategy.name, f"column {name}"),
                        f"strategy {strategy.name} needs column {name!r}, which no record has carried "
                        f"so far{hint}",
                    )

    def finish(self) -> None:
        """End of input: report needed columns that never arrived (if anything was screened)."""
        if self.screened_rows:
            self._check_columns(final=True)

    def summary(self) -> dict[str, int]:
        """The counters worth showing in the closing line: signals always, the rest when not 0."""
        return {k: v for k, v in self.stats.items() if v or k == "signals"}


def _in_set(col: pa.Array, values: Sequence[str] | pa.Array) -> np.ndarray:
    """Rows of a (dictionary) string column whose value is in ``values``; nulls are not."""
    value_set = values if isinstance(values, pa.Array) else pa.array(list(values), type=STR)
    if pa.types.is_dictionary(col.type):
        hits = np.asarray(
            pc.is_in(col.dictionary.cast(STR), value_set=value_set).to_numpy(zero_copy_only=False)
        )
        indices = col.indices
        valid = np.asarray(indices.is_valid().to_numpy(zero_copy_only=False))
        codes = np.asarray(indices.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        return hits[codes] & valid if len(hits) else np.zeros(len(col), dtype=bool)
    result = pc.is_in(col.cast(STR), value_set=value_set).fill_null(False)
    return np.asarray(result.to_numpy(zero_copy_only=False))


def _take_or_null(batch: pa.RecordBatch, name: str, take: pa.Array, n: int) -> pa.Array:
    if name in batch.schema.names:
        return batch.column(name).take(take)
    target = FIELD_TYPES.get(name, pa.float64())
    if target == DICT_STRING:
        return pa.nulls(n, STR).dictionary_encode().cast(DICT_STRING)
    return pa.nulls(n, target if target != TIMESTAMP else TIMESTAMP)


def _interleave(batch: pa.RecordBatch, signals: pa.RecordBatch, rows: np.ndarray) -> pa.RecordBatch:
    """The input batch with each signal placed right after the record that triggered it."""
    n = batch.num_rows
    keys = np.concatenate([2 * np.arange(n, dtype=np.int64), 2 * rows.astype(np.int64) + 1])
    order = np.argsort(keys, kind="stable")
    table = pa.concat_tables(
        [pa.Table.from_batches([batch]), pa.Table.from_batches([signals])], promote_options="permissive"
    )
    merged = table.take(pa.array(order, type=pa.int64())).combine_chunks()
    return merged.to_batches()[0]


# ---------------------------------------------------------------------------------------------
# State on disk


class StateFiles:
    """The screener's state directory: a JSON snapshot, a journal of signals, and a lock.

    Every accepted signal is appended to the journal before the signal is written out, so a
    screen that is killed (even with SIGKILL) and restarted on the same day never fires it again
    nor forgets it in the day's count. The snapshot is rewritten atomically at checkpoints and on
    exit, and the journal is emptied after it. A lock keeps two screens off one directory.
    """

    SNAPSHOT = "screen-state.json"
    JOURNAL = "screen-journal.ndjson"
    LOCK = "screen.lock"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.snapshot_path = self.directory / self.SNAPSHOT
        self.journal_path = self.directory / self.JOURNAL
        self._lock_fd: int | None = None
        self._journal_fd: int | None = None

    def lock(self) -> None:
        import fcntl

        fd = os.open(self.directory / self.LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise TradeError(
                f"the state directory {self.directory} is in use by another trade screen; "
                "give each screen its own --state-dir"
            ) from None
        self._lock_fd = fd

    def load(self, warn: Callable[[str], None]) -> ScreenState:
        state = ScreenState()
        try:
            data = self.snapshot_path.read_bytes()
        except FileNotFoundError:
            data = None
        if data is not None:
            try:
                state = ScreenState.restore(data)
            except ValueError as err:
                aside = self.snapshot_path.with_name(f"{self.SNAPSHOT}.corrupt-{int(time.time())}")
                os.replace(self.snapshot_path, aside)
                warn(
                    f"state file {self.snapshot_path} is unreadable ({err}); "
                    f"moved to {aside.name}, starting afresh"
                )
        for fire in self._journal_entries(warn):
            state.apply(fire)
        return state

    def _journal_entries(self, warn: Callable[[str], None]) -> Iterator[Fire]:
        try:
            lines = self.journal_path.read_bytes().splitlines()
        except FileNotFoundError:
            return
        bad = 0
        for line in lines:
            try:
                doc = orjson.loads(line)
                yield Fire(
                    int(doc["seq"]),
                    str(doc["strategy"]),
                    str(doc["symbol"]),
                    int(doc["ts"]),
                    day_number(doc["day"]),
                    int(doc["zone"]),
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                bad += 1  # a line cut short by a kill
        if bad:
            warn(f"{bad} unreadable line(s) in {self.journal_path.name} ignored")

    def journal(self, fires: Sequence[Fire]) -> None:
        if not fires:
            return
        if self._journal_fd is None:
            self._journal_fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        data = b"".join(f.to_json() for f in fires)
        view = memoryview(data)
        while view:
            written = os.write(self._journal_fd, view)
            view = view[written:]

    def save(self, state: ScreenState) -> None:
        atomic_write(self.snapshot_path, state.snapshot())
        if self._journal_fd is not None:
            os.ftruncate(self._journal_fd, 0)
        elif self.journal_path.exists():
            os.truncate(self.journal_path, 0)

    def close(self) -> None:
        for fd in (self._journal_fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._journal_fd = self._lock_fd = None
