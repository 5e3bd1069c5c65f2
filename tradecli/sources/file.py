"""file: replay recorded data - NDJSON, CSV, Parquet or Arrow IPC files, or stdin (``-``).

Column names are matched case-insensitively, spaces and dashes read as underscores, and common
spellings map to the record fields (``Ticker`` -> ``symbol``, ``size`` -> ``volume``, ``bid_price``
-> ``bid``, ...). Timestamps may be ISO-8601 text or s/ms/us/ns since the epoch. Records without a
``type`` become trades, quotes or bars by the fields they have. ``--speed 1`` replays at the pace the
timestamps were recorded, ``--speed 10`` ten times faster, ``--speed max`` (the default) as fast as
the pipe takes them.
"""

from __future__ import annotations

import io
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from tradecli.errors import TradeError
from tradecli.records import DICT_STRING, FIELD_TYPES, TIMESTAMP
from tradecli.runtime import Session
from tradecli.wire import BOM, ErrorSink, Input, RecordReader, checked, sniff

ALIASES: dict[str, str] = {
    "sym": "symbol",
    "ticker": "symbol",
    "instrument": "symbol",
    "security": "symbol",
    "time": "timestamp",
    "ts": "timestamp",
    "datetime": "timestamp",
    "date_time": "timestamp",
    "sip_timestamp": "timestamp",
    "event_time": "timestamp",
    "t": "timestamp",
    "last": "price",
    "trade_price": "price",
    "last_price": "price",
    "size": "volume",
    "qty": "volume",
    "quantity": "volume",
    "shares": "volume",
    "vol": "volume",
    "trade_size": "volume",
    "bid_price": "bid",
    "bidprice": "bid",
    "ask_price": "ask",
    "askprice": "ask",
    "offer": "ask",
    "offer_price": "ask",
    "bidsize": "bid_size",
    "bid_qty": "bid_size",
    "asksize": "ask_size",
    "ask_qty": "ask_size",
    "offer_size": "ask_size",
    "previous_close": "prev_close",
    "prevclose": "prev_close",
    "prior_close": "prev_close",
    "exch": "exchange",
    "venue": "exchange",
    "tradeid": "trade_id",
    "record_type": "type",
    "event_type": "type",
}


def canonical_name(name: str) -> str:
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    return key if key in FIELD_TYPES else ALIASES.get(key, name)


