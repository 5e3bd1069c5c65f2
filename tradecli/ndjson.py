"""NDJSON <-> Arrow record batches, a block of lines at a time.

Decoding takes a fast path and a careful one. The fast path hands the whole block to Arrow's C++
JSON reader. If that refuses the block (a line that is not JSON, an array instead of an object,
a price written as "abc", a field whose type changes between lines), the careful path parses line by
line with orjson, so that one bad line costs that line and nothing else, and says which line and
which field.

Encoding writes compact objects, one per line, and leaves out null fields (a trade line carries no
``bid``). Rows are grouped by which of their fields are null, each group is written by polars'
NDJSON writer (its float formatting is several times faster than anything we could do in Python
or with Arrow's string casts), and the lines are put back in their original order with one Arrow
``take``.
"""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from tradecli.records import (
    FIELD_TYPES,
    STR,
    TIMESTAMP,
    TIMESTAMP_FIELDS,
    _coerce_scalar,
    _expected,
    field_error,
    from_numpy,
)

# The C++ reader infers types itself: telling it every known field up front makes it fill each
# row with nulls for fields that row lacks, and halves its speed. normalise() casts afterwards.
PARSE_BLOCK = 512 << 10  # the C++ reader's chunk; smaller chunks spread better over threads
MAX_LINE = 1 << 20  # a longer line is rejected, never parsed
FEW_LINES = 32  # fewer lines than this parse faster (and sooner) line by line
MAX_FAST_DEPTH = 2000  # lines that may nest deeper go the careful way (orjson stops at 1024)


@dataclass
class LineReject:
    """A rejected line: its number in the input, the reason, and the raw text for --errors."""

    line: int
    reason: str
    raw: bytes
    field: str | None = None


@dataclass
class Decoded:
    batches: list[pa.RecordBatch] = field(default_factory=list)
    line_numbers: list[np.ndarray] = field(default_factory=list)  # input line of each row
    rejects: list[LineReject] = field(default_factory=list)


def _line_spans(block: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive, without the newline) of every line in the block."""
    data = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(data == 10)
    if len(block) and block[-1:] != b"\n":
        ends = np.append(ends, len(block))
    starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else np.zeros(0, dtype=np.int64)
    return starts.astype(np.int64), ends.astype(np.int64)


def _blank_lines(block: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which lines hold nothing but whitespace (the C++ reader skips them silently)."""
    data = np.frombuffer(block, dtype=np.uint8)
    content = np.flatnonzero(~np.isin(data, (9, 10, 13, 32)))
    first_content = np.searchsorted(content, starts)
    has = first_content < len(content)
    has[has] = content[first_content[has]] < ends[has]
    return ~has


def _plain_objects(block: bytes, starts: np.ndarray, ends: np.ndarray) -> bool:
    """Whether the C++ reader can take the block as it is: valid UTF-8 (it does not check text
    inside strings), every non-empty line an object (it reads a bare ``null`` as a row), and no
    line nested deep enough to exhaust its recursive parser's stack (it crashes past ~10,000
    levels; only a line longer than the limit can nest that deep, so only those are counted)."""
    for i in np.flatnonzero(ends - starts > MAX_FAST_DEPTH):
        line = block[int(starts[i]) : int(ends[i])]
        if line.count(b"[") + line.count(b"{") > MAX_FAST_DEPTH:
            return False
    if not block.isascii():
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            return False
    data = np.frombuffer(block, dtype=np.uint8)
    nonempty = ends > starts
    first = data[starts[nonempty]]
    return bool(
        np.all((first == ord("{")) | (first == ord("\r")) | (first == ord(" ")) | (first == ord("\t")))
    )


