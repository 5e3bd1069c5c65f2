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
from tradecli.strategies import Numbers, Strategy, hold_where

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
        self._missing: dict[tuple[str, ...], np.ndarray | None] = {}
        self._all_valid: np.ndarray | None = None

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
        if pa.types.is_boolean(t):
            col, t = col.cast(pa.float64()), pa.float64()
        if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
            raise TypeError(f"column {name!r} holds {t}, not numbers")
        # straight from the Arrow buffers: several times faster than to_numpy() with nulls
        validity, data = col.buffers()[:2]
        start, n = col.offset, len(col)
        raw = np.frombuffer(data, dtype=np.dtype(t.to_pandas_dtype()), count=start + n)[start:]
        values = raw.astype(np.float64, copy=False)
        if col.null_count == 0:
            if self._all_valid is None:
                self._all_valid = np.ones(n, dtype=bool)
            return values, self._all_valid
        bits = np.frombuffer(validity, dtype=np.uint8)
        valid = np.unpackbits(bits, count=start + n, bitorder="little")[start:].view(bool)
        # enrich writes NaN under its nulls: when every null slot already holds NaN the buffer is
        # used as it is (checking costs a third of the copy np.where would make)
        if raw.dtype == np.float64 and bool(np.greater_equal(np.isnan(values), ~valid).all()):
            return values, valid
        return np.where(valid, values, np.nan), valid

    def values(self, name: str) -> np.ndarray:
        if name not in self._values:
            self._convert(name)
        return self._values[name]

    def valid(self, name: str) -> np.ndarray:
        if name not in self._valid:
            self._convert(name)
        return self._valid[name]

    def missing_any(self, names: tuple[str, ...]) -> np.ndarray | None:
        """Rows where one of ``names`` is null (None when there are none); cached per name set."""
        if names not in self._missing:
            out: np.ndarray | None = None
            for name in names:
                valid = self.valid(name)
                if not valid.all():
                    out = ~valid if out is None else out | ~valid
            self._missing[names] = out
        return self._missing[names]

    def pylist(self, name: str, rows: np.ndarray) -> list[Any]:
        """Python values at ``rows`` in the column's own type (so volumes stay whole numbers)."""
        if name == "price" and "close" in self.names:
            valid = self.valid(name)[rows]
            return [v if ok else None for v, ok in zip(self.values(name)[rows].tolist(), valid, strict=True)]
        if name not in self.names:
            return [None] * len(rows)
        return self.batch.column(name).take(_indices(rows)).to_pylist()  # type: ignore[no-any-return]


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

    order: np.ndarray  # batch rows sorted by symbol id
    sym: np.ndarray  # symbol id of each sorted row
    day: np.ndarray | None  # New York day of each sorted row; None when all rows share one_day
    one_day: int = NO_DAY

    @classmethod
    def of(cls, sym_ids: np.ndarray, days: np.ndarray) -> Groups:
        # numpy's stable sort is a radix sort for 16-bit keys: linear, whatever the batch size
        keys = sym_ids.astype(np.uint16) if len(sym_ids) and sym_ids.max() < 1 << 16 else sym_ids
        order = np.argsort(keys, kind="stable")
        if len(days) and int(days.min()) == int(days.max()):  # the usual batch: one day
            return cls(order, sym_ids[order], None, int(days[0]))
        return cls(order, sym_ids[order], days[order])


