"""The streaming indicator engine behind ``trade enrich``: per-symbol state, columnar updates.

:class:`IndicatorState` holds, for every series it has seen, what the next record needs and no more:
rings of the last ``W`` prices and volumes (``W`` = the longest window), a carried integer sum per
volume window, a warm-up sum and a scan carry per exponential average, the last block's suffix
sums per window over 32, and the session totals. That is O(longest period) per series, however
long the stream. ``add(batch)`` updates the state from a whole
record batch and returns the batch with the indicator columns; ``snapshot()`` / ``restore()``
carry the state across restarts, as talipp's indicators carry theirs across ``add`` calls.

How a batch is computed, without a Python loop per record, so that the output is the same to the
last bit however the stream is cut into batches (every value comes from the same floating-point
operations in the same order, whatever the cuts):

* The rows that update indicators (trades, and bars by their close) get a small integer code per
  series (symbol and kind) from a registry kept across batches, and are grouped by it with a stable
  radix sort: each series becomes one contiguous segment.
* Window sums (SMA, the middle band): every row's window is summed afresh from its own values,
  the first ones read from the series' ring, so nothing drifts and no other symbol's magnitude
  leaks in. Windows up to 32 are added value by value; longer ones use van Herk/Gil-Werman blocks
  of the window length at fixed series positions (a window is a suffix of one block plus a
  prefix of the next; the last whole block's suffix sums are kept in the state). Bollinger
  variance uses such blocks with Welford/Chan statistics. Volume sums are integers, exact.
* EMA, Wilder's RSI and ATR, the MACD lines and the session's price x volume are linear
  recurrences ``y = a*y' + b`` per series (``a = 1`` for a running sum). They run as a blocked
  segmented scan: blocks of 16 values at fixed stream positions, each solved in closed form with a
  running sum of ``b * a**-j``, and the value entering each block carried from the block before,
  in order. The state keeps the current block's carry and running sum, so a batch that starts in
  the middle of a block continues it exactly. Session highs and lows use the same blocks with max.

TA-Lib's conventions, checked against it: EMA starts at the n-th value with the SMA of the first n,
then ``alpha = 2/(n+1)``; RSI starts at the (n+1)-th value with the simple means of the first n
gains and losses, then Wilder's ``1/n``, and is 0 when both averages are 0; MACD seeds its fast EMA
at the slow EMA's first value (with the SMA of the fast period ending there), seeds the signal with
the mean of the first ``signal`` MACD values, and reports all three lines from then on; Bollinger
bands are SMA +/- k population standard deviations; ATR averages true ranges from the second bar.
"""

from __future__ import annotations

import functools
import io
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tradecli.records import F64, I64, from_numpy

SNAPSHOT_MAGIC = b"tradecli-enrich-state\n"
SNAPSHOT_VERSION = 2  # 2: scans carry (carry, partial) pairs at fixed block positions

TRADE, QUOTE, BAR = 1, 2, 3
_TYPE_CODES = {"trade": TRADE, "quote": QUOTE, "bar": BAR}

_LINEAR, _MAX, _MIN = 0, 1, 2
_IDENTITY = {_LINEAR: 0.0, _MAX: -np.inf, _MIN: np.inf}
_NO_SESSION = np.iinfo(np.int64).min
_DIRECT_WINDOW = 32  # windows up to this long are summed value by value; longer ones in van Herk blocks
_FLAT_LIMIT = 1 << 20  # values in one flat array of windows (segments go in groups beyond it)


# ---------------------------------------------------------------------------------------------
# What to compute


@dataclass(frozen=True)
class Spec:
    """Which indicators, with which periods; and where a trading session starts."""

    sma: tuple[int, ...] = (20,)
    ema: tuple[int, ...] = (9,)
    rsi: tuple[int, ...] = (14,)
    volume_avg: tuple[int, ...] = (20,)
    macd: tuple[tuple[int, int, int], ...] = ()
    bbands: tuple[tuple[int, float], ...] = ()
    atr: tuple[int, ...] = ()
    session_start: str = "04:00"
    timezone: str = "America/New_York"

    def columns(self) -> list[str]:
        """The indicator columns, in the order they are appended to a batch."""
        names = ["vwap"]
        names += [f"sma_{n}" for n in self.sma]
        names += [f"ema_{n}" for n in self.ema]
        names += [f"rsi_{n}" for n in self.rsi]
        for spec in self.macd:
            suffix = "_".join(map(str, spec))
            names += [f"macd_{suffix}", f"macd_signal_{suffix}", f"macd_hist_{suffix}"]
        for n, k in self.bbands:
            suffix = f"{n}_{format_number(k)}"
            names += [f"bb_upper_{suffix}", f"bb_middle_{suffix}", f"bb_lower_{suffix}"]
        names += [f"atr_{n}" for n in self.atr]
        names += [f"avg_volume_{n}" for n in self.volume_avg]
        if self.volume_avg:
            names.append("volume_ratio")
        names += ["gap_pct", "day_high", "day_low", "day_volume", "mid", "spread"]
        return names

    def indicators(self) -> dict[str, Any]:
        """The part of the spec that the carried state depends on (sessions may change freely)."""
        out = asdict(self)
        out.pop("session_start")
        out.pop("timezone")
        plain: dict[str, Any] = json.loads(json.dumps(out))  # tuples as lists, as in a snapshot
        return plain


def format_number(value: float) -> str:
    """2 -> '2', 2.5 -> '2p5': a column-name-safe number (jq reads .bb_upper_20_2p5)."""
    text = f"{value:g}"
    return text.replace(".", "p").replace("-", "m")


# ---------------------------------------------------------------------------------------------
# Numeric kernels


CHUNK = 16  # values per block of a scan: fixed, so a series' blocks sit at the same places however it is cut
_FEW_BLOCKS = 256  # below this many blocks numpy's accumulate along a block is the faster way
_PYTHON_TAIL = 32  # (channel, segment) pairs below which the carry chain steps in Python floats