def rename_columns(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Map column names to record fields.

    Lines of one NDJSON file may spell a field differently (``sym`` here, ``symbol`` there); the
    columns that name the same field are merged, each row taking the first spelling it has,
    the exact field name first.
    """
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(batch.schema.names):
        groups.setdefault(canonical_name(name), []).append(i)
    if all(len(ix) == 1 and batch.schema.names[ix[0]] == name for name, ix in groups.items()):
        return batch
    columns = []
    for name, indices in groups.items():
        indices.sort(key=lambda i: batch.schema.names[i] != name)
        columns.append(_merge([batch.column(i) for i in indices]))
    return pa.record_batch(columns, names=list(groups))


def _merge(columns: list[pa.Array]) -> pa.Array:
    """The first non-null value of each row across columns; differing types meet as double or text."""
    if len(columns) == 1:
        return columns[0]
    types = {c.type for c in columns}
    if len(types) > 1:
        numeric = all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in types)
        target = pa.float64() if numeric else pa.string()
        columns = [c if c.type == target else _as(c, target) for c in columns]
    return pc.coalesce(*columns)


def _as(col: pa.Array, target: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(col.type) and target == pa.string():
        col = col.cast(pa.timestamp("ns", tz="UTC"))  # a naive time is UTC, as everywhere
        return pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ")  # %S carries the fraction
    try:
        return col.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array(
            [None if v is None else orjson.dumps(v).decode() for v in col.to_pylist()], pa.string()
        )


def _infer_text_column(col: pa.Array) -> pa.Array:
    """CSV columns arrive as text; unknown ones become int or float when every value parses."""
    for target in (pa.int64(), pa.float64()):
        try:
            return col.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return col


def prepare(batch: pa.RecordBatch, source_name: str = "file") -> pa.RecordBatch:
    batch = rename_columns(batch)
    columns = []
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        if name not in FIELD_TYPES and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            col = _infer_text_column(col)
        columns.append(col)
    batch = pa.record_batch(columns, names=batch.schema.names)
    if "source" not in batch.schema.names:
        source = pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(batch.num_rows, dtype=np.int32)), pa.array([source_name])
        )
        batch = batch.append_column("source", source.cast(DICT_STRING))
    return batch


@dataclass
class FileOptions:
    paths: list[str]
    speed: float | None = None  # None = as fast as possible


class FileReplay:
    """Records from each file in turn, normalised, with bad rows reported by file and line/row."""

    def __init__(self, options: FileOptions, session: Session, errors: ErrorSink) -> None:
        self.options = options
        self.session = session
        self.errors = errors
        self.progress: Callable[[int], None] = lambda n: None
        self.format: str | None = None  # what stdin turned out to be, so the output can match it

    def batches(self) -> Iterator[pa.RecordBatch]:
        with self._progress_bar() as advance:
            self.progress = advance
            for path in self.options.paths:
                yield from self._one(path)

    def _progress_bar(self) -> AbstractContextManager[Callable[[int], None]]:
        if self.session.log.quiet or not sys.stderr.isatty() or "-" in self.options.paths:
            return nullcontext(lambda n: None)
        from contextlib import contextmanager

        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        total = sum(os.path.getsize(p) for p in self.options.paths if os.path.exists(p))

        @contextmanager
        def bar() -> Iterator[Callable[[int], None]]:
            with Progress(
                TextColumn("replay"),
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                transient=True,
                console=Console(stderr=True),  # stdout carries the records
            ) as progress:
                task = progress.add_task("replay", total=total)
                yield lambda n: progress.advance(task, n)

        return bar()

    def _one(self, path: str) -> Iterator[pa.RecordBatch]:
        if path == "-":
            stream: Any = sys.stdin.buffer
            label = "stdin"
        else:
            try:
                stream = open(path, "rb")  # noqa: SIM115 - closed below
            except OSError as err:
                raise TradeError(f"cannot read {path}: {err.strerror}", 74) from err
            label = path
        try:
            source = Input(stream, self.session, name=label)
            head = source.peek(8)
            kind = _file_kind(path, head)
            if path == "-" and self.format is None:
                self.format = "ndjson" if kind in ("ndjson", "csv") else "arrow"
            if kind in ("parquet", "arrow-file"):
                data: Any = stream if path != "-" else io.BytesIO(source.read())
                if path != "-":
                    data.seek(0)
                yield from self._columnar(kind, data, label)
            elif kind == "csv":
                yield from self._csv(source, label)
            else:
                reader = RecordReader(source, self.errors, label=label, prepare=prepare)
                before = 0
                for batch in reader.batches():
                    self.progress(source.bytes_read - before)
                    before = source.bytes_read
                    yield batch
        finally:
            if path != "-":
                stream.close()

    def _columnar(self, kind: str, data: Any, label: str) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        if kind == "parquet":
            parquet = pq.ParquetFile(data)
            batches: Iterator[pa.RecordBatch] = parquet.iter_batches(batch_size=65_536)
            parts = max(1, -(-(parquet.metadata.num_rows or 0) // 65_536))
        else:
            arrow_file = pa.ipc.open_file(data)
            batches = (arrow_file.get_batch(i) for i in range(arrow_file.num_record_batches))
            parts = max(1, arrow_file.num_record_batches)
        size = os.path.getsize(label) if os.path.exists(label) else 0
        row = 1
        for batch in batches:
            yield from self._checked(batch, label, "row", row)
            row += batch.num_rows
            self.progress(size // parts)

    def _checked(self, batch: pa.RecordBatch, label: str, unit: str, first: int) -> Iterator[pa.RecordBatch]:
        """Good rows of a file's batch; a bad one is named '<file> <unit> <n>' (row or line number)."""
        yield from checked(
            prepare(batch), self.errors, lambda r: f"{label} {unit} {first + r}", lambda r: {unit: first + r}
        )

    def _csv(self, source: Input, label: str) -> Iterator[pa.RecordBatch]:
        import pyarrow.csv as pacsv

        header = source.peek(1 << 16).split(b"\n", 1)[0].rstrip(b"\r")
        delimiter = "\t" if b"\t" in header and b"," not in header else ","
        names = [n.strip().strip('"') for n in header.decode("utf-8", errors="replace").split(delimiter)]
        try:
            reader = pacsv.open_csv(
                source,
                read_options=pacsv.ReadOptions(block_size=1 << 22),
                parse_options=pacsv.ParseOptions(
                    delimiter=delimiter,
                    newlines_in_values=False,
                    invalid_row_handler=self._bad_csv_row(label),
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in names}, strings_can_be_null=True
                ),
            )
        except (pa.ArrowInvalid, OSError) as err:
            raise TradeError(f"{label}: not a CSV file I can read ({err})", 65) from err
        line = 2  # the header is line 1
        before = 0
        for batch in reader:
            yield from self._checked(batch, label, "line", line)
            line += batch.num_rows
            self.progress(source.bytes_read - before)
            before = source.bytes_read

    def _bad_csv_row(self, label: str) -> Callable[[Any], str]:
        def handler(row: Any) -> str:
            self.session.counters.records_in += 1
            where = f"{label} line {row.number}" if row.number else label
            text = str(row.text)
            shown = text if len(text) <= 60 else text[:57] + "..."
            self.errors.reject(
                where,
                f"CSV row {shown!r} has {row.actual_columns} fields, expected {row.expected_columns}",
                raw=text.encode(),
                line=row.number,
            )
            return "skip"

        return handler