def decode(block: bytes, first_line: int) -> Decoded:
    """Parse a block of whole lines; ``first_line`` is the input line number of its first line."""
    out = Decoded()
    if not block:
        return out
    starts, ends = _line_spans(block)
    longest = int((ends - starts).max()) if len(ends) else 0
    if len(starts) <= FEW_LINES or longest > MAX_LINE or not _plain_objects(block, starts, ends):
        return _decode_careful(block, starts, ends, first_line)
    try:
        table = pajson.read_json(
            io.BytesIO(block),
            read_options=pajson.ReadOptions(
                block_size=max(PARSE_BLOCK, longest + 2), use_threads=len(block) > PARSE_BLOCK
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return _decode_careful(block, starts, ends, first_line)
    if any(pa.types.is_timestamp(f.type) and f.name not in TIMESTAMP_FIELDS for f in table.schema):
        # the C++ reader turns ISO-looking text into timestamps; an unknown field must pass as written
        return _decode_careful(block, starts, ends, first_line)
    lines = np.arange(first_line, first_line + len(starts), dtype=np.int64)
    if table.num_rows != len(starts):
        blank = _blank_lines(block, starts, ends)
        for i in np.flatnonzero(blank):
            out.rejects.append(LineReject(int(lines[i]), "empty line", b""))
        lines = lines[~blank]
        if table.num_rows != len(lines):  # should not happen; be careful rather than wrong
            return _decode_careful(block, starts, ends, first_line)
    for batch in table.combine_chunks().to_batches(max_chunksize=None) or []:
        out.batches.append(batch)
        out.line_numbers.append(lines[: batch.num_rows])
        lines = lines[batch.num_rows :]
    return out


def _loads(raw: bytes) -> Any:
    """orjson, and the standard library for what it refuses but the fast path takes: NaN and
    Infinity, as Python's own json.dumps writes them. Validation then rejects them where a field
    needs a finite number."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        if b"NaN" not in raw and b"Infinity" not in raw:
            raise
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise err from None


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _decode_careful(block: bytes, starts: np.ndarray, ends: np.ndarray, first_line: int) -> Decoded:
    out = Decoded()
    rows: list[dict[str, Any]] = []
    row_lines: list[int] = []
    for i, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        line_no = first_line + i
        if end - start > MAX_LINE:
            out.rejects.append(LineReject(line_no, f"line is longer than {MAX_LINE:,} bytes; skipped", b""))
            continue
        raw = block[start:end]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw.strip():
            out.rejects.append(LineReject(line_no, "empty line", raw))
            continue
        try:
            value = _loads(raw)
        except ValueError as err:
            reason = str(err).split(":", 1)[0]
            if "UTF-8" in str(err) or "utf-8" in str(err):
                reason = "not valid UTF-8"
            elif end == len(block) and not block.endswith(b"\n"):
                reason = f"truncated line, not valid JSON ({reason})"
            else:
                reason = f"not valid JSON ({reason})"
            out.rejects.append(LineReject(line_no, reason, raw))
            continue
        if not isinstance(value, dict):
            out.rejects.append(LineReject(line_no, f"expected a JSON object, got {_kind(value)}", raw))
            continue
        problem = _coerce_known(value)
        if problem is not None:
            out.rejects.append(LineReject(line_no, problem[1], raw, problem[0]))
            continue
        rows.append(value)
        row_lines.append(line_no)
    for batch, lines in _build(rows, np.asarray(row_lines, dtype=np.int64)):
        out.batches.append(batch)
        out.line_numbers.append(lines)
    return out


def _coerce_known(record: dict[str, Any]) -> tuple[str, str] | None:
    """Convert known fields in place; (field, reason) for the first one that cannot be."""
    for name, value in record.items():
        target = FIELD_TYPES.get(name)
        if target is None or value is None:
            continue
        if target == TIMESTAMP:  # normalise() reads the value; here only its JSON type matters
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                return name, field_error(name, value, _expected(target))
            continue
        try:
            record[name] = _coerce_scalar(value, target)
        except (ValueError, TypeError, OverflowError):
            return name, field_error(name, value, _expected(target))
    return None


def _unknown_column(values: list[Any]) -> pa.Array:
    """A field the records do not define, typed by Arrow; whole numbers beyond int64 (a uint64
    id, say) become uint64 when they fit, else float64, as the fast path's reader makes them."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, OverflowError):
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in values):
            raise
        ints = [v for v in values if v is not None]
        if min(ints) >= 0 and max(ints) < 2**64:
            return pa.array(values, pa.uint64())
        return pa.array([None if v is None else float(v) for v in values], pa.float64())


def _build(rows: list[dict[str, Any]], lines: np.ndarray) -> Iterable[tuple[pa.RecordBatch, np.ndarray]]:
    """Columns from dicts. A field whose values do not share a type splits the rows in two."""
    if not rows:
        return
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    columns = []
    try:
        for name in names:
            values = [row.get(name) for row in rows]
            target = FIELD_TYPES.get(name)
            if target is not None and target != TIMESTAMP:
                columns.append(pa.array(values, type=STR if pa.types.is_dictionary(target) else target))
            else:
                columns.append(_unknown_column(values))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        if len(rows) == 1:
            # a lone row whose nested value Arrow cannot type: keep it as JSON text
            columns = [
                pa.array(
                    [
                        orjson.dumps(rows[0].get(n)).decode()
                        if n not in FIELD_TYPES
                        and not isinstance(rows[0].get(n), str | int | float | bool | None)
                        else rows[0].get(n)
                    ]
                )
                for n in names
            ]
            yield pa.record_batch(columns, names=list(names)), lines
            return
        half = len(rows) // 2
        yield from _build(rows[:half], lines[:half])
        yield from _build(rows[half:], lines[half:])
        return
    yield pa.record_batch(columns, names=list(names)), lines


# ---------------------------------------------------------------------------------------------
# Encoding


def _prepare(batch: pa.RecordBatch) -> tuple[list[str], list[pa.Array]]:
    """Drop all-null columns; make every column something polars writes as JSON we want."""
    names: list[str] = []
    columns: list[pa.Array] = []
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        if col.null_count == len(col):
            continue
        t = col.type
        if pa.types.is_timestamp(t):
            col = (
                col.cast(pa.timestamp("ns", tz=t.tz)).cast(pa.int64())
                if t.unit != "ns"
                else col.cast(pa.int64())
            )
        elif pa.types.is_dictionary(t):
            if not pa.types.is_string(t.value_type):
                col = col.dictionary_decode()
        elif pa.types.is_floating(t):
            finite = pc.is_finite(col)
            if finite.false_count:
                col = pc.if_else(finite, col, pa.scalar(None, t))
                if col.null_count == len(col):
                    continue
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
            col = col.cast(pa.large_string())
        elif pa.types.is_date(t) or pa.types.is_time(t) or pa.types.is_duration(t):
            col = col.cast(STR)
        names.append(name)
        columns.append(col)
    return names, columns


def warm_up() -> Callable[[], None]:
    """Import polars in the background (0.3 s) while the stage waits for its first batch.

    Returns a function that waits for the import to finish: call it before the process exits,
    since an interpreter shutting down under a thread inside an extension's import can abort.
    """
    import sys
    import threading

    if "polars" in sys.modules:
        return lambda: None
    worker = threading.Thread(target=__import__, args=("polars",), name="import-polars", daemon=True)
    worker.start()
    return lambda: worker.join(timeout=30)


def _ndjson_bytes(frame: Any) -> bytes:
    sink = io.BytesIO()
    frame.write_ndjson(sink)
    return bytes(sink.getvalue())


def _null_groups(columns: list[pa.Array], nullable: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Group rows by which nullable columns are null in them: (null pattern per group, group per row)."""
    nulls = np.stack([~np.asarray(columns[i].is_valid()) for i in nullable], axis=1)
    if len(nullable) <= 62:
        weights = np.left_shift(np.int64(1), np.arange(len(nullable), dtype=np.int64))
        codes, inverse = np.unique(nulls @ weights, return_inverse=True)
        patterns = ((codes[:, None] >> np.arange(len(nullable))) & 1).astype(bool)
        return patterns, inverse
    patterns, inverse = np.unique(nulls, axis=0, return_inverse=True)
    return patterns, inverse.reshape(-1)


PARALLEL_ROWS = 32_768  # a batch this large is encoded in parts, one per core
FEW_ROWS = 256  # below this, a row at a time with orjson beats polars' fixed cost (~1 ms a call)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@functools.cache
def _encoders() -> ThreadPoolExecutor | None:
    return ThreadPoolExecutor(min(_cores(), 4), thread_name_prefix="encode") if _cores() > 1 else None


def encode(batch: pa.RecordBatch) -> bytes:
    """Compact NDJSON for every row of the batch, nulls left out, ``\\n`` after each line.

    Formatting floats is most of the cost; a large batch is cut in parts that are encoded on all
    cores at once (polars releases the GIL while it writes).
    """
    if batch.num_rows < FEW_ROWS:
        return _encode_rows(batch)  # the live case: low latency, and polars need not be loaded yet
    pool = _encoders() if batch.num_rows >= PARALLEL_ROWS else None
    if pool is None:
        return _encode(batch)
    step = -(-batch.num_rows // min(_cores(), 4))
    return b"".join(pool.map(_encode, [batch.slice(i, step) for i in range(0, batch.num_rows, step)]))


def _encode_rows(batch: pa.RecordBatch) -> bytes:
    """The same bytes as :func:`_encode` (orjson and polars format numbers and text alike), a row
    at a time."""
    names, columns = _prepare(batch)
    if not names:
        return b"{}\n" * int(batch.num_rows)
    option = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
    return b"".join(
        orjson.dumps({k: v for k, v in row.items() if v is not None}, option=option, default=_plain)
        for row in pa.record_batch(columns, names=names).to_pylist()
    )


def _plain(value: Any) -> Any:
    """What orjson cannot write itself (decimals) as polars writes it: a number."""
    return float(value)


def _encode(batch: pa.RecordBatch) -> bytes:
    if batch.num_rows == 0:
        return b""
    names, columns = _prepare(batch)
    if not names:
        return b"{}\n" * int(batch.num_rows)
    import polars as pl

    frame: Any = pl.from_arrow(pa.table(columns, names=names))
    nullable = [i for i, col in enumerate(columns) if col.null_count]
    if not nullable:
        return _ndjson_bytes(frame)
    patterns, inverse = _null_groups(columns, nullable)
    pieces: list[pa.Array] = []
    order: list[np.ndarray] = []
    for g, pattern in enumerate(patterns):
        rows = np.flatnonzero(inverse == g) if len(patterns) > 1 else np.arange(batch.num_rows)
        dropped = {names[i] for i, null in zip(nullable, pattern, strict=True) if null}
        keep = [n for n in names if n not in dropped]
        if not keep:
            blob = b"{}\n" * len(rows)
        else:
            sub = frame.select(keep)
            blob = _ndjson_bytes(sub if len(patterns) == 1 else sub[rows])
        line_ends = np.flatnonzero(np.frombuffer(blob, dtype=np.uint8) == 10) + 1
        offsets = np.concatenate(([0], line_ends)).astype(np.int64)
        pieces.append(pa.LargeStringArray.from_buffers(len(rows), pa.py_buffer(offsets), pa.py_buffer(blob)))
        order.append(rows)
    if len(pieces) == 1:
        return bytes(pieces[0].buffers()[2].to_pybytes())
    lines = pa.concat_arrays(pieces)
    position = np.empty(batch.num_rows, dtype=np.int64)
    position[np.concatenate(order)] = np.arange(batch.num_rows)
    ordered = pc.take(lines, from_numpy(position))
    offsets = np.frombuffer(ordered.buffers()[1], dtype=np.int64)
    start, end = int(offsets[ordered.offset]), int(offsets[ordered.offset + len(ordered)])
    return bytes(ordered.buffers()[2].slice(start, end - start).to_pybytes())