@functools.cache
def _power_tables(decays: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``_powers`` of each channel, stacked: (channels, CHUNK) twice."""
    up, down = zip(*(_powers(a) for a in decays), strict=True)
    return np.stack(up), np.stack(down)


@functools.cache
def _powers(a: float) -> tuple[np.ndarray, np.ndarray]:
    """``(a**-k, a**k)`` for ``k < CHUNK``, from Python floats: the same bits whatever the batch."""
    if a == 0.0:
        return np.ones(CHUNK), np.ones(CHUNK)  # y = b: the closed form is not used (see scan)
    return np.array([(1.0 / a) ** k for k in range(CHUNK)]), np.array([a**k for k in range(CHUNK)])


class ScanLayout:
    """Where each value of a segmented scan goes: blocks of ``CHUNK`` values at fixed stream positions.

    A segment whose first value has stream index ``first`` puts value ``j`` in slot
    ``(first + j) % CHUNK`` of a block of its own, so a series' blocks hold the same values however
    its stream is cut into batches, and every value is computed by the same operations in the same
    order: the output does not depend on the cuts, to the last bit. Blocks are stored
    position-major, (CHUNK, blocks): a step along a block is one vector operation over every block.
    """

    def __init__(self, lengths: np.ndarray, first: np.ndarray) -> None:
        self.lengths = lengths
        self.total = int(lengths.sum())
        has = lengths > 0
        lead = first % CHUNK
        # one value per segment (a quiet stream's small batches): no blocks needed, same operations
        self.singles = self.total > 0 and self.total == lengths.size and bool(has.all())
        if self.singles:
            self.lead = lead
            return
        blocks_per = np.where(has, (lead + lengths + (CHUNK - 1)) // CHUNK, 0)
        first_block = np.cumsum(blocks_per) - blocks_per
        starts = np.cumsum(lengths) - lengths
        self.n_blocks = n_blocks = int(blocks_per.sum())
        linear = np.repeat(first_block * CHUNK + lead - starts, lengths) + np.arange(self.total)
        self.pos = (linear % CHUNK) * n_blocks + linear // CHUNK  # (slot, block) of each value
        self.has = np.flatnonzero(has)
        self.first_block = first_block[self.has]
        self.lead = lead[self.has]
        last = (first_block * CHUNK + lead + lengths - 1)[self.has]
        self.last_slot = (last % CHUNK) * n_blocks + last // CHUNK
        self.last_step = last % CHUNK
        self.last_block = last // CHUNK
        self.last_value = (starts + lengths - 1)[self.has]
        # the carry chain runs block after block; segments with more blocks first
        per = blocks_per[self.has]
        self.order = np.argsort(-per, kind="stable")
        self.chain_blocks = per[self.order]
        self.chain_base = self.first_block[self.order]

    def scan(
        self,
        values: Sequence[np.ndarray],
        carry: np.ndarray,
        op: int,
        a: np.ndarray | None = None,
        partial: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Inclusive scan of each segment of every channel; and where each segment ends.

        ``op`` is ``_LINEAR`` (``y = a*y' + v`` with ``a`` per channel; ``a = 1`` is a running sum),
        ``_MAX`` or ``_MIN``. ``values`` holds one array per channel; ``carry`` and ``partial`` are
        (channels, segments). In a block, ``y_k = a**k * (C*a + S_k)`` with ``S_k`` the running sum
        of ``v_j * a**-j`` and ``C`` the value before the block. A segment that starts inside a
        block continues from its ``carry`` (that block's ``C``) and ``partial`` (``S`` so far);
        the returned pair is what the next batch of the segment needs. Extremes ignore ``partial``.
        """
        channels = len(values)
        a = np.ones(channels) if a is None else a
        if self.singles:
            return self._scan_singles(np.stack(values), carry, op, a, partial)
        carry_out = carry.copy()
        partial_out = np.full(carry.shape, -0.0) if partial is None else partial.copy()
        if self.total == 0:
            return np.empty((channels, 0)), carry_out, partial_out
        linear = op == _LINEAR
        n_blocks = self.n_blocks
        padded = np.full((channels, CHUNK * n_blocks), -0.0 if linear else _IDENTITY[op])  # -0.0 adds nothing
        for row, channel in zip(padded, values, strict=True):  # 1-d fancy indexing is 3x faster
            row[self.pos] = channel
        blocks = padded.reshape(channels, CHUNK, n_blocks)
        plain = not linear or bool((a == 1.0).all())
        if not plain:
            up, down = _power_tables(tuple(a.tolist()))
            blocks *= up[:, :, None]
        continued = np.flatnonzero(self.lead > 0)
        if linear and continued.size:
            assert partial is not None, "a segment starts inside a block: its partial sum is needed"
            slots = (self.lead[continued] - 1) * n_blocks + self.first_block[continued]
            padded[:, slots] = partial[:, self.has[continued]]
        # running sums (or extremes) along each block, from the block's own start
        extreme = np.maximum if op == _MAX else np.minimum
        if n_blocks < _FEW_BLOCKS:  # accumulate is sequential too: the same sums, with less overhead
            (np.add if linear else extreme).accumulate(blocks, axis=1, out=blocks)
        else:
            for k in range(1, CHUNK):
                if linear:
                    blocks[:, k] += blocks[:, k - 1]
                else:
                    extreme(blocks[:, k], blocks[:, k - 1], out=blocks[:, k])
        running = padded[:, self.last_slot]  # S at each segment's last value, before the carries join
        last_down = None if plain else down[:, -1]
        incoming = self._chain(blocks[:, CHUNK - 1], carry[:, self.has], op, a, last_down)
        if not linear:
            extreme(blocks, incoming[:, None, :], out=blocks)
        elif plain:
            blocks += incoming[:, None, :]
        else:
            blocks += (incoming * a[:, None])[:, None, :]
            blocks *= down[:, :, None]
        out: np.ndarray = np.take(padded, self.pos, axis=1)
        last = padded[:, self.last_slot]
        if linear:
            closed = self.last_step == CHUNK - 1  # the last value ends its block: the next starts from it
            carry_out[:, self.has] = np.where(closed, last, incoming[:, self.last_block])
            partial_out[:, self.has] = np.where(closed, -0.0, running)
        else:
            carry_out[:, self.has] = last
        for c in np.flatnonzero(linear & (a == 0.0)).tolist():  # y = b (an average of one value)
            out[c] = values[c]
            carry_out[c, self.has] = out[c][self.last_value]
            partial_out[c, self.has] = -0.0
        return out, carry_out, partial_out

    def _scan_singles(
        self, b: np.ndarray, carry: np.ndarray, op: int, a: np.ndarray, partial: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`scan` when every segment holds one value: the operations of a block's slot."""
        lead = self.lead
        if op != _LINEAR:
            y = (np.maximum if op == _MAX else np.minimum)(b, carry)
            return y, y.copy(), np.full(carry.shape, -0.0) if partial is None else partial.copy()
        plain = bool((a == 1.0).all())
        if plain:
            running = b.copy()
        else:
            up, down = _power_tables(tuple(a.tolist()))
            running = b * up[:, lead]
        continued = np.flatnonzero(lead > 0)
        if continued.size:
            assert partial is not None, "a segment starts inside a block: its partial sum is needed"
            running[:, continued] += partial[:, continued]
        if plain:
            y = running + carry
        else:
            y = running + carry * a[:, None]
            y *= down[:, lead]
        closed = lead == CHUNK - 1
        carry_out = np.where(closed, y, carry)
        partial_out = np.where(closed, -0.0, running)
        for c in np.flatnonzero(a == 0.0).tolist():  # y = b (an average of one value)
            y[c] = b[c]
            carry_out[c] = b[c]
            partial_out[c] = -0.0
        return y, carry_out, partial_out

    def _chain(
        self, block_ends: np.ndarray, start: np.ndarray, op: int, a: np.ndarray, last_down: np.ndarray | None
    ) -> np.ndarray:
        """The value before each block: ``start`` for a segment's first, then block after block.

        The chain is sequential, as the definition is: one vector step per block index over every
        segment that has such a block, and Python floats for the few long segments left (the same
        IEEE operations, so the same bits).
        """
        channels = block_ends.shape[0]
        incoming = np.empty((channels, self.n_blocks))
        incoming[:, self.first_block] = start
        top = int(self.chain_blocks[0]) if self.chain_blocks.size else 0
        if top <= 1:
            return incoming
        linear = op == _LINEAR
        extreme = np.maximum if op == _MAX else np.minimum
        carry = start[:, self.order]
        base, falling = self.chain_base, -self.chain_blocks
        j = 1
        while j < top:
            count = int(np.searchsorted(falling, -j, side="left"))  # segments with a block j
            if count * channels <= _PYTHON_TAIL:
                break
            before = base[:count] + (j - 1)
            if linear:
                step = carry[:, :count] * a[:, None]
                step += block_ends[:, before]
                if last_down is not None:
                    step *= last_down[:, None]
            else:
                step = extreme(carry[:, :count], block_ends[:, before])
            carry[:, :count] = step
            incoming[:, before + 1] = step
            j += 1
        if j < top:
            self._chain_tail(incoming, block_ends, carry, j, op, a, last_down)
        return incoming

    def _chain_tail(
        self,
        incoming: np.ndarray,
        block_ends: np.ndarray,
        carry: np.ndarray,
        j: int,
        op: int,
        a: np.ndarray,
        last_down: np.ndarray | None,
    ) -> None:
        """The rest of the chain from block ``j``, one Python float step per block."""
        count = int(np.searchsorted(-self.chain_blocks, -j, side="left"))
        for c in range(block_ends.shape[0]):
            ac = float(a[c])
            dc = 1.0 if last_down is None else float(last_down[c])
            ends = block_ends[c]
            for s in range(count):
                first, blocks = int(self.chain_base[s]), int(self.chain_blocks[s])
                y = float(carry[c, s])
                steps = []
                for end in ends[first + j - 1 : first + blocks - 1].tolist():
                    if op == _LINEAR:
                        y = (y * ac + end) * dc  # * 1.0 changes no bits: the vector step's value
                    elif op == _MAX:
                        y = end if (end > y or end != end) else y  # np.maximum: NaN wins
                    else:
                        y = end if (end < y or end != end) else y
                    steps.append(y)
                incoming[c, first + j : first + blocks] = steps


def seg_scan(
    values: np.ndarray, lengths: np.ndarray, init: np.ndarray, op: int, a: float = 1.0
) -> np.ndarray:
    """One channel of :meth:`ScanLayout.scan` over segments that start a stream: ``init`` (segments,)."""
    layout = ScanLayout(lengths, np.zeros(lengths.size, dtype=np.int64))
    out: np.ndarray = layout.scan([values], init[None, :], op, np.array([a]))[0][0]
    return out


def seg_cumsum_int(values: np.ndarray, lengths: np.ndarray, init: np.ndarray) -> np.ndarray:
    """Running integer sums per segment, continuing from ``init``: exact."""
    if values.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    running = np.cumsum(values, dtype=np.int64)
    before = running - values  # sum of everything before each row
    starts = (np.cumsum(lengths) - lengths)[lengths > 0]
    offset = init[lengths > 0] - before[starts]
    out: np.ndarray = running + np.repeat(offset, lengths[lengths > 0])
    return out


def _blocks(flat: np.ndarray, width: int) -> tuple[np.ndarray, int]:
    """``flat`` cut into blocks of ``width``, stored position-major: (width, blocks)."""
    size = flat.shape[0]
    n_blocks = -(-size // width)
    padded = np.zeros(n_blocks * width)
    padded[:size] = flat
    return np.ascontiguousarray(padded.reshape(n_blocks, width).T), n_blocks


def _at(index: np.ndarray, width: int, n_blocks: int) -> np.ndarray:
    """Where ``flat[index]`` sits in the position-major blocks, as a flat index."""
    out: np.ndarray = (index % width) * n_blocks + index // width
    return out


def window_sums(flat: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """Sum of ``flat[e - width + 1 : e + 1]`` for every ``e`` in ``ends`` (all ``>= width - 1``).

    A short window is summed directly, ``width`` shifted vector additions. A long one uses van
    Herk/Gil-Werman: cut ``flat`` into blocks of ``width``; a window is a suffix of one block plus
    a prefix of the next, each a sequential sum of fewer than ``width`` values.
    """
    if width == 1:
        out1: np.ndarray = flat[ends].astype(np.float64)
        return out1
    if width <= _DIRECT_WINDOW:
        size = flat.shape[0]
        total = flat[width - 1 :].astype(np.float64, copy=True)  # total[j]: the window ending at j+width-1
        for k in range(1, width):
            total += flat[width - 1 - k : size - k]
        out2: np.ndarray = total[ends - (width - 1)]
        return out2
    blocks, n_blocks = _blocks(flat, width)
    prefix = blocks.copy()
    suffix = blocks
    for k in range(1, width):
        prefix[k] += prefix[k - 1]
    for k in range(width - 2, -1, -1):
        suffix[k] += suffix[k + 1]
    first = ends - (width - 1)
    tail = suffix.ravel()[_at(first, width, n_blocks)]
    tail[first % width == 0] = 0.0  # the window is exactly one block: the prefix has it all
    out: np.ndarray = prefix.ravel()[_at(ends, width, n_blocks)] + tail
    return out


def _welford(blocks: np.ndarray, reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Running mean and sum of squared deviations along each block (Welford): no cancellation.

    ``blocks`` is position-major (width, blocks); ``reverse`` runs from each block's end.
    """
    width = blocks.shape[0]
    order = range(width - 1, -1, -1) if reverse else range(width)
    means = np.empty_like(blocks)
    m2s = np.empty_like(blocks)
    mean = m2 = np.zeros(blocks.shape[1])
    for count, k in enumerate(order, start=1):  # one step per position, over every block at once
        x = blocks[k]
        delta = x - mean
        mean = mean + delta / count
        m2 = m2 + delta * (x - mean)
        means[k], m2s[k] = mean, m2
    return means, m2s


def window_variance(flat: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """Population variance of ``flat[e - width + 1 : e + 1]`` for every ``e`` in ``ends``.

    Van Herk blocks again, each side a Welford running mean and M2, joined with Chan's formula:
    exact zero for a flat window, and no E[x^2] - E[x]^2 cancellation at any price level.
    """
    if width == 1:
        return np.zeros(ends.size)
    blocks, n_blocks = _blocks(flat, width)
    prefix_mean, prefix_m2 = (a.ravel() for a in _welford(blocks))
    suffix_mean, suffix_m2 = (a.ravel() for a in _welford(blocks, reverse=True))
    first = ends - (width - 1)
    end_at, first_at = _at(ends, width, n_blocks), _at(first, width, n_blocks)
    tail = width - first % width  # values in the suffix part
    head = width - tail
    delta = prefix_mean[end_at] - suffix_mean[first_at]
    joined = suffix_m2[first_at] + prefix_m2[end_at] + delta * delta * (tail * head / width)
    m2 = np.where(first % width == 0, prefix_m2[end_at], joined)
    out: np.ndarray = np.maximum(m2, 0.0) / width
    return out


# ---------------------------------------------------------------------------------------------
# Sessions


def parse_clock(text: str) -> tuple[int, int]:
    """'04:00' -> (4, 0). Raises ValueError."""
    hours, _, minutes = text.strip().partition(":")
    if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise ValueError(text)
    h, m = int(hours), int(minutes)
    if not (0 <= h < 24 and 0 <= m < 60):
        raise ValueError(text)
    return h, m


class SessionClock:
    """Which trading session an instant belongs to: sessions start at a local wall-clock time.

    A session is named by its local date (days since 1970-01-01). The boundary instants are
    computed per day with the zone's rules (so daylight saving is right) and cached.
    """

    def __init__(self, start: str = "04:00", timezone: str = "America/New_York") -> None:
        self.hour, self.minute = parse_clock(start)
        self.zone = ZoneInfo(timezone)
        self._first = 0  # day number of _bounds[0]
        self._bounds = np.empty(0, dtype=np.int64)

    def _boundary(self, day: date) -> int:
        local = datetime.combine(day, time(self.hour, self.minute), tzinfo=self.zone)
        return int(local.timestamp()) * 1_000_000_000

    def _cover(self, lo_ns: int, hi_ns: int) -> None:
        epoch = date(1970, 1, 1)
        lo_day = int(lo_ns // 86_400_000_000_000) - 2
        hi_day = int(hi_ns // 86_400_000_000_000) + 2
        if self._bounds.size and self._first <= lo_day and self._first + self._bounds.size - 1 >= hi_day:
            return
        if self._bounds.size:
            lo_day = min(lo_day, self._first)
            hi_day = max(hi_day, self._first + self._bounds.size - 1)
        days = range(lo_day, hi_day + 1)
        self._bounds = np.array([self._boundary(epoch + timedelta(days=d)) for d in days], dtype=np.int64)
        self._first = lo_day

    def keys(self, ns: np.ndarray) -> np.ndarray:
        """The session (local date of its start, as days since 1970) of each instant."""
        if ns.size == 0:
            return np.empty(0, dtype=np.int64)
        one = self.single(ns)
        if one is not None:
            return np.full(ns.size, one, dtype=np.int64)
        out: np.ndarray = np.searchsorted(self._bounds, ns, side="right") - 1 + self._first
        return out.astype(np.int64)

    def single(self, ns: np.ndarray) -> int | None:
        """The session of every instant in ``ns`` when they all share one (the usual batch), else None."""
        if ns.size == 0:
            return None
        lo, hi = int(ns.min()), int(ns.max())
        self._cover(lo, hi)
        first = int(np.searchsorted(self._bounds, lo, side="right")) - 1
        last = int(np.searchsorted(self._bounds, hi, side="right")) - 1
        return self._first + first if first == last else None


# ---------------------------------------------------------------------------------------------
# Exponential averages: EMA, Wilder's RSI and ATR, the MACD lines


@dataclass(frozen=True)
class Average:
    """An average of ``source`` seeded with the mean of its first ``period`` values.

    ``start`` is the series position of the first input (diffs and true ranges start at the second
    record; MACD's fast EMA starts where its first ``period`` values end at the slow one's seed).
    """

    source: str  # 'price', 'gain', 'loss', 'range', or 'macd:<f>,<s>' for a MACD signal line
    period: int
    start: int
    weight: float  # the weight of the new value: 2/(n+1) for an EMA, 1/n for Wilder
    bars_only: bool = False

    @property
    def decay(self) -> float:
        if self.weight == 1.0 / self.period and self.period > 1:
            return (self.period - 1) / self.period
        return 1.0 - self.weight


def ema_average(source: str, period: int, start: int = 0) -> Average:
    return Average(source, period, start, 2.0 / (period + 1))


def wilder_average(source: str, period: int, start: int = 1, bars_only: bool = False) -> Average:
    return Average(source, period, start, 1.0 / period, bars_only)


def macd_periods(spec: tuple[int, int, int]) -> tuple[int, int, int]:
    fast, slow, signal = spec
    return (slow, fast, signal) if fast > slow else (fast, slow, signal)  # TA-Lib swaps them


def _averages(spec: Spec) -> list[Average]:
    found: dict[Average, None] = {}
    for n in spec.ema:
        found[ema_average("price", n)] = None
    for n in spec.rsi:
        found[wilder_average("gain", n)] = None
        found[wilder_average("loss", n)] = None
    for triple in spec.macd:
        fast, slow, signal = macd_periods(triple)
        found[ema_average("price", slow)] = None
        found[ema_average("price", fast, slow - fast)] = None
        found[ema_average(f"macd:{fast},{slow}", signal, slow - 1)] = None
    for n in spec.atr:
        found[wilder_average("range", n, bars_only=True)] = None
    return list(found)


# ---------------------------------------------------------------------------------------------
# The state


# (indicators, series) arrays; the others are (series, ...)
_PER_INDICATOR = frozenset({"warm", "carry", "partial", "volume_sums", "block_carry", "block_partial"})


@dataclass
class _Arrays:
    """Per-series state, one row (or entry) per series code.

    The rings hold a series' last ``W`` prices and volumes, the value at series position ``t`` in
    slot ``t % W``, so a batch reads and writes only the slots its rows touch.
    """

    count: np.ndarray  # records seen
    prices: np.ndarray  # (series, W) ring of prices (bar closes)
    volumes: np.ndarray  # (series, Wv) ring of volumes, int64
    volume_sums: np.ndarray  # (volume windows, series): sum of the last n volumes, int64 (exact)
    block_carry: np.ndarray  # (long windows, series): the running sum of the current n-block (scan carry)
    block_partial: np.ndarray  # and its partial sum (see ScanLayout.scan)
    suffixes: np.ndarray  # (series, sum of long n): per long window, the last whole n-block's suffix sums
    warm: np.ndarray  # (averages, series): sum of inputs while warming up
    carry: np.ndarray  # (averages, series): the average before the last record's scan block
    partial: np.ndarray  # (averages, series): the block's running sum so far (see ScanLayout.scan)
    session: np.ndarray  # int64 session key of the last record, or _NO_SESSION
    session_rows: np.ndarray  # records of the series in its current session
    pv_carry: np.ndarray  # session sum of price * volume before the last record's block
    pv_partial: np.ndarray  # and the block's running sum so far
    volume: np.ndarray  # session volume, int64
    high: np.ndarray
    low: np.ndarray

    @classmethod
    def empty(cls, capacity: int, shape: _Shape) -> _Arrays:
        return cls(
            count=np.zeros(capacity, dtype=np.int64),
            prices=np.zeros((capacity, shape.ring)),
            volumes=np.zeros((capacity, shape.volume_ring), dtype=np.int64),
            volume_sums=np.zeros((shape.volume_windows, capacity), dtype=np.int64),
            block_carry=np.zeros((len(shape.long_windows), capacity)),
            block_partial=np.full((len(shape.long_windows), capacity), -0.0),
            suffixes=np.zeros((capacity, sum(shape.long_windows))),
            warm=np.zeros((shape.averages, capacity)),
            carry=np.zeros((shape.averages, capacity)),
            partial=np.full((shape.averages, capacity), -0.0),
            session=np.full(capacity, _NO_SESSION, dtype=np.int64),
            session_rows=np.zeros(capacity, dtype=np.int64),
            pv_carry=np.zeros(capacity),
            pv_partial=np.full(capacity, -0.0),
            volume=np.zeros(capacity, dtype=np.int64),
            high=np.full(capacity, -np.inf),
            low=np.full(capacity, np.inf),
        )

    def copy_into(self, fresh: _Arrays, used: int) -> _Arrays:
        for name, array in vars(self).items():
            target = getattr(fresh, name)
            if name in _PER_INDICATOR:
                target[:, :used] = array[:, :used]
            else:
                target[:used] = array[:used]
        return fresh

    def used(self, used: int) -> dict[str, np.ndarray]:
        return {
            name: (array[:, :used] if name in _PER_INDICATOR else array[:used])
            for name, array in vars(self).items()
        }


@dataclass(frozen=True)
class _Shape:
    ring: int
    long_windows: tuple[int, ...]  # windows summed in blocks of their own length (over _DIRECT_WINDOW)
    volume_ring: int
    volume_windows: int
    averages: int


@dataclass
class _Rows:
    """One batch's updating rows, grouped by series (sorted order)."""

    rows: np.ndarray  # original row numbers
    seg: np.ndarray  # segment number of each row
    series: np.ndarray  # series code of each segment
    lengths: np.ndarray
    starts: np.ndarray
    rank: np.ndarray  # row number inside its segment
    seen: np.ndarray  # per segment: records of the series before this batch
    is_bar: np.ndarray  # per segment
    layout: ScanLayout


@dataclass
class IndicatorState:
    """Streaming indicators for every series: ``add`` batches, ``snapshot``/``restore`` the state.

    Example: trade ingest --source sim | trade enrich --state enrich.state | trade screen
    """

    spec: Spec = field(default_factory=Spec)

    def __post_init__(self) -> None:
        self.averages = _averages(self.spec)
        # every SMA the output needs (Bollinger's middle band is one)
        self.windows = tuple(dict.fromkeys([*self.spec.sma, *(n for n, _ in self.spec.bbands)]))
        self.shape = _Shape(
            ring=max([*self.windows, 1]),
            long_windows=tuple(n for n in self.windows if n > _DIRECT_WINDOW),
            volume_ring=max([*self.spec.volume_avg, 1]),
            volume_windows=len(self.spec.volume_avg),
            averages=len(self.averages),
        )
        self.clock = SessionClock(self.spec.session_start, self.spec.timezone)
        self.columns = self.spec.columns()
        self._keys: list[tuple[int, str]] = []  # (kind, symbol) of each series code
        self._codes: dict[tuple[int, str], int] = {}
        self._state = _Arrays.empty(64, self.shape)
        self._lut_dictionary: pa.Array | None = None
        self._lut = np.empty(0, dtype=np.int64)

    # -- the talipp-like interface --------------------------------------------------------------
    @property
    def series(self) -> int:
        return len(self._keys)

    @property
    def symbols(self) -> int:
        return len({symbol for _, symbol in self._keys})

    def add(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch with its indicator columns; the state moves on past its records."""
        return self._enrich(batch)

    def snapshot(self) -> bytes:
        """The whole state as bytes (magic line, JSON header, numpy arrays)."""
        arrays = self._state.used(len(self._keys))
        header = {
            "version": SNAPSHOT_VERSION,
            "indicators": self.spec.indicators(),
            "shape": asdict(self.shape),
            "averages": [asdict(a) for a in self.averages],
            "kinds": [kind for kind, _ in self._keys],
            "symbols": [symbol for _, symbol in self._keys],
        }
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **arrays)
        head = json.dumps(header, separators=(",", ":")).encode()
        return SNAPSHOT_MAGIC + head + b"\n" + buffer.getvalue()

    def restore(self, data: bytes) -> None:
        """Continue from a snapshot. Raises ValueError if it is not one, or is for other indicators."""
        if not data.startswith(SNAPSHOT_MAGIC):
            raise ValueError("not an enrich state file")
        head, _, payload = data[len(SNAPSHOT_MAGIC) :].partition(b"\n")
        try:
            header = json.loads(head)
        except ValueError as err:
            raise ValueError("the state file's header is damaged") from err
        if header.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"state file version {header.get('version')} is not {SNAPSHOT_VERSION}")
        if header.get("indicators") != self.spec.indicators():
            raise ValueError("the state file was saved with other indicators or periods")
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
                loaded = {name: npz[name] for name in npz.files}
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError("the state file's arrays are damaged") from err
        kinds, symbols = header["kinds"], header["symbols"]
        used = len(symbols)
        if set(loaded) != set(vars(self._state)) or len(kinds) != used:
            raise ValueError("the state file's arrays are incomplete")
        state = _Arrays.empty(max(64, used), self.shape)
        try:
            for name, array in loaded.items():
                target = getattr(state, name)
                if name in _PER_INDICATOR:
                    target[:, :used] = array
                else:
                    target[:used] = array
        except ValueError as err:
            raise ValueError("the state file's arrays have the wrong shape") from err
        self._state = state
        self._keys = [(int(k), str(s)) for k, s in zip(kinds, symbols, strict=True)]
        self._codes = {key: i for i, key in enumerate(self._keys)}
        self._lut_dictionary = None

    # -- series codes ---------------------------------------------------------------------------
    def _series_codes(self, dictionary: pa.Array, indices: np.ndarray, is_bar: np.ndarray) -> np.ndarray:
        """A series code per row from the symbol dictionary index and the kind (trade/bar)."""
        size = len(dictionary)
        if self._lut_dictionary is None or not (
            dictionary is self._lut_dictionary or dictionary.equals(self._lut_dictionary)
        ):
            self._lut_dictionary = dictionary
            self._lut = np.full(2 * size, -1, dtype=np.int64)
        key = indices.astype(np.int64) + is_bar.astype(np.int64) * size
        codes = self._lut[key]
        if (codes < 0).any():
            names = dictionary.to_pylist()
            # the distinct new keys; np.unique would import numpy.ma (14 ms) on its first call
            for k in np.flatnonzero(np.bincount(key[codes < 0], minlength=2 * size)):
                kind, symbol = int(k // size), str(names[int(k % size)])
                code = self._codes.get((kind, symbol))
                if code is None:
                    code = len(self._keys)
                    self._keys.append((kind, symbol))
                    self._codes[(kind, symbol)] = code
                self._lut[k] = code
            capacity = self._state.count.shape[0]
            if len(self._keys) > capacity:
                fresh = _Arrays.empty(max(2 * capacity, len(self._keys)), self.shape)
                self._state = self._state.copy_into(fresh, capacity)
            codes = self._lut[key]
        out: np.ndarray = codes
        return out

    def _group(self, rows: np.ndarray, codes: np.ndarray, is_bar_row: np.ndarray) -> _Rows:
        n_series = len(self._keys)
        sortable = codes.astype(np.uint16) if n_series <= 65_536 else codes
        order = np.argsort(sortable, kind="stable")  # uint16: a radix sort
        per_series = np.bincount(codes, minlength=n_series)
        series = np.flatnonzero(per_series)
        lengths = per_series[series]
        starts = np.cumsum(lengths) - lengths
        return _Rows(
            rows=rows[order],
            seg=np.repeat(np.arange(series.size), lengths),
            series=series,
            lengths=lengths,
            starts=starts,
            rank=np.arange(rows.size) - np.repeat(starts, lengths),
            seen=self._state.count[series],
            is_bar=is_bar_row[order][starts],
            layout=ScanLayout(lengths, self._state.count[series]),
        )

    # -- one batch ------------------------------------------------------------------------------
    def _enrich(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        names = batch.schema.names
        if "type" not in names or batch.num_rows == 0:
            return batch
        kinds = _type_codes(batch.column("type"))
        if not (kinds > 0).any():
            return batch  # no market records: nothing to add
        n = batch.num_rows
        is_trade, is_quote, is_bar = kinds == TRADE, kinds == QUOTE, kinds == BAR
        price = _floats(batch, "price") if is_trade.any() else None
        close = _floats(batch, "close") if is_bar.any() else None
        updating = np.zeros(n, dtype=bool)
        if price is not None:
            updating |= is_trade & ~np.isnan(price)
        if close is not None:
            updating |= is_bar & ~np.isnan(close)
        symbol: pa.Array | None = batch.column("symbol") if "symbol" in names else None
        if symbol is None:
            updating[:] = False
        else:
            if not pa.types.is_dictionary(symbol.type):
                symbol = pc.dictionary_encode(symbol.cast(pa.string()))
            if symbol.null_count:
                updating &= np.asarray(symbol.is_valid())

        floats: dict[str, np.ndarray] = {}  # original row order, NaN = null
        day_volume: pa.Array | None = None
        bar_vwap = _bar_vwap(batch, is_bar)
        rows = np.flatnonzero(updating)
        if rows.size:
            assert symbol is not None
            indices = np.asarray(symbol.indices.to_numpy(zero_copy_only=False))[rows]
            codes = self._series_codes(symbol.dictionary, indices, is_bar[rows])
            group = self._group(rows, codes, is_bar[rows])
            values, volumes, commit = self._compute(batch, group, price, close, bar_vwap)
            if rows.size == n:  # every row updates: gather each column back through the inverse order
                inverse = np.empty(n, dtype=np.int64)
                inverse[group.rows] = np.arange(n)
                for name, column in values.items():
                    floats[name] = column[inverse]
                day_volume = from_numpy(volumes[inverse])
            else:
                for name, column in values.items():
                    full = np.full(n, np.nan)
                    full[group.rows] = column
                    floats[name] = full
                full_volume = np.zeros(n, dtype=np.int64)
                full_volume[group.rows] = volumes
                day_volume = from_numpy(full_volume, mask=~updating)
            commit()
            # elementwise columns need no grouping: computed in the batch's own row order
            own = price if close is None else close if price is None else np.where(is_bar, close, price)
            floats["gap_pct"] = np.where(updating, own / _floats(batch, "prev_close") - 1.0, np.nan)
            if spec_volume := self.spec.volume_avg:
                average = floats[f"avg_volume_{spec_volume[0]}"]
                volume, volume_ok = _ints(batch, "volume")
                with np.errstate(invalid="ignore", divide="ignore"):
                    floats["volume_ratio"] = np.where((average > 0) & volume_ok, volume / average, np.nan)
        if is_quote.any():
            bid, ask = _floats(batch, "bid"), _floats(batch, "ask")
            with np.errstate(invalid="ignore"):
                both = is_quote & (bid > 0) & (ask > 0)
            floats["mid"] = np.where(both, (bid + ask) / 2, np.nan)
            floats["spread"] = np.where(both, ask - bid, np.nan)

        new: dict[str, pa.Array] = {}
        for name in self.columns:
            if name == "day_volume":
                new[name] = day_volume if day_volume is not None else pa.nulls(n, I64)
            elif name in floats:
                values_ = np.ascontiguousarray(floats[name])
                new[name] = from_numpy(values_, mask=np.isnan(values_))
            else:
                new[name] = pa.nulls(n, F64)
        return _assemble(batch, new, updating | is_quote, bar_vwap)

    def _compute(
        self,
        batch: pa.RecordBatch,
        g: _Rows,
        price: np.ndarray | None,
        close: np.ndarray | None,
        bar_vwap: pa.Array | None,
    ) -> tuple[dict[str, np.ndarray], np.ndarray, Callable[[], None]]:
        """Every float indicator for the grouped rows (sorted order), day volume, and a commit."""
        st, spec = self._state, self.spec
        rows, lengths, starts = g.rows, g.lengths, g.starts
        total, segments = rows.size, lengths.size
        any_bar = bool(g.is_bar.any())
        bar_row = np.repeat(g.is_bar, lengths) if any_bar else None
        if close is None:
            assert price is not None
            x = price[rows]
        elif price is None:
            x = close[rows]
        else:
            x = np.where(np.repeat(g.is_bar, lengths), close[rows], price[rows])
        vol = _ints(batch, "volume")[0][rows]
        position = np.repeat(g.seen, lengths) + g.rank  # of each row in its series
        series_row = np.repeat(g.series, lengths)
        ring, volume_ring = self.shape.ring, self.shape.volume_ring

        def back(values: np.ndarray, saved: np.ndarray, size: int, width: int) -> np.ndarray:
            """The value ``width`` records before each row: from this batch, else from the ring
            (0 before the series' first record)."""
            out = np.empty(total, dtype=values.dtype)
            out[width:] = values[:-width]  # a plain shift is right for all but a segment's first rows
            early = np.flatnonzero(g.rank < width)
            out[early] = 0
            held = early[position[early] >= width]  # the ring has them (a young series has not)
            out[held] = saved[series_row[held], (position[held] - width) % size]
            return out

        prev = back(x, st.prices, ring, 1)  # the previous price of the series (from its second record)
        out: dict[str, np.ndarray] = {}

        # windowed sums: every row's window is summed afresh, its first values read from the ring
        smas: dict[int, np.ndarray] = {}
        long_commits: list[Callable[[], None]] = []
        for width in self.windows:
            if width > _DIRECT_WINDOW:
                sums, long_commit = self._long_sums(g, x, position, width)
                long_commits.append(long_commit)
            else:
                sums = self._windowed(g, x, width, window_sums, aligned=False)
            sma = sums / width
            sma[position < width - 1] = np.nan
            smas[width] = sma
        for width in spec.sma:
            out[f"sma_{width}"] = smas[width]
        volume_sums: list[np.ndarray] = []
        for i, width in enumerate(spec.volume_avg):
            change = vol - back(vol, st.volumes, volume_ring, width)
            volume_sums.append(seg_cumsum_int(change, lengths, st.volume_sums[i, g.series]))

        # the session: VWAP, and the day's range and volume
        stamps = _ints(batch, "timestamp")[0]
        # one session for the whole batch (the usual case) is found without sorting the stamps
        key = self.clock.single(stamps if total == stamps.size else stamps[rows])
        carried = st.session[g.series]
        if key is not None:
            epoch = np.repeat(np.maximum(carried, key), lengths)
            continues = carried >= key
            run_lengths, run_segment = lengths, np.arange(segments)
        else:
            keys = self.clock.keys(stamps[rows]).astype(np.float64)
            init = np.where(carried == _NO_SESSION, -np.inf, carried.astype(np.float64))
            epoch_f = g.layout.scan([keys], init[None, :], _MAX)[0][0]
            before = np.empty(total)
            before[1:] = epoch_f[:-1]
            before[starts] = init
            reset = epoch_f > before
            epoch = epoch_f.astype(np.int64)
            flags = reset.copy()
            flags[starts] = True
            run_first = np.flatnonzero(flags)
            run_lengths = np.diff(np.append(run_first, total))
            continues = (g.rank[run_first] == 0) & ~reset[run_first]
            run_segment = g.seg[run_first]
        run_series = g.series[run_segment]
        run_seen = np.where(continues, st.session_rows[run_series], 0)  # session records before the batch
        runs = ScanLayout(run_lengths, run_seen)  # blocks at fixed places in the session
        if any_bar:
            assert bar_row is not None
            high = np.where(bar_row, _floats(batch, "high")[rows], x)
            low = np.where(bar_row, _floats(batch, "low")[rows], x)
            typical = (high + low + x) / 3
            own = bar_vwap.to_numpy(zero_copy_only=False)[rows] if bar_vwap is not None else typical
            vwap_price = np.where(bar_row, np.where(np.isnan(own), typical, own), x)
        else:
            high = low = vwap_price = x
        (cum_pv,), pv_carry, pv_partial = runs.scan(
            [vwap_price * vol],
            np.where(continues, st.pv_carry[run_series], 0.0)[None, :],
            _LINEAR,
            partial=st.pv_partial[run_series][None, :],
        )
        # the day's low is minus the highest of minus the lows; + 0.0 makes every zero +0.0, so
        # which of two equal extremes wins never shows
        extremes, extremes_end, _ = runs.scan(
            [high + 0.0, -low + 0.0],
            np.stack(
                [
                    np.where(continues, st.high[run_series], -np.inf),
                    -np.where(continues, st.low[run_series], np.inf) + 0.0,
                ]
            ),
            _MAX,
        )
        day_high, day_low = extremes[0], -extremes[1] + 0.0
        cum_v = seg_cumsum_int(vol, run_lengths, np.where(continues, st.volume[run_series], 0))
        with np.errstate(invalid="ignore", divide="ignore"):
            out["vwap"] = np.where(cum_v > 0, cum_pv / cum_v, np.nan)

        # exponential averages, those of prices first, then the MACD signal lines built on them
        sources: dict[str, np.ndarray] = {"price": x}
        if any(avg.source in ("gain", "loss") for avg in self.averages):
            change = x - prev
            sources["gain"] = np.maximum(change, 0.0) + 0.0
            sources["loss"] = np.maximum(-change, 0.0) + 0.0
        if any(avg.source == "range" for avg in self.averages):
            sources["range"] = np.maximum(high - low, np.maximum(np.abs(high - prev), np.abs(low - prev)))
        averaged: dict[Average, np.ndarray] = {}
        new_warm = st.warm[:, g.series].copy()
        new_carry = st.carry[:, g.series].copy()
        new_partial = st.partial[:, g.series].copy()
        first_stage = [i for i, avg in enumerate(self.averages) if not avg.source.startswith("macd:")]
        second_stage = [i for i, avg in enumerate(self.averages) if avg.source.startswith("macd:")]
        state = (new_warm, new_carry, new_partial)
        self._averages(g, first_stage, sources, position, bar_row, averaged, state)
        for i in second_stage:
            fast, slow = (int(p) for p in self.averages[i].source.split(":")[1].split(","))
            line = averaged[ema_average("price", fast, slow - fast)] - averaged[ema_average("price", slow)]
            sources[self.averages[i].source] = line
        self._averages(g, second_stage, sources, position, bar_row, averaged, state)

        for width in spec.ema:
            out[f"ema_{width}"] = averaged[ema_average("price", width)]
        for width in spec.rsi:
            gain, loss = averaged[wilder_average("gain", width)], averaged[wilder_average("loss", width)]
            both = gain + loss
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f"rsi_{width}"] = np.where(both == 0, 0.0, 100.0 * gain / both)
            out[f"rsi_{width}"][np.isnan(both)] = np.nan
        for triple in spec.macd:
            fast, slow, signal = macd_periods(triple)
            line = sources[f"macd:{fast},{slow}"]
            sig = averaged[ema_average(f"macd:{fast},{slow}", signal, slow - 1)]
            suffix = "_".join(map(str, triple))
            out[f"macd_{suffix}"] = np.where(np.isnan(sig), np.nan, line)
            out[f"macd_signal_{suffix}"] = sig
            out[f"macd_hist_{suffix}"] = line - sig
        for width, k in spec.bbands:
            middle = smas[width]
            variance = self._windowed(g, x, width, window_variance, aligned=True)
            variance[position < width - 1] = np.nan
            std = np.sqrt(variance)
            suffix = f"{width}_{format_number(k)}"
            out[f"bb_upper_{suffix}"] = middle + k * std
            out[f"bb_middle_{suffix}"] = middle
            out[f"bb_lower_{suffix}"] = middle - k * std
        for width in spec.atr:
            out[f"atr_{width}"] = averaged[wilder_average("range", width, bars_only=True)]

        for i, width in enumerate(spec.volume_avg):
            average = volume_sums[i] / width
            if int(g.seen.min()) < width - 1:
                average[position < width - 1] = np.nan
            out[f"avg_volume_{width}"] = average
        out["day_high"] = day_high
        out["day_low"] = day_low

        last = starts + lengths - 1  # a segment's last session run ends at its last row
        last_run = np.flatnonzero(np.append(run_segment[1:] != run_segment[:-1], True))
        kept = np.flatnonzero(g.rank >= np.repeat(lengths - ring, lengths))  # rows that stay in the ring
        kept_volume = np.flatnonzero(g.rank >= np.repeat(lengths - volume_ring, lengths))
        new_volume_sums = np.array([sums[last] for sums in volume_sums])

        def commit() -> None:
            series = g.series
            for long_commit in long_commits:
                long_commit()
            st.count[series] += lengths
            st.prices[series_row[kept], position[kept] % ring] = x[kept]
            st.volumes[series_row[kept_volume], position[kept_volume] % volume_ring] = vol[kept_volume]
            if spec.volume_avg:
                st.volume_sums[:, series] = new_volume_sums
            st.warm[:, series] = new_warm
            st.carry[:, series] = new_carry
            st.partial[:, series] = new_partial
            st.session[series] = epoch[last]
            st.session_rows[series] = (run_seen + run_lengths)[last_run]
            st.pv_carry[series] = pv_carry[0, last_run]
            st.pv_partial[series] = pv_partial[0, last_run]
            st.volume[series] = cum_v[last]
            st.high[series] = extremes_end[0, last_run]
            st.low[series] = -extremes_end[1, last_run] + 0.0

        return out, cum_v, commit

    def _long_sums(
        self, g: _Rows, x: np.ndarray, position: np.ndarray, width: int
    ) -> tuple[np.ndarray, Callable[[], None]]:
        """Sums of long windows in van Herk blocks of ``width`` at fixed series positions.

        A window ending at ``p`` is the suffix sum of the block before ``p``'s (from the window's
        first value to that block's end) plus the prefix sum of ``p``'s block: two numbers a row.
        Prefix sums run as a scan per block (its carry kept in the state when a batch ends inside
        the block); a block's suffix sums are computed once, when its last value arrives, and the
        last whole block's are kept in the state. So each row costs O(1), not O(width), whatever
        the batches, and the sums are the same to the last bit.
        """
        st, ring = self._state, self.shape.ring
        j = self.shape.long_windows.index(width)
        offset = sum(self.shape.long_windows[:j])
        lengths, seen, series, total = g.lengths, g.seen, g.series, x.size
        step = position % width
        # prefix sums: one scan piece per segment and block
        flags = step == 0
        flags[g.starts] = True
        piece_first = np.flatnonzero(flags)
        piece_lengths = np.diff(np.append(piece_first, total))
        piece_series = series[g.seg[piece_first]]
        fresh = step[piece_first] == 0
        (prefix,), carry_end, partial_end = ScanLayout(piece_lengths, step[piece_first]).scan(
            [x],
            np.where(fresh, 0.0, st.block_carry[j, piece_series])[None, :],
            _LINEAR,
            partial=st.block_partial[j, piece_series][None, :],
        )
        # suffix sums of the blocks whose last value is in this batch, from the block's end
        closing = np.flatnonzero(step == width - 1)
        if closing.size:
            segment = g.seg[closing]
            at = (position[closing] - (width - 1))[:, None] + np.arange(width)
            here = at >= seen[segment, None]
            values = np.empty(at.shape)
            rows = (g.starts[segment] - seen[segment])[:, None] + at
            values[here] = x[rows[here]]
            held = (series[segment, None] * ring + at % ring)[~here]
            values[~here] = np.take(st.prices.reshape(-1), held)
            suffix = np.cumsum(values[:, ::-1], axis=1)[:, ::-1]  # accumulate is sequential
        # each row's window: the suffix part, then the prefix part
        out = np.full(total, np.nan)
        first = position - (width - 1)
        whole = np.flatnonzero((first >= 0) & (first % width == 0))
        out[whole] = prefix[whole]
        split = np.flatnonzero((first >= 0) & (first % width != 0))
        if split.size:
            segment = g.seg[split]
            before = position[split] // width - 1  # the block that holds the window's first value
            first_block = seen[segment] // width
            kept = before < first_block  # whole before this batch: its suffix sums are in the state
            tail = np.empty(split.size)
            tail[kept] = st.suffixes[series[segment[kept]], offset + first[split[kept]] % width]
            new = np.flatnonzero(~kept)
            if new.size:
                per_segment = np.bincount(g.seg[closing], minlength=lengths.size)
                done_before = np.cumsum(per_segment) - per_segment
                index = done_before[segment[new]] + before[new] - first_block[new]
                tail[new] = suffix[index, first[split[new]] % width]
            out[split] = tail + prefix[split]
        last_piece = np.flatnonzero(np.append(g.seg[piece_first][1:] != g.seg[piece_first][:-1], True))

        def commit() -> None:
            st.block_carry[j, series] = carry_end[0, last_piece]
            st.block_partial[j, series] = partial_end[0, last_piece]
            if closing.size:
                last_closing = np.flatnonzero(np.append(g.seg[closing][1:] != g.seg[closing][:-1], True))
                owners = series[g.seg[closing[last_closing]]]
                st.suffixes[owners, offset : offset + width] = suffix[last_closing]

        return out, commit

    def _windowed(
        self,
        g: _Rows,
        x: np.ndarray,
        width: int,
        kernel: Callable[[np.ndarray, np.ndarray, int], np.ndarray],
        aligned: bool,
    ) -> np.ndarray:
        """``kernel(flat, ends, width)`` over the last ``width`` prices of every row's series.

        Per segment, a flat array holds the series' ``width - 1`` previous prices (from its ring)
        and then the new ones, so a window is summed from its own values whatever the batch.
        ``aligned`` pads each segment so that blocks of ``width`` start at series positions that
        are multiples of ``width``, the same blocks however the stream is cut. Segments go in
        groups, so a long window over many symbols never builds one huge array.
        """
        st, ring, history = self._state, self.shape.ring, width - 1
        lengths, seen = g.lengths, g.seen
        lead = (seen - history) % width if aligned else np.zeros(lengths.size, dtype=np.int64)
        span = lead + history + lengths
        if aligned:
            span = -(-span // width) * width
        out = np.empty(x.size)
        reach = np.cumsum(span)
        first = 0
        while first < lengths.size:
            room = reach[first] - span[first] + _FLAT_LIMIT
            stop = max(first + 1, int(np.searchsorted(reach, room, "right")))
            part = slice(first, stop)
            base = np.cumsum(span[part]) - span[part]
            lo, hi = int(g.starts[first]), int(g.starts[stop - 1] + lengths[stop - 1])
            flat = np.zeros(int(span[part].sum()))
            offset = base + lead[part] + history - (g.starts[part] - lo)
            at = np.repeat(offset, lengths[part]) + np.arange(hi - lo)
            flat[at] = x[lo:hi]
            if history:
                steps = np.arange(history)
                before = seen[part, None] - history + steps
                held = np.take(st.prices.reshape(-1), (g.series[part] * ring)[:, None] + before % ring)
                if int(seen[part].min()) < history:
                    held[before < 0] = 0.0  # before the series' first record
                flat[((base + lead[part])[:, None] + steps).reshape(-1)] = held.reshape(-1)
            out[lo:hi] = kernel(flat, at, width)
            first = stop
        return out

    def _averages(
        self,
        g: _Rows,
        chosen: list[int],
        sources: dict[str, np.ndarray],
        position: np.ndarray,
        bar_row: np.ndarray | None,
        averaged: dict[Average, np.ndarray],
        state: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> None:
        """Scan the chosen averages together; results land in ``averaged``, the state in ``state``.

        Every row of a series is in the scan, those before the seed as -0.0 (adding nothing), so
        every average of a series shares its blocks and one call scans them all.
        """
        if not chosen:
            return
        warm, carry, partial = state
        lengths, seen = g.lengths, g.seen
        inputs: list[np.ndarray] = []
        silent: list[np.ndarray] = []  # rows without a value yet
        for i in chosen:
            avg = self.averages[i]
            source = sources[avg.source]
            seed_at = avg.start + avg.period - 1  # the series position of the seed
            before_seed = position < seed_at
            if avg.bars_only:
                before_seed = before_seed | (~bar_row if bar_row is not None else True)
            if bool(((seen <= seed_at) & (seen + lengths > avg.start)).any()):
                # the seed's sum, added one value at a time in stream order (np.add.at is sequential)
                warming = (position >= avg.start) & (position <= seed_at)
                if avg.bars_only:
                    warming &= bar_row if bar_row is not None else False
                np.add.at(warm[i], g.seg[warming], source[warming])
            values = source * avg.weight
            values[before_seed] = -0.0
            seeds = np.flatnonzero((position == seed_at) & ~before_seed)
            values[seeds] = warm[i, g.seg[seeds]] / avg.period
            inputs.append(values)
            silent.append(before_seed)
        decay = np.array([self.averages[i].decay for i in chosen])
        result, carry_out, partial_out = g.layout.scan(inputs, carry[chosen], _LINEAR, decay, partial[chosen])
        carry[chosen], partial[chosen] = carry_out, partial_out
        for c, i in enumerate(chosen):
            values = result[c]
            values[silent[c]] = np.nan
            averaged[self.averages[i]] = values


# ---------------------------------------------------------------------------------------------
# Columns in and out


def _type_codes(column: pa.Array) -> np.ndarray:
    """0 (other), TRADE, QUOTE or BAR per row."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column.cast(pa.string()))
    lookup = np.array([_TYPE_CODES.get(v, 0) for v in column.dictionary.to_pylist()] + [0], dtype=np.int8)
    indices = column.indices
    if indices.null_count:
        indices = indices.fill_null(len(lookup) - 1)
    out: np.ndarray = lookup[np.asarray(indices.to_numpy(zero_copy_only=False))]
    return out


def _floats(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """A column as float64 with NaN for nulls (all NaN if absent)."""
    index = batch.schema.get_field_index(name)
    if index < 0:
        return np.full(batch.num_rows, np.nan)
    column = batch.column(index)
    if column.type != F64:
        try:
            column = column.cast(F64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return np.full(batch.num_rows, np.nan)
    out: np.ndarray = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
    return out


def _ints(batch: pa.RecordBatch, name: str) -> tuple[np.ndarray, np.ndarray]:
    """An integer (or timestamp) column as int64 with 0 for nulls, and where it was valid."""
    index = batch.schema.get_field_index(name)
    n = batch.num_rows
    if index < 0:
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    column = batch.column(index)
    if pa.types.is_timestamp(column.type):
        if column.type.unit != "ns":
            column = column.cast(pa.timestamp("ns", tz=column.type.tz))
        column = column.view(pa.int64())  # ns since the epoch, without a copy
    elif column.type != I64:
        try:
            column = column.cast(I64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    valid = np.ones(n, dtype=bool) if column.null_count == 0 else np.asarray(column.is_valid())
    if column.null_count:
        column = column.fill_null(0)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.int64), valid


def _bar_vwap(batch: pa.RecordBatch, is_bar: np.ndarray) -> pa.Array | None:
    """The bars' own VWAP column (``bar_vwap``, else a bar's provider ``vwap``), or None.

    Decided by the columns, not the rows, so a stream keeps one schema from batch to batch.
    """
    names = batch.schema.names
    if "bar_vwap" in names:
        column = batch.column("bar_vwap")
        return column if column.type == F64 else column.cast(F64)
    if "vwap" not in names:
        return None
    if not is_bar.any():
        return pa.nulls(batch.num_rows, F64)
    vwap = batch.column("vwap")
    vwap = vwap if vwap.type == F64 else vwap.cast(F64)
    return pc.if_else(from_numpy(is_bar), vwap, pa.nulls(batch.num_rows, F64))


def _assemble(
    batch: pa.RecordBatch, new: dict[str, pa.Array], owned: np.ndarray, bar_vwap: pa.Array | None
) -> pa.RecordBatch:
    """Input columns first (a bar's provider vwap kept as bar_vwap), then the indicator columns.

    An indicator column that the input already had (enriched twice) is replaced on the rows
    enrich computes and kept on the others.
    """
    columns = list(batch.columns)
    names = list(batch.schema.names)
    if bar_vwap is not None:
        if "bar_vwap" in names:
            columns[names.index("bar_vwap")] = bar_vwap
        else:
            names.append("bar_vwap")
            columns.append(bar_vwap)
    owned_arrow: pa.Array | None = None
    for name, column in new.items():
        if name not in names:
            names.append(name)
            columns.append(column)
            continue
        i = names.index(name)
        if owned_arrow is None:
            owned_arrow = from_numpy(owned)
        try:
            columns[i] = pc.if_else(owned_arrow, column, columns[i].cast(column.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            columns[i] = column
    return pa.record_batch(columns, names=names)
