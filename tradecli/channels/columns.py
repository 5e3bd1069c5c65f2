"""Signals a batch at a time: ids, rows as dicts, and display text computed per distinct value.

The console and ``--dry-run`` render every alert of a batch at once. Rather than a Python call
per alert and field, a field's text is computed once per *distinct* value of its column with the
very functions :mod:`tradecli.channels.fields` applies to one signal (so the text is the same by
construction), then spread to the rows with ``take``; Arrow joins the pieces into lines. A
column of symbols, strategies or prices holds few distinct values per batch, so this is a few
thousand Python calls for a batch of any size; a column whose values are all different costs one
call per row, no more than rendering alert by alert.

Values are those a row-wise conversion (:func:`to_records`) would give: times as integer ns,
nulls as None; :func:`alert_ids` gives the ids :func:`tradecli.identity.alert_id` gives.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tradecli.channels import fields as f
from tradecli.identity import ID_FIELDS, ID_LENGTH, alert_id
from tradecli.records import from_numpy


def column_values(col: pa.Array) -> list[Any]:
    """A column's values as Python objects: times as integer ns, dictionaries decoded, null None."""
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.dictionary_decode()
        t = col.type
    if pa.types.is_timestamp(t):
        col = col.cast(pa.timestamp("ns", tz=t.tz)).cast(pa.int64())
        t = col.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        items: list[Any] = (
            col.fill_null(False if pa.types.is_boolean(t) else 0).to_numpy(zero_copy_only=False).tolist()
        )
        if col.null_count:
            nulls = np.asarray(col.is_null()).tolist()
            items = [None if null else v for v, null in zip(items, nulls, strict=True)]
        return items
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return col.to_numpy(zero_copy_only=False).tolist()  # type: ignore[no-any-return]
    if pa.types.is_date(t) or pa.types.is_time(t) or pa.types.is_duration(t):
        return col.cast(pa.string()).to_pylist()  # type: ignore[no-any-return]
    return col.to_pylist()  # type: ignore[no-any-return]


