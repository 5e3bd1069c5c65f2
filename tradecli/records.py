"""The records of DESIGN.md section 2: field types, and the checks every reader applies.

One flat record per event. Known fields have one Arrow type each, whatever the record type, so
batches of trades, quotes and signals can share columns; a field we do not know passes through
with the type the reader inferred. Readers call :func:`normalise` on every batch: it casts known
fields, turns every accepted timestamp spelling into ns since the epoch, fills in a missing
``type`` where the fields make it obvious, and splits off the rows that break a rule, each with
a reason that names the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

WIRE_VERSION = "1"

DICT_STRING = pa.dictionary(pa.int32(), pa.string())
TIMESTAMP = pa.timestamp("ns", tz="UTC")
F64 = pa.float64()
I64 = pa.int64()
STR = pa.string()

# Every field name with a fixed meaning. Quantities of shares are whole numbers; prices are doubles.
FIELD_TYPES: dict[str, pa.DataType] = {
    # common to all records
    "type": DICT_STRING,
    "symbol": DICT_STRING,
    "timestamp": TIMESTAMP,
    "recv_ts": TIMESTAMP,
    "source": DICT_STRING,
    "prev_close": F64,
    # trade
    "price": F64,
    "volume": I64,
    "exchange": I64,
    "conditions": pa.list_(I64),
    "trade_id": STR,
    # quote
    "bid": F64,
    "ask": F64,
    "bid_size": I64,
    "ask_size": I64,
    "bid_exchange": I64,
    "ask_exchange": I64,
    # bar
    "open": F64,
    "high": F64,
    "low": F64,
    "close": F64,
    "vwap": F64,
    "trades": I64,
    "end_ts": TIMESTAMP,
    # enrich (the indicator columns named by period, sma_20 and the like, are float64 too)
    "bar_vwap": F64,
    "gap_pct": F64,
    "volume_ratio": F64,
    "day_high": F64,
    "day_low": F64,
    "day_volume": I64,
    "mid": F64,
    "spread": F64,
    # signal (screen)
    "strategy": STR,
    "side": STR,
    "signal_type": STR,
    "confidence": F64,
    "entry_price": F64,
    "stop_loss": F64,
    "target": F64,
    "rr_ratio": F64,
    "message": STR,
    # alert receipt (alert)
    "alert_id": STR,
    "channel": STR,
    "status": STR,
    "attempts": I64,
    "latency_ms": F64,
    "error": STR,
    "signal_ts": TIMESTAMP,
    # store receipt (store --receipts)
    "first_ts": TIMESTAMP,
    "last_ts": TIMESTAMP,
}

TIMESTAMP_FIELDS = frozenset(k for k, t in FIELD_TYPES.items() if t == TIMESTAMP)
MARKET_TYPES = ("trade", "quote", "bar")

# Plausible event times: 1971-01-01 .. 2200-01-01 in ns. A year-3000 stamp is a data error.
MIN_TS_NS = 31_536_000 * 10**9
MAX_TS_NS = 7_258_118_400 * 10**9


def from_numpy(
    values: np.ndarray, mask: np.ndarray | None = None, type: pa.DataType | None = None
) -> pa.Array:
    """A numeric or boolean numpy array as an Arrow array, zero-copy where possible.

    ``pa.array(ndarray)`` probes for pandas on every call, and importing pandas (when installed)
    adds a quarter of a second to a stage's start-up; building from buffers skips the probe.
    ``mask`` marks nulls, as in ``pa.array``.
    """
    values = np.ascontiguousarray(values)
    if values.dtype == np.bool_:
        data = pa.py_buffer(np.packbits(values, bitorder="little"))
        arrow_type = type or pa.bool_()
    else:
        data = pa.py_buffer(values)
        arrow_type = type or pa.from_numpy_dtype(values.dtype)
    validity = None
    null_count = 0
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        null_count = int(mask.sum())
        if null_count:
            validity = pa.py_buffer(np.packbits(~mask, bitorder="little"))
    return pa.Array.from_buffers(arrow_type, len(values), [validity, data], null_count=null_count)


def to_numpy(arr: pa.Array | pa.ChunkedArray, fill: float | int | None = None) -> np.ndarray:
    """Values of a numeric column as numpy (nulls as ``fill``, else NaN for floats)."""
    if fill is not None and arr.null_count:
        arr = arr.fill_null(fill)
    return np.asarray(arr.to_numpy(zero_copy_only=False))


@dataclass(frozen=True)
class Reject:
    """One rejected row: where it was, which field, and why."""

    row: int
    reason: str
    field: str | None = None


def describe(value: Any) -> str:
    """Render an offending value for an error message: short, quoted when text."""
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return '"' + text.replace('"', '\\"') + '"'
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def field_error(field: str, value: Any, expected: str) -> str:
    return f"field '{field}' is {describe(value)}, expected {expected}"


# ---------------------------------------------------------------------------------------------
# Coercion of one column to its canonical type


def _expected(target: pa.DataType) -> str:
    if pa.types.is_floating(target):
        return "a number"
    if pa.types.is_integer(target):
        return "a whole number"
    if pa.types.is_list(target):
        return "a list of whole numbers"
    if target == TIMESTAMP:
        return "a time between 1971 and 2200 (ns, us, ms or s since the epoch, or ISO-8601)"
    return "text"


_INTEGER = re.compile(r"[+-]?\d+")
_BRACKETS = re.compile(r"^\[|\]$")
_LIST_SEPARATORS = re.compile(r"[,\s]+")


def _text_lists(text: pa.Array, target: pa.DataType) -> tuple[pa.Array, dict[int, Any]]:
    """Lists written as text (a CSV cell: ``12,37``, ``37``, ``[12, 37]``, ``[12 37]``, empty),
    split and cast a column at a time; a row with an element that is not a number is reported."""
    trimmed = pc.utf8_trim_whitespace(text)
    inner = pc.utf8_trim_whitespace(pc.replace_substring_regex(trimmed, r"^\[|\]$", ""))
    parts = pc.split_pattern_regex(inner, r"[,\s]+")
    flat = pc.list_flatten(parts)
    parents = np.asarray(pc.list_parent_indices(parts))
    keep = np.asarray(pc.not_equal(flat, "").fill_null(False))
    elements, owners = flat.filter(pa.array(keep)), parents[keep]
    numeric = np.asarray(pc.match_substring_regex(elements, r"^[+-]?\d+(\.0*)?$"))
    if not pa.types.is_integer(target.value_type) or not numeric.all():
        # other element types, and rows to report: one by one
        return coerce_values(text.to_pylist(), target)
    try:
        values = pc.cast(pc.replace_substring_regex(elements, r"\.0*$", ""), target.value_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # out of the type's range
        return coerce_values(text.to_pylist(), target)
    counts = np.bincount(owners, minlength=len(text))
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int32)
    mask = pa.array(~np.asarray(text.is_valid()))
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=mask).cast(target), {}


def _whole(value: Any) -> int:
    """A whole number from an int, a whole float or text; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if _INTEGER.fullmatch(text):
            return int(text)  # every digit: float() would round past 2**53
        number = float(text)
        if number.is_integer():
            return int(number)
    raise ValueError