def _file_kind(path: str, head: bytes) -> str:
    if head.startswith(b"PAR1"):
        return "parquet"
    kind = sniff(head)
    if kind != "ndjson":
        return kind
    lower = path.lower()
    if lower.endswith((".csv", ".tsv", ".txt")):
        return "csv"
    stripped = head.removeprefix(BOM).lstrip()
    if stripped[:1] in (b"{", b"[") or lower.endswith((".ndjson", ".jsonl", ".json")) or not stripped:
        return "ndjson"
    return "csv"


def pace(
    batches: Iterator[pa.RecordBatch], speed: float, session: Session, slot_seconds: float = 0.005
) -> Iterator[pa.RecordBatch]:
    """Hold each record back until its recorded time (scaled by ``speed``) has come on the wall clock.

    Rows are released in slices that fall in the same few-millisecond slot, so the cost is per
    slot, not per record. Timestamps that step backwards are released with the latest one so far.
    """
    origin_event: int | None = None
    origin_wall = 0.0
    latest = -(2**62)
    for batch in batches:
        index = batch.schema.get_field_index("timestamp")
        if index < 0 or batch.num_rows == 0:
            yield batch
            continue
        ns = batch.column(index).cast(pa.int64()).fill_null(latest).to_numpy()
        ns = np.maximum.accumulate(np.maximum(ns, latest))
        latest = int(ns[-1])
        if origin_event is None:
            origin_event, origin_wall = int(ns[0]), time.monotonic()
        due = (ns - origin_event) / 1e9 / speed
        slots = np.floor(due / slot_seconds).astype(np.int64)
        cuts = np.r_[0, np.flatnonzero(np.diff(slots)) + 1, len(slots)]
        for start, end in itertools.pairwise(cuts):
            wait = origin_wall + due[start] - time.monotonic()
            session.stopper.sleep(wait)
            yield batch.slice(int(start), int(end - start))


def stamp_received(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``recv_ts`` is when ingest took the record: now."""
    now = pa.array(np.full(batch.num_rows, time.time_ns(), dtype=np.int64)).cast(TIMESTAMP)
    index = batch.schema.get_field_index("recv_ts")
    if index >= 0:
        return batch.set_column(index, "recv_ts", now)
    position = batch.schema.get_field_index("timestamp") + 1 or batch.num_columns
    return batch.add_column(position, "recv_ts", now)