def to_records(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """Rows as dicts, times as integer ns; a null field is None. Converts a column at a time."""
    if batch.num_rows <= 32:  # a few alerts (the live case): the row-wise conversion is quicker
        columns = [
            c.cast(pa.int64()) if pa.types.is_timestamp(c.type) and c.type.unit == "ns" else c
            for c in batch.columns
        ]
        if not any(pa.types.is_timestamp(c.type) or pa.types.is_temporal(c.type) for c in columns):
            return pa.record_batch(columns, names=batch.schema.names).to_pylist()  # type: ignore[no-any-return]
    values = [column_values(col) for col in batch.columns]
    names = batch.schema.names
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


class Distinct:
    """A column's distinct values (as :func:`column_values` gives them) and each row's index into them.

    A missing column counts as a column of nulls.
    """

    def __init__(self, col: pa.Array | None, rows: int) -> None:
        if col is None:
            self.values: list[Any] = [None]
            self.indices = from_numpy(np.zeros(rows, dtype=np.int32))
            return
        if pa.types.is_dictionary(col.type) and len(col.dictionary) > 2 * len(col) + 64:
            col = col.dictionary_decode()  # a slice of a batch with a large dictionary: re-encode
        if not pa.types.is_dictionary(col.type):
            try:
                col = col.dictionary_encode()
            except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
                # a type Arrow cannot dictionary-encode (a struct, say): every row its own value
                self.values = column_values(col)
                self.indices = from_numpy(np.arange(len(col), dtype=np.int32))
                return
        indices = col.indices.cast(pa.int32())
        values = column_values(col.dictionary)
        if indices.null_count:
            values.append(None)
            indices = indices.fill_null(len(values) - 1)
        self.values, self.indices = values, indices

    def strings(self, fn: Callable[[Any], str | None]) -> pa.Array:
        """``fn`` of each row's value as a string array (``fn`` called once per distinct value)."""
        return pa.array([fn(v) for v in self.values], pa.string()).take(self.indices)


def combine(*parts: Distinct) -> Distinct:
    """The distinct combinations of several columns' values (each a tuple), per row."""
    codes = np.zeros(len(parts[0].indices), dtype=np.int64)
    for part in parts:
        codes = codes * len(part.values) + part.indices.to_numpy()
    unique, inverse = np.unique(codes, return_inverse=True)
    values = []
    for code in unique.tolist():
        combo = []
        for part in reversed(parts):
            code, index = divmod(code, len(part.values))
            combo.append(part.values[index])
        values.append(tuple(reversed(combo)))
    out = Distinct(None, 0)
    out.values, out.indices = values, from_numpy(inverse.reshape(-1).astype(np.int32))
    return out


def strings_of(values: np.ndarray, valid: np.ndarray, fn: Callable[[Any], str | None]) -> pa.Array:
    """``fn`` of each value (None where not valid), called once per distinct value."""
    return Distinct(from_numpy(values, mask=~valid), len(values)).strings(fn)


def numbers(col: pa.Array | None, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """As float64, and where :func:`fields.number` gives a float (numeric, not null, finite)."""
    if col is None or not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        return np.zeros(rows), np.zeros(rows, dtype=bool)
    values = pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    ok = np.isfinite(values)
    if col.null_count:
        ok &= np.asarray(col.is_valid())
    return values, ok


_TIMES = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32())
_MILLIS = pa.array([f"{i:03d}" for i in range(1000)], pa.string())


SMALL = 128  # up to this many alerts (the live case) a batch is cheaper alert by alert


class Chunk:
    """A batch of signals on its way to the channels: ids, rows when needed, display columns.

    ``small`` says a channel should render it alert by alert: for a few rows that is quicker
    than the fixed cost of the column-at-a-time path, and it gives the same text.
    """

    def __init__(self, batch: pa.RecordBatch, small: bool | None = None) -> None:
        self.batch = batch
        self.rows = batch.num_rows
        self.small = self.rows <= SMALL if small is None else small
        self._records: list[dict[str, Any]] | None = None
        if self.small:
            self.ids = [alert_id(r) for r in self.records]
            self.ids_given = any(isinstance(r.get("alert_id"), str) and r["alert_id"] for r in self.records)
        else:
            self.ids, self.ids_given = alert_ids(batch)
        self._distinct: dict[str, Distinct] = {}
        self._cache: dict[str, Any] = {}

    @property
    def records(self) -> list[dict[str, Any]]:
        if self._records is None:
            self._records = to_records(self.batch)
        return self._records

    def column(self, name: str) -> pa.Array | None:
        index = self.batch.schema.get_field_index(name)
        return self.batch.column(index) if index >= 0 else None

    def distinct(self, name: str) -> Distinct:
        found = self._distinct.get(name)
        if found is None:
            found = self._distinct[name] = Distinct(self.column(name), self.rows)
        return found

    def side(self) -> pa.Array:
        """``long``, ``short`` or null per row, as :func:`fields.side` decides."""
        if "side" not in self._cache:

            def which(value: Any) -> str | None:
                return f.side({"side": value})

            first = pa.array([which(v) for v in self.distinct("side").values], pa.string())
            second = pa.array([which(v) for v in self.distinct("signal_type").values], pa.string())
            self._cache["side"] = pc.coalesce(
                first.take(self.distinct("side").indices), second.take(self.distinct("signal_type").indices)
            )
        return self._cache["side"]  # type: ignore[no-any-return]

    def rr(self) -> tuple[np.ndarray, np.ndarray]:
        """The R/R ratio as :func:`fields.rr_ratio` gives it, and where it has one."""
        if "rr" not in self._cache:
            given, given_ok = numbers(self.column("rr_ratio"), self.rows)
            entry, entry_ok = numbers(self.column("entry_price"), self.rows)
            stop, stop_ok = numbers(self.column("stop_loss"), self.rows)
            target, target_ok = numbers(self.column("target"), self.rows)
            with np.errstate(all="ignore"):
                risk = np.abs(entry - stop)
                computed = np.where(risk > 0, np.abs(target - entry) / np.where(risk > 0, risk, 1.0), 0.0)
            known = entry_ok & stop_ok & target_ok
            self._cache["rr"] = (np.where(given_ok, given, computed), given_ok | known)
        return self._cache["rr"]  # type: ignore[no-any-return]

    def rr_strings(self, fn: Callable[[Any], str]) -> pa.Array:
        values, ok = self.rr()
        return strings_of(values, ok, fn)

    def times(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Whole seconds, the ns within the second, and where the time is an integer number of ns
        (what the row-wise path formats); None when the column's type needs the row-wise path."""
        if "times" not in self._cache:
            col = self.column("timestamp")
            rows = self.rows
            if col is not None and pa.types.is_timestamp(col.type):
                ns = col.cast(pa.timestamp("ns", tz=col.type.tz)).cast(pa.int64())
            elif col is not None and col.type in _TIMES:
                ns = col.cast(pa.int64())
            elif col is not None and pa.types.is_integer(col.type):
                ns = None  # uint64: may not fit int64
            else:  # missing, or not an integer (a float, a string): no time, as fields.display says
                ns = from_numpy(np.zeros(rows, dtype=np.int64), mask=np.ones(rows, dtype=bool))
            if ns is None:
                self._cache["times"] = None
            else:
                values = ns.fill_null(0).to_numpy(zero_copy_only=False)
                ok = np.asarray(ns.is_valid()) if ns.null_count else np.ones(rows, dtype=bool)
                seconds = values // 1_000_000_000
                self._cache["times"] = (seconds, values - seconds * 1_000_000_000, ok)
        return self._cache["times"]  # type: ignore[no-any-return]

    def iso_times(self) -> pa.Array:
        """ISO-8601 UTC with milliseconds per row (null where there is none), as fields.display."""
        if "iso" not in self._cache:
            parts = self.times()
            if parts is None:
                stamps = [f.display({"timestamp": r.get("timestamp")}).time for r in self.records]
                self._cache["iso"] = pa.array(stamps, pa.string())
            else:
                seconds, rest, ok = parts

                heads = strings_of(seconds, ok, _iso_prefix)
                millis = _MILLIS.take(from_numpy(rest // 1_000_000))
                self._cache["iso"] = pc.binary_join_element_wise(heads, ".", millis, "Z", "")
        return self._cache["iso"]  # type: ignore[no-any-return]


def _iso_prefix(second: int | None) -> str | None:
    """``YYYY-MM-DDTHH:MM:SS`` of whole seconds since the epoch, UTC (None when out of range)."""
    if second is None:
        return None
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    except (OverflowError, OSError, ValueError):
        return None


def _id_text(col: pa.Array | None, rows: int) -> pa.Array | pa.Scalar:
    """``str()`` of each row's value as the row-wise conversion gives it (None -> "None")."""
    if col is None:
        return pa.scalar("None")
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return col.cast(pa.string()).fill_null("None")
    if pa.types.is_timestamp(t):
        return col.cast(pa.timestamp("ns", tz=t.tz)).cast(pa.int64()).cast(pa.string()).fill_null("None")
    if pa.types.is_integer(t):
        return col.cast(pa.string()).fill_null("None")
    return Distinct(col, rows).strings(str)


def alert_ids(batch: pa.RecordBatch) -> tuple[list[str], bool]:
    """:func:`tradecli.identity.alert_id` of every row, and whether any row brought its own id."""
    rows = batch.num_rows
    names = batch.schema.names
    parts = [_id_text(batch.column(name) if name in names else None, rows) for name in ID_FIELDS]
    if not rows:
        return [], False
    if not any(isinstance(p, pa.Array) for p in parts):
        ids = [alert_id({})] * rows
    else:
        keys = pc.binary_join_element_wise(*parts, "\x1f")
        offsets = np.frombuffer(keys.buffers()[1], dtype=np.int32)[keys.offset : keys.offset + rows + 1]
        data = keys.buffers()[2]
        view = memoryview(data) if data is not None else memoryview(b"")
        sha = hashlib.sha256
        starts, ends = offsets[:-1].tolist(), offsets[1:].tolist()
        ids = [sha(view[a:b]).hexdigest()[:ID_LENGTH] for a, b in zip(starts, ends, strict=True)]
    if "alert_id" not in names:
        return ids, False
    given = column_values(batch.column("alert_id"))
    mixed = [g if isinstance(g, str) and g else i for g, i in zip(given, ids, strict=True)]
    return mixed, any(isinstance(g, str) and g for g in given)