def _coerce_scalar(value: Any, target: pa.DataType) -> Any:
    """Python-level conversion for the rare values the vectorised cast refused. Raises ValueError."""
    if value is None:
        return None
    if pa.types.is_floating(target):
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise ValueError
    if pa.types.is_integer(target):
        whole = _whole(value)
        if not -(2**63) <= whole < 2**63:
            raise ValueError
        return whole
    if pa.types.is_list(target):
        if isinstance(value, str):  # a list written as text in a CSV cell: "12,37", "[12 37]"
            value = [part for part in _LIST_SEPARATORS.split(_BRACKETS.sub("", value.strip())) if part]
        if not isinstance(value, list):
            raise ValueError
        return [_coerce_scalar(v, target.value_type) for v in value]
    if pa.types.is_string(target) or pa.types.is_dictionary(target):
        if isinstance(value, str):
            return value
        # ids may arrive as numbers (Alpaca's trade ids); names (type, symbol, source) may not
        if pa.types.is_string(target) and isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError
    raise ValueError


def coerce_values(values: Sequence[Any], target: pa.DataType) -> tuple[pa.Array, dict[int, Any]]:
    """Convert Python values one by one; returns the array and {row: bad value} for failures."""
    out: list[Any] = []
    bad: dict[int, Any] = {}
    for i, value in enumerate(values):
        try:
            out.append(_coerce_scalar(value, target))
        except (ValueError, TypeError, OverflowError):
            out.append(None)
            bad[i] = value
    value_type = STR if pa.types.is_dictionary(target) else target
    return pa.array(out, type=value_type), bad


