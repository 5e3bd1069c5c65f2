"""Reading the store back as a stream in time order: the replay behind ``trade store query``.

Days are read one after another (a New York date holds only its own day's events). Within a day
every file is sorted by (symbol, timestamp), so time order needs a merge: files are taken in
order of their first timestamp, each is read whole (projected and filtered by the Parquet scan,
which skips row groups by their statistics), merged with the rows still pending, and everything
earlier than the next file's first timestamp is emitted. Files written live cover consecutive
stretches of time, so the pending rows stay few and memory stays at about one file, however
large the day is.

Files are opened when a day is listed. On a local disk an open file stays readable after it is
removed, so a ``compact`` or ``prune`` running at the same time cannot pull rows out from under
the query; if a file disappears between listing and opening, the partition is listed again.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tradecli.errors import UsageError
from tradecli.records import DICT_STRING, FIELD_TYPES, from_numpy
from tradecli.tickstore.backend import Backend, StoreError
from tradecli.tickstore.expr import ExpressionError, compile_where
from tradecli.tickstore.files import time_range
from tradecli.tickstore.layout import NO_TIME, live_files, partition, sort_ns
from tradecli.tickstore.timeparse import NEW_YORK

FORMAT = ds.ParquetFileFormat()
OPEN_FILES_PER_DAY = 4_000  # above this, files are opened as they are read


@dataclass
class QueryOptions:
    types: list[str] | None = None
    symbols: list[str] = field(default_factory=list)
    start_ns: int | None = None  # inclusive
    end_ns: int | None = None  # exclusive
    first_day: date | None = None
    last_day: date | None = None
    columns: list[str] | None = None
    where: str | None = None
    batch_rows: int = 65_536


@dataclass
class _File:
    rtype: str
    rel: str
    handle: pa.NativeFile | None
    rows: int
    min_ts: int | None
    max_ts: int | None
    schema: pa.Schema

    @property
    def order(self) -> int:
        return self.min_ts if self.min_ts is not None else NO_TIME


def _day_of(ns: int) -> date:
    from datetime import datetime

    return datetime.fromtimestamp(ns / 1e9, NEW_YORK).date()


def canonical(table: pa.Table) -> pa.Table:
    """Known fields in their record types (Parquet names list items 'element'; Arrow 'item')."""
    changed = False
    columns = []
    for name, col in zip(table.column_names, table.columns, strict=True):
        target = FIELD_TYPES.get(name)
        if target is None and pa.types.is_list(col.type) and col.type.value_field.name != "item":
            target = pa.list_(col.type.value_type)
        if target is not None and col.type != target:
            with suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                col = col.cast(target)
                changed = True
        columns.append(col)
    return pa.Table.from_arrays(columns, names=table.column_names) if changed else table


class Query:
    """A planned query: which days, types and files; ``batches()`` streams the records."""

    def __init__(self, backend: Backend, options: QueryOptions) -> None:
        self.backend = backend
        self.options = options
        self.types = self._types()
        self.known = self._known_columns()
        self.filter_fields: set[str] = set()
        self.filter = self._filter()
        self.columns = self._columns()

    # -- planning ------------------------------------------------------------------------------
    def _types(self) -> list[str]:
        stored = self.backend.list_types()
        if not self.options.types:
            return stored
        return [t for t in self.options.types if t in stored]

    def _known_columns(self) -> dict[str, pa.DataType]:
        """Every column of the selected types (from the newest file of each)."""
        known: dict[str, pa.DataType] = {"type": pa.string()}
        for rtype in self.types:
            for day in reversed(self.backend.list_dates(rtype)):
                current, _ = live_files(self.backend.list_files(rtype, day))
                if not current:
                    continue
                newest = max(current, key=lambda f: (f.last or 0, f.name))
                try:
                    with self.backend.open_input(f"{partition(rtype, day)}/{newest.name}") as handle:
                        schema = pq.read_schema(handle)
                except (OSError, pa.ArrowInvalid):
                    continue
                for f in schema:
                    known.setdefault(f.name, f.type)
                break
        return known

    def _filter(self) -> pc.Expression | None:
        parts: list[pc.Expression] = []
        o = self.options
        if o.symbols:
            self.filter_fields.add("symbol")
            parts.append(pc.field("symbol").isin(pa.array([s.upper() for s in o.symbols])))
        stamp = pa.timestamp("ns", tz="UTC")
        if o.start_ns is not None or o.end_ns is not None:
            self.filter_fields.add("timestamp")
        if o.start_ns is not None:
            parts.append(pc.field("timestamp") >= pa.scalar(o.start_ns, type=stamp))
        if o.end_ns is not None:
            parts.append(pc.field("timestamp") < pa.scalar(o.end_ns, type=stamp))
        if o.where:
            try:
                compiled = compile_where(o.where)
            except ExpressionError as err:
                raise UsageError(f"--where: {err}") from None
            unknown = sorted(compiled.fields - set(self.known))
            if unknown and self.types:
                raise UsageError(
                    f"--where: unknown column {', '.join(repr(u) for u in unknown)} "
                    f"(the stored columns are: {', '.join(sorted(self.known))})"
                )
            self.filter_fields |= compiled.fields
            parts.append(compiled.expression)
        if not parts:
            return None
        out = parts[0]
        for part in parts[1:]:
            out = out & part
        return out

    def _columns(self) -> list[str] | None:
        wanted = self.options.columns
        if not wanted:
            return None
        unknown = [c for c in wanted if c not in self.known]
        if unknown and self.types:
            raise UsageError(
                f"--columns: unknown column {', '.join(repr(u) for u in unknown)} "
                f"(the stored columns are: {', '.join(sorted(self.known))})"
            )
        return list(dict.fromkeys(wanted))

    def days(self) -> list[str]:
        o = self.options
        first, last = o.first_day, o.last_day
        if o.start_ns is not None:
            start_day = _day_of(o.start_ns)
            first = max(first, start_day) if first else start_day
        if o.end_ns is not None:
            end_day = _day_of(o.end_ns - 1)
            last = min(last, end_day) if last else end_day
        found: set[str] = set()
        for rtype in self.types:
            for day in self.backend.list_dates(rtype):
                d = date.fromisoformat(day)
                if (first is None or d >= first) and (last is None or d <= last):
                    found.add(day)
        return sorted(found)

    # -- reading -------------------------------------------------------------------------------
    def batches(self) -> Iterator[pa.RecordBatch]:
        for day in self.days():
            for table in self._day(day):
                yield from table.to_batches(max_chunksize=self.options.batch_rows)

    def _open_day(self, day: str) -> list[_File]:
        out: list[_File] = []
        for rtype in self.types:
            for _attempt in range(5):
                opened = self._open_partition(rtype, day)
                if opened is not None:
                    out.extend(opened)
                    break
            else:
                raise StoreError(f"{partition(rtype, day)} keeps changing while it is read; try again")
        return out

    def _open_partition(self, rtype: str, day: str) -> list[_File] | None:
        """The partition's current files, open; None when one vanished (list again)."""
        current, _ = live_files(self.backend.list_files(rtype, day))
        keep_open = len(current) <= OPEN_FILES_PER_DAY
        out: list[_File] = []
        o = self.options
        for f in current:
            rel = f"{partition(rtype, day)}/{f.name}"
            try:
                handle = self.backend.open_input(rel)
                metadata = pq.read_metadata(handle)
                schema = pq.read_schema(handle)
            except FileNotFoundError:
                for opened in out:
                    if opened.handle is not None:
                        opened.handle.close()
                return None
            except (OSError, pa.ArrowInvalid) as err:
                raise StoreError(f"cannot read {self.backend.path_of(rel)}: {err}") from err
            lo, hi = time_range(metadata)
            outside = (o.start_ns is not None and hi is not None and hi < o.start_ns) or (
                o.end_ns is not None and lo is not None and lo >= o.end_ns
            )
            if outside or metadata.num_rows == 0:
                handle.close()
                continue
            if not keep_open:
                handle.close()
            out.append(_File(rtype, rel, handle if keep_open else None, metadata.num_rows, lo, hi, schema))
        return out

    def _read(self, f: _File, schema: pa.Schema) -> pa.Table:
        handle = f.handle
        try:
            if handle is None:
                handle = self.backend.open_input(f.rel)
            fragment = FORMAT.make_fragment(handle, partition_expression=pc.field("type") == f.rtype)
            wanted = self.columns
            if wanted is None:
                columns = list(schema.names)
            else:
                columns = [c for c in wanted if c in schema.names]
                if "timestamp" in schema.names and "timestamp" not in columns:
                    columns.append("timestamp")
            table = fragment.to_table(schema=schema, columns=columns, filter=self.filter)
        except FileNotFoundError as err:
            raise StoreError(
                f"{self.backend.path_of(f.rel)} was removed while the query read it "
                "(compacted or pruned); run the query again"
            ) from err
        except (OSError, pa.ArrowInvalid) as err:
            raise StoreError(f"cannot read {self.backend.path_of(f.rel)}: {err}") from err
        finally:
            if handle is not None:
                handle.close()
            f.handle = None
        if "type" in table.column_names:
            index = table.column_names.index("type")
            table = table.set_column(index, "type", table.column(index).cast(DICT_STRING))
        return canonical(table)

    def _schemas(self, opened: list[_File]) -> dict[str, pa.Schema]:
        """Per type: the union of its files' columns, ``type`` first (files only ever add columns)."""
        out: dict[str, pa.Schema] = {}
        for rtype in {f.rtype for f in opened}:
            schemas = [f.schema.remove_metadata() for f in opened if f.rtype == rtype]
            newest_first = sorted(schemas, key=len, reverse=True)
            try:
                merged = pa.unify_schemas(newest_first, promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                merged = newest_first[0]
            fields = [pa.field("type", pa.string())] + [f for f in merged if f.name != "type"]
            # a column the filter names but this type lacks reads as null (so `price > 1`
            # simply matches no quote, instead of failing)
            have = {f.name for f in fields}
            for name in sorted(self.filter_fields - have):
                fields.append(pa.field(name, self.known.get(name) or FIELD_TYPES.get(name) or pa.null()))
            out[rtype] = pa.schema(fields)
        return out

    def _day(self, day: str) -> Iterator[pa.Table]:
        opened = self._open_day(day)
        if not opened:
            return
        schemas = self._schemas(opened)
        opened.sort(key=lambda f: (f.order, f.rtype, f.rel))
        # the next file is read (Parquet decoding releases the GIL) while this one is merged
        prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-read")
        try:
            upcoming = prefetch.submit(self._read, opened[0], schemas[opened[0].rtype])
            pending: list[_Rows] = []
            for i in range(len(opened)):
                table = upcoming.result()
                last = i == len(opened) - 1
                if not last:
                    upcoming = prefetch.submit(self._read, opened[i + 1], schemas[opened[i + 1].rtype])
                if table.num_rows:
                    pending.append(_Rows.of(table))
                if not pending:
                    continue
                watermark = None if last else opened[i + 1].order
                if watermark is not None and min(r.first for r in pending) >= watermark:
                    continue  # nothing can go out before the next file is in
                source, chosen, pending = _merge(pending, watermark)
                if source is not None:
                    # gathered a batch at a time: the copy stays in the CPU cache and in memory
                    # the allocator already has, and the first records go out sooner
                    source = self._output(source)
                    step = self.options.batch_rows
                    for start in range(0, len(chosen), step):
                        yield source.take(from_numpy(chosen[start : start + step]))
                    del source
        finally:
            prefetch.shutdown(wait=True, cancel_futures=True)
            for f in opened:
                if f.handle is not None:
                    f.handle.close()

    def _output(self, table: pa.Table) -> pa.Table:
        wanted = self.columns
        if wanted is None:
            return table
        return table.select([c for c in wanted if c in table.column_names])


@dataclass
class _Rows:
    """Rows of a table still to go out: their indices and timestamps, in time order."""

    table: pa.Table
    indices: np.ndarray
    ts: np.ndarray

    @classmethod
    def of(cls, table: pa.Table) -> _Rows:
        ts = (
            sort_ns(table.column("timestamp"))
            if "timestamp" in table.column_names
            else np.full(table.num_rows, NO_TIME, dtype=np.int64)
        )
        order = np.argsort(ts, kind="stable")  # runs of one symbol each: timsort merges them
        return cls(table, order, ts[order])

    @property
    def first(self) -> int:
        return int(self.ts[0])


def _merge(pending: list[_Rows], watermark: int | None) -> tuple[pa.Table | None, np.ndarray, list[_Rows]]:
    """The rows earlier than ``watermark`` (all, when None) in time order, as a table and the
    row numbers to take from it in that order (ties in the order of the pieces); the rest stay
    pending.

    Each row is copied once, when it goes out: pending rows are kept as indices into the tables
    they were read in.
    """
    # each piece is in time order, so what goes out is a prefix of each: merge only those
    cuts = [
        len(r.ts) if watermark is None else int(np.searchsorted(r.ts, watermark, side="left"))
        for r in pending
    ]
    if not any(cuts):
        return None, np.zeros(0, dtype=np.int64), pending
    order = np.argsort(np.concatenate([r.ts[:c] for r, c in zip(pending, cuts, strict=True)]), kind="stable")
    starts = np.cumsum([0, *(r.table.num_rows for r in pending)])  # where each table begins
    global_rows = np.concatenate(
        [r.indices[:c] + starts[k] for k, (r, c) in enumerate(zip(pending, cuts, strict=True))]
    )
    chosen = global_rows[order]
    tables = [r.table for r in pending]
    source = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
    left = [
        _Rows(r.table, r.indices[c:], r.ts[c:]) for r, c in zip(pending, cuts, strict=True) if c < len(r.ts)
    ]
    return source, chosen, left


def query(backend: Backend, options: QueryOptions) -> Iterator[pa.RecordBatch]:
    """The matching records of a store, in time order.

    Example: trade store query --date 2026-11-20 --type trade | trade enrich | trade screen
    """
    return Query(backend, options).batches()