def rising_edges(zone: np.ndarray, groups: Groups, st: StrategyState, initial: int) -> np.ndarray:
    """Batch rows where a symbol's zone turns to an on-zone; updates the carried zones.

    ``zone`` is in batch order (-1 = hold). A row's previous zone is that of the symbol's last
    judged row before it (in this batch, else carried from earlier ones); when that row was on
    another New York day, the previous zone is ``initial``. Only judged rows take part.
    """
    z = zone[groups.order]
    judged = np.flatnonzero(z >= 0)
    m = len(judged)
    if m == 0:
        return judged
    every = m == len(z)  # then the sorted arrays are already the judged ones
    zj = z if every else z[judged]
    sj = groups.sym if every else groups.sym[judged]
    first = np.empty(m, dtype=bool)
    first[0] = True
    np.not_equal(sj[1:], sj[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    prev_zone = np.empty(m, dtype=np.int8)
    prev_zone[1:] = zj[:-1]
    symbols = sj[starts]
    prev_zone[starts] = st.zone[symbols]
    if groups.day is None:  # one day: only a symbol's first row here can begin a new day
        prev_zone[starts[st.day[symbols] != groups.one_day]] = initial
    else:
        dj = groups.day if every else groups.day[judged]
        prev_day = np.empty(m, dtype=np.int64)
        prev_day[1:] = dj[:-1]
        prev_day[starts] = st.day[symbols]
        new_day = prev_day != dj
        if new_day.any():
            prev_zone[new_day] = initial
    fired = (zj > 0) & (zj != prev_zone)
    ends = np.empty(len(starts), dtype=np.int64)
    ends[:-1] = starts[1:] - 1
    ends[-1] = m - 1
    st.zone[symbols] = zj[ends]
    st.day[symbols] = groups.one_day if groups.day is None else dj[ends]
    return groups.order[judged[fired]]  # type: ignore[no-any-return]


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
    numbers: Numbers
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
        self._symbols: tuple[pa.Array, np.ndarray, list[str]] | None = None  # dictionary -> ids
        zone_table = [z for s in self.strategies for z in s.zones]
        self.fields = tuple(dict.fromkeys(f for s in self.strategies for f in s.fields))
        self._uses = {f: np.array([f in s.fields for s in self.strategies]) for f in self.fields}
        self._sides = pa.array([z.side for z in zone_table], type=STR)
        self._types = pa.array([z.signal_type for z in zone_table], type=STR)
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
        self.screened_rows += sub.num_rows
        sym_ids = self._symbol_ids(sub.column("symbol"))
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

    def _symbol_ids(self, column: pa.Array) -> np.ndarray:
        """Each row's symbol id; the dictionary's mapping is kept while batches share it."""
        if not pa.types.is_dictionary(column.type):
            column = pc.dictionary_encode(column.cast(STR))
        dictionary = column.dictionary
        indices = np.asarray(column.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        cached = self._symbols
        if cached is not None and (cached[0] is dictionary or cached[0].equals(dictionary)):
            _, mapping, names = cached
        else:
            mapping = np.full(len(dictionary), -1, dtype=np.int64)
            names = dictionary.cast(STR).to_pylist()
            self._symbols = (dictionary, mapping, names)
        ids = mapping[indices]
        if (ids < 0).any():  # symbols new to this dictionary: name only the ones used
            new = np.flatnonzero((np.bincount(indices, minlength=len(mapping)) > 0) & (mapping < 0))
            mapping[new] = self.state.ids_for([names[i] for i in new])
            ids = mapping[indices]
        return ids

    def _screenable(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, np.ndarray] | None:
        names = batch.schema.names
        if batch.num_rows == 0 or not {"type", "symbol", "timestamp"} <= set(names):
            return None
        mask = _in_set(batch.column("type"), MARKET_TYPES)
        symbol, timestamp = batch.column("symbol"), batch.column("timestamp")
        if symbol.null_count:
            mask &= np.asarray(symbol.is_valid().to_numpy(zero_copy_only=False))
        if timestamp.null_count:
            mask &= np.asarray(timestamp.is_valid().to_numpy(zero_copy_only=False))
        if self.universe is not None:
            mask &= _in_set(symbol, self.universe)
        if mask.all():
            return batch, np.arange(batch.num_rows)
        if not mask.any():
            return None
        return batch.filter(from_numpy(mask)), np.flatnonzero(mask)

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
            missing = cols.missing_any(strategy.needs)
            if missing is None:
                zone = np.array(ev.zone, dtype=np.int8)  # a copy: the strategy may still read its own
            else:  # a new array too, -1 where a field the rule needs is missing
                zone = hold_where(np.asarray(ev.zone, dtype=np.int8), missing)
            on = np.flatnonzero(zone > 0)
            numbers = ev.numbers(on) if len(on) else None
            rr = None
            if numbers is not None:
                numbers.confidence = np.clip(np.broadcast_to(numbers.confidence, on.shape), 0.0, 1.0)
                rr = _rr(numbers)
                bad = self._non_finite(strategy, numbers, rr)
                if bad is not None:
                    zone[on[bad]] = -1
            st = self.state.strategy(strategy.key)
            edges = rising_edges(zone, groups, st, strategy.initial)
            if len(edges) == 0:
                return None
            edges.sort()
            rows = self._admit(strategy, st, edges, sym_ids, ts, days, zone)
            if len(rows) == 0 or numbers is None:
                return None
            at = np.searchsorted(on, rows)  # fired rows are on-rows
            symbols = [self.state.symbols[s] for s in sym_ids[rows].tolist()]
            messages = ev.message(rows, symbols)
        except Exception as err:  # a strategy's failure must not stop the others (the seed's try/except)
            self.stats["strategy errors"] += 1
            self._once(
                (strategy.name, "error"),
                lambda e=err: (  # type: ignore[misc]
                    f"strategy {strategy.name} failed on a batch ({type(e).__name__}: {e}); it "
                    "skips that batch and the other strategies go on (later failures are only counted)"
                ),
            )
            return None

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[at]

        picked = Numbers(
            pick(numbers.entry), pick(numbers.stop), pick(numbers.target), numbers.confidence[at]
        )
        return Accepted(index, rows, zone[rows], picked, pick(rr), messages)

    def _non_finite(self, strategy: Strategy, numbers: Numbers, rr: np.ndarray | None) -> np.ndarray | None:
        """Rows (positions in ``numbers``) with a NaN/inf number, reported once; None if none."""
        named = {
            "entry_price": numbers.entry,
            "stop_loss": numbers.stop,
            "target": numbers.target,
            "confidence": numbers.confidence,
            "rr_ratio": rr,
            **numbers.checks,
        }
        bad: np.ndarray | None = None
        first = ""
        for name, values in named.items():
            if values is None:
                continue
            wrong = ~np.isfinite(values)
            if wrong.any():
                bad = wrong if bad is None else bad | wrong
                first = first or name
        if bad is None:
            return None
        count = int(bad.sum())
        self.stats["non-finite"] += count
        self._once(
            (strategy.name, "non-finite"),
            lambda: (
                f"strategy {strategy.name}: {count} record(s) gave a non-finite {first} (NaN or inf) "
                "and were skipped (later ones are only counted in the summary)"
            ),
        )
        return bad

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
        with np.errstate(over="ignore"):
            clear = (last == NEVER) | ((times > last) & (times - last >= cooldown))
        held = len(clear) - int(clear.sum())
        if held:
            self.stats["in cooldown"] += held
            candidates, sids, times = candidates[clear], sids[clear], times[clear]
        cand_days = days[candidates]
        counts = st.counts
        if limit:  # days already at their limit drop their candidates in one go
            full = [d for d in _distinct(cand_days).tolist() if counts.get(d, 0) >= limit]
            if full:
                over = cand_days == full[0]
                for day in full[1:]:  # a batch spans a day or two
                    over |= cand_days == day
                self._over_limit(strategy, int(over.sum()), full[0])
                keep_mask = ~over
                candidates, sids, times, cand_days = (
                    candidates[keep_mask],
                    sids[keep_mask],
                    times[keep_mask],
                    cand_days[keep_mask],
                )
        keep: list[int] = []
        fired = st.fired
        for row, sid, t, day in zip(
            candidates.tolist(), sids.tolist(), times.tolist(), cand_days.tolist(), strict=True
        ):
            previous = int(fired[sid])
            if previous != NEVER and (t <= previous or t - previous < cooldown):
                self.stats["in cooldown"] += 1  # an earlier signal in this batch started the cooldown
                continue
            if limit and counts.get(day, 0) >= limit:
                self._over_limit(strategy, 1, day)
                continue
            fired[sid] = t
            counts[day] = counts.get(day, 0) + 1
            self.state.fire_seq += 1
            self.state.pending.append(
                Fire(self.state.fire_seq, strategy.key, self.state.symbols[sid], t, day, int(zone[row]))
            )
            keep.append(row)
        st.prune_counts()
        self.stats["signals"] += len(keep)
        return np.array(keep, dtype=np.int64)

    def _over_limit(self, strategy: Strategy, count: int, day: int) -> None:
        self.stats["over daily limit"] += count
        self._once(
            (strategy.name, f"limit {day}"),
            lambda: (
                f"strategy {strategy.name} reached its limit of {strategy.max_per_day} signals for "
                f"{day_text(day)}; later ones that day are dropped (counted in the summary)"
            ),
        )

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
        take = _indices(rows)

        def numbers(pick: Callable[[Accepted], np.ndarray | None]) -> pa.Array:
            parts, masks = [], []
            for a in accepted:
                values = pick(a)
                missing = values is None
                parts.append(np.full(len(a.rows), np.nan) if values is None else values.astype(np.float64))
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
            "strategy": self._names.take(_indices(strat)),
            "side": self._sides.take(_indices(zone_index)),
            "signal_type": self._types.take(_indices(zone_index)),
            "confidence": numbers(lambda a: a.numbers.confidence),
            "entry_price": numbers(lambda a: a.numbers.entry),
            "stop_loss": numbers(lambda a: a.numbers.stop),
            "target": numbers(lambda a: a.numbers.target),
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
                column = pc.if_else(from_numpy(unused), pa.nulls(n, column.type), column)
            columns[name] = column
        return pa.record_batch(list(columns.values()), names=list(columns)), rows

    # -- diagnostics ----------------------------------------------------------------------
    def _once(self, key: tuple[str, str], message: str | Callable[[], str]) -> None:
        """Warn once per key; a callable message is only built when it is shown."""
        if key not in self._warned:
            self._warned.add(key)
            self.warn(message if isinstance(message, str) else message())

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


def _indices(rows: np.ndarray) -> pa.Array:
    """Row numbers as an Arrow int64 array. (pa.array on an ndarray imports numpy.ma, 14 ms.)"""
    return from_numpy(np.asarray(rows, dtype=np.int64))


def _distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values. np.unique would import numpy.ma (14 ms) on its first call."""
    ordered = np.sort(values)
    if ordered.size == 0:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def _rr(numbers: Numbers) -> np.ndarray | None:
    """|target - entry| / |entry - stop|, 0 when there is no risk (the design document's R/R)."""
    if numbers.entry is None or numbers.stop is None or numbers.target is None:
        return None
    with np.errstate(all="ignore"):
        risk = np.abs(numbers.entry - numbers.stop)
        reward = np.abs(numbers.target - numbers.entry)
        return np.where(risk > 0, reward / np.where(risk > 0, risk, 1.0), 0.0)  # type: ignore[no-any-return]


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
    merged = table.take(_indices(order)).combine_chunks()
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