def _to_timestamp(arr: pa.Array) -> tuple[pa.Array, dict[int, Any]]:
    """Any accepted spelling of a time to timestamp[ns, UTC].

    Integers are read by magnitude (s, ms, us or ns since the epoch), floats as seconds, text as
    ISO-8601 (a missing offset means UTC). Values that fit none of these are reported as bad.
    """
    t = arr.type
    if pa.types.is_timestamp(t):
        return arr.cast(TIMESTAMP), {}  # a naive timestamp is read as UTC
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        values = np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.float64)
        mag = np.abs(values)
        scale = np.where(mag < 1e11, 1e9, np.where(mag < 1e14, 1e6, np.where(mag < 1e17, 1e3, 1.0)))
        if pa.types.is_integer(t):
            ints = np.asarray(arr.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
            ns = ints * scale.astype(np.int64)
            # ns-scale ints keep every digit; scaling smaller units is exact in int64 as well
            overflow = (scale > 1) & (mag >= 9.2e18 / np.maximum(scale, 1))
        else:
            finite = np.isfinite(values)
            with np.errstate(invalid="ignore", over="ignore"):
                scaled = np.where(finite, values * scale, 0.0)
            overflow = ~finite | (np.abs(scaled) >= 9.2e18)
            ns = np.where(overflow, 0, scaled).astype(np.int64)
        bad_rows = np.flatnonzero(overflow & np.asarray(arr.is_valid()))
        out = from_numpy(ns, mask=~np.asarray(arr.is_valid()) | overflow)
        bad = {int(i): arr[int(i)].as_py() for i in bad_rows}
        return out.cast(TIMESTAMP), bad
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        text = arr.cast(STR) if not pa.types.is_string(t) else arr
        digits = pc.utf8_trim_whitespace(text)
        if pc.all(pc.match_substring_regex(digits, r"^[+-]?\d+$")).as_py() is not False:
            with suppress(pa.ArrowInvalid):  # epoch numbers as text (a CSV): every digit kept
                return _to_timestamp(pc.cast(digits, pa.int64()))
        for zone_type in (TIMESTAMP, pa.timestamp("ns")):  # with an offset, then naive (= UTC)
            try:
                return pc.cast(text, zone_type).cast(TIMESTAMP), {}
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        values = text.to_pylist()
        out_values: list[int | None] = []
        bad_map: dict[int, Any] = {}
        for i, value in enumerate(values):
            parsed = _parse_time_text(value)
            if parsed is None and value is not None:
                bad_map[i] = value
            out_values.append(parsed)
        return pa.array(out_values, type=pa.int64()).cast(TIMESTAMP), bad_map
    values = arr.to_pylist()
    return pa.nulls(len(arr), TIMESTAMP), {i: v for i, v in enumerate(values) if v is not None}


def _parse_time_text(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    try:
        number: int | float = int(text) if _INTEGER.fullmatch(text) else float(text)
    except ValueError:
        pass
    else:
        if isinstance(number, float) and number.is_integer():
            number = int(number)
        if isinstance(number, int) and not -(2**63) <= number < 2**63:
            return None
        arr, bad = _to_timestamp(pa.array([number]))
        return None if bad else arr.cast(pa.int64())[0].as_py()  # type: ignore[no-any-return]
    for candidate in (text, text.replace(" ", "T", 1)):
        try:
            scalar = pc.cast(pa.array([candidate]), TIMESTAMP)
            return scalar.cast(pa.int64())[0].as_py()  # type: ignore[no-any-return]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        try:
            naive = pc.cast(pa.array([candidate]), pa.timestamp("ns"))
            return naive.cast(pa.int64())[0].as_py()  # type: ignore[no-any-return]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return None


def coerce_column(arr: pa.Array, target: pa.DataType) -> tuple[pa.Array, dict[int, Any]]:
    """Cast one column to its canonical type, vectorised; values that cannot be cast are reported.

    Returns the converted column (bad values nulled) and {row: original value} of the failures.
    """
    if arr.type == target:
        return arr, {}
    if pa.types.is_boolean(arr.type) and target != STR:  # Arrow would cast true to 1.0
        out, bad = coerce_values(arr.to_pylist(), target)
        return (pc.dictionary_encode(out).cast(target) if pa.types.is_dictionary(target) else out), bad
    if target == TIMESTAMP:
        return _to_timestamp(arr)
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), target), {}
    if pa.types.is_list(target) and (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return _text_lists(arr.cast(STR), target)
    if pa.types.is_dictionary(target):
        if pa.types.is_dictionary(arr.type) and pa.types.is_string(arr.type.value_type):
            return arr.cast(target), {}
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            return pc.dictionary_encode(arr.cast(STR)).cast(target), {}
    elif pa.types.is_integer(target) and pa.types.is_floating(arr.type):
        values = arr.to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(values) & (np.floor(values) == values) & (np.abs(values) < 9e18)
        valid = np.asarray(arr.is_valid())
        if bool(np.all(whole | ~valid)):
            return from_numpy(np.where(whole, values, 0).astype(np.int64), mask=~valid), {}
    else:
        try:
            return arr.cast(target), {}
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
    out, bad = coerce_values(arr.to_pylist(), target)
    if pa.types.is_dictionary(target):
        out = pc.dictionary_encode(out).cast(target)
    return out, bad


# ---------------------------------------------------------------------------------------------
# Validation and normalisation of a whole batch


def _infer_type(batch: pa.RecordBatch) -> pa.Array:
    """A record without ``type`` is a trade if it has a price, a quote if bid/ask, a bar if OHLC."""
    n = batch.num_rows
    names = set(batch.schema.names)
    out = np.full(n, None, dtype=object)

    def has(field: str) -> np.ndarray:
        if field not in names:
            return np.zeros(n, dtype=bool)
        return np.asarray(batch.column(field).is_valid())

    out[has("close") & has("open")] = "bar"
    out[(has("bid") | has("ask")) & (out == None)] = "quote"  # noqa: E711 - elementwise
    out[has("price") & (out == None)] = "trade"  # noqa: E711
    return pa.array(out, type=STR)


def _column(batch: pa.RecordBatch, name: str) -> pa.Array | None:
    index = batch.schema.get_field_index(name)
    return None if index < 0 else batch.column(index)


_NUMPY = {pa.float64(): np.float64, pa.int64(): np.int64, TIMESTAMP: np.int64, pa.int32(): np.int32}


def _values(col: pa.Array) -> np.ndarray:
    """The values of a primitive column as a zero-copy numpy view (null slots hold anything)."""
    dtype = np.dtype(_NUMPY[col.type])
    return np.frombuffer(col.buffers()[1], dtype=dtype, count=len(col), offset=col.offset * dtype.itemsize)


class _Checks:
    """The validation rules over one normalised batch, vectorised; each failure becomes a Reject.

    ``rows`` arguments are boolean masks (None = every row). Only rows that fail are looked at
    one by one, to word their messages.
    """

    def __init__(self, batch: pa.RecordBatch, rejects: dict[int, Reject]) -> None:
        self.batch = batch
        self.rejects = rejects
        self.n = batch.num_rows

    def reject(self, mask: np.ndarray, field: str, reason_for: Any) -> None:
        for i in np.flatnonzero(mask):
            row = int(i)
            if row not in self.rejects:
                self.rejects[row] = Reject(row, reason_for(row), field)

    @staticmethod
    def _within(mask: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        return mask if rows is None else mask & rows

    def required(self, fields: Sequence[str], rows: np.ndarray | None, kind: str) -> None:
        for field in fields:
            col = _column(self.batch, field)
            if col is not None and col.null_count == 0:
                continue
            missing = np.ones(self.n, dtype=bool) if col is None else ~np.asarray(col.is_valid())
            missing = self._within(missing, rows)
            if missing.any():
                self.reject(
                    missing, field, lambda r, f=field: f"field '{f}' is missing ({kind} records need it)"
                )

    def numbers(self, fields: Sequence[str], rows: np.ndarray | None, *, minimum: str) -> None:
        """Finite and > 0 (``minimum="positive"``), finite and >= 0 ("zero"), or just >= 0 ("count")."""
        for field in fields:
            col = _column(self.batch, field)
            if col is None or col.null_count == len(col) or col.type not in _NUMPY:
                continue
            values = _values(col)
            with np.errstate(invalid="ignore"):
                if minimum == "positive":
                    ok = np.isfinite(values) & (values > 0)
                elif minimum == "zero":
                    ok = np.isfinite(values) & (values >= 0)
                else:
                    ok = values >= 0
            bad = ~ok
            if col.null_count:
                bad &= np.asarray(col.is_valid())
            bad = self._within(bad, rows)
            if bad.any():
                expected = {
                    "positive": "a finite positive number",
                    "zero": "a finite number >= 0",
                    "count": "a number >= 0",
                }[minimum]
                self.reject(bad, field, lambda r, c=col, f=field, e=expected: field_error(f, c[r].as_py(), e))

    def times(self) -> None:
        for field in TIMESTAMP_FIELDS:
            col = _column(self.batch, field)
            if col is None or col.null_count == len(col):
                continue
            ns = _values(col)
            bad = (ns < MIN_TS_NS) | (ns >= MAX_TS_NS)
            if col.null_count:
                bad &= np.asarray(col.is_valid())
            if bad.any():
                self.reject(
                    bad,
                    field,
                    lambda r, c=col, f=field: (
                        f"field '{f}' is {_render_ts(c, r)}, expected a time between 1971 and 2200"
                    ),
                )

    def type_masks(self) -> dict[str, np.ndarray]:
        """One row mask per record type, from the dictionary codes (no per-row strings)."""
        col = self.batch.column("type")
        if col.null_count:
            self.reject(
                ~np.asarray(col.is_valid()),
                "type",
                lambda r: "field 'type' is missing and the fields do not say which record this is",
            )
        names = col.dictionary.to_pylist()
        codes = _values(col.indices)
        masks = {}
        for code, name in enumerate(names):
            mask = codes == code
            if col.null_count:
                mask &= np.asarray(col.is_valid())
            if name == "":
                self.reject(mask, "type", lambda r: field_error("type", "", "a record type"))
            masks[name] = mask
        return masks

    def blank_symbols(self) -> None:
        col = _column(self.batch, "symbol")
        if col is None:
            return
        blank = [code for code, name in enumerate(col.dictionary.to_pylist()) if not name.strip()]
        if blank:
            mask = np.isin(_values(col.indices), blank)
            if col.null_count:
                mask &= np.asarray(col.is_valid())
            self.reject(mask, "symbol", lambda r: field_error("symbol", "", "a ticker"))

    def high_below_low(self, bars: np.ndarray) -> None:
        high, low = _column(self.batch, "high"), _column(self.batch, "low")
        if high is None or low is None:
            return
        with np.errstate(invalid="ignore"):
            inverted = bars & (_values(high) < _values(low))
        if high.null_count or low.null_count:
            inverted &= np.asarray(high.is_valid()) & np.asarray(low.is_valid())
        self.reject(
            inverted, "high", lambda r: f"field 'high' is {high[r].as_py()}, below 'low' {low[r].as_py()}"
        )


def _validate(batch: pa.RecordBatch, rejects: dict[int, Reject]) -> None:
    check = _Checks(batch, rejects)
    kinds = check.type_masks()
    market = [kinds[k] for k in MARKET_TYPES if k in kinds]
    if market:
        check.required(["symbol", "timestamp"], np.logical_or.reduce(market), "market")
    check.blank_symbols()
    check.times()
    trades = kinds.get("trade")
    if trades is not None and trades.any():
        check.required(["price"], trades, "trade")
        check.numbers(["price"], trades, minimum="positive")
        check.numbers(["volume"], trades, minimum="count")
    quotes = kinds.get("quote")
    if quotes is not None and quotes.any():
        check.numbers(["bid", "ask"], quotes, minimum="zero")
        check.numbers(["bid_size", "ask_size"], quotes, minimum="count")
        if _column(batch, "bid") is None and _column(batch, "ask") is None:
            check.required(["bid"], quotes, "quote")
    bars = kinds.get("bar")
    if bars is not None and bars.any():
        check.required(["open", "high", "low", "close"], bars, "bar")
        check.numbers(["open", "high", "low", "close"], bars, minimum="positive")
        check.numbers(["volume"], bars, minimum="count")
        check.high_below_low(bars)
    check.numbers(["prev_close"], None, minimum="positive")


def _render_ts(col: pa.Array, row: int) -> str:
    ns = col.cast(pa.int64())[row].as_py()
    seconds = ns / 1e9
    year = 1970 + seconds / 31_556_952
    return f"{ns} ns (about the year {year:.0f})"


def invalid(data: pa.Array | pa.RecordBatch) -> str | None:
    """Arrow's full validation: why the data is malformed, or None. An IPC reader checks only
    the layout, so text that is not UTF-8 or a dictionary index out of range gets through it."""
    try:
        data.validate(full=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:  # malformed, or unreadable
        return str(err)
    return None


def _bad_positions(arr: pa.Array) -> list[int]:
    """Positions of ``arr`` that fail full validation on their own (halving the search)."""
    if invalid(arr) is None:
        return []
    if len(arr) == 1:
        return [0]
    half = len(arr) // 2
    return _bad_positions(arr.slice(0, half)) + [half + i for i in _bad_positions(arr.slice(half))]


def malformed(batch: pa.RecordBatch) -> list[tuple[int, str, str]]:
    """The rows of a batch that fails full validation: (row, field, Arrow's reason)."""
    out: list[tuple[int, str, str]] = []
    bad_rows: set[int] = set()
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        reason = invalid(col)
        if reason is None:
            continue
        if pa.types.is_dictionary(col.type):
            # a bad entry of the dictionary spoils the rows that use it, and only those
            entries = _bad_positions(col.dictionary)
            indices = col.indices.to_numpy(zero_copy_only=False)
            valid = np.asarray(col.is_valid())
            outside = valid & ((indices < 0) | (indices >= len(col.dictionary)))
            spoiled = valid & np.isin(indices, entries)
            rows = np.flatnonzero(outside | spoiled).tolist()
        else:
            rows = _bad_positions(col)
        if not rows:  # not a fault of single values: the whole column is unusable
            rows = list(range(len(col)))
        for row in rows:
            if row not in bad_rows:
                bad_rows.add(row)
                out.append((row, name, reason))
    return out


def rebuild_dictionaries(batch: pa.RecordBatch) -> pa.RecordBatch:
    """After the malformed rows are gone: rebuild dictionaries that still hold a bad entry."""
    if batch.num_rows == 0 or invalid(batch) is None:
        return batch
    columns = []
    for col in batch.columns:
        if pa.types.is_dictionary(col.type) and invalid(col) is not None:
            col = pc.dictionary_encode(col.dictionary_decode()).cast(col.type)
        columns.append(col)
    return pa.record_batch(columns, names=batch.schema.names)


def normalise(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, list[Reject]]:
    """Cast known fields, fill in ``type``, check the rules; return good rows and the rejects.

    Rows keep their order. Unknown fields pass through untouched. Rejects come back sorted by row.
    """
    rejects: dict[int, Reject] = {}
    columns: list[pa.Array] = []
    names: list[str] = []
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        target = FIELD_TYPES.get(name)
        if target is not None and col.type != target:
            col, bad = coerce_column(col, target)
            for row, value in bad.items():
                rejects.setdefault(row, Reject(row, field_error(name, value, _expected(target)), name))
        columns.append(col)
        names.append(name)
    if "type" not in names:
        columns.insert(0, _infer_type(pa.record_batch(columns, names=names)).dictionary_encode())
        names.insert(0, "type")
    else:
        i = names.index("type")
        if columns[i].null_count:
            inferred = _infer_type(pa.record_batch(columns, names=names))
            columns[i] = pc.coalesce(columns[i].cast(STR), inferred).dictionary_encode()
    symbol_index = names.index("symbol") if "symbol" in names else -1
    if symbol_index >= 0:
        columns[symbol_index] = _upper_symbols(columns[symbol_index])
    out = pa.record_batch(columns, names=names)
    _validate(out, rejects)
    if not rejects:
        return out, []
    keep = np.ones(out.num_rows, dtype=bool)
    keep[list(rejects)] = False
    return out.filter(pa.array(keep)), [rejects[r] for r in sorted(rejects)]


def _upper_symbols(col: pa.Array) -> pa.Array:
    """Tickers are upper case; work on the dictionary, not on every row."""
    if pa.types.is_dictionary(col.type):
        upper = pc.utf8_upper(pc.utf8_trim_whitespace(col.dictionary))
        if upper.equals(col.dictionary):
            return col
        return pc.take(upper, col.indices).dictionary_encode().cast(DICT_STRING)
    return pc.utf8_upper(col)


def empty_batch() -> pa.RecordBatch:
    return pa.record_batch([], schema=pa.schema([]))
