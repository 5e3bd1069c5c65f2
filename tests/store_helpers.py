"""Helpers shared by the store tests: records, a quiet log, reading a dataset back independently."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from tradecli.records import normalise
from tradecli.sources.sim import SimConfig, simulate, universe

NS = 10**9
# 2026-11-20 09:30 New York (EST, UTC-5) in ns
OPEN_NS = 1_795_185_000 * NS


class Log:
    """Collects what the engine says."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.infos: list[str] = []
        self.quiet = True

    def warning(self, message: str, **_: Any) -> None:
        self.warnings.append(message)

    def info(self, message: str, **_: Any) -> None:
        self.infos.append(message)

    def error(self, message: str, **_: Any) -> None:
        self.warnings.append(message)

    def add_secret(self, secret: str | None) -> None:
        pass


def sim_batches(
    count: int, *, seed: int = 7, symbols: int = 20, day: str = "2026-11-20"
) -> list[pa.RecordBatch]:
    """Normalised simulated trades and quotes, cut into batches of varying size."""
    from datetime import date

    config = SimConfig(symbols=universe([], symbols), seed=seed, day=date.fromisoformat(day))
    out: list[pa.RecordBatch] = []
    left = count
    sizes = [1, 7, 500, 3000, 64]
    i = 0
    for big in simulate(config, batch_rows=4096):
        offset = 0
        while offset < big.num_rows and left > 0:
            size = min(sizes[i % len(sizes)], big.num_rows - offset, left)
            good, bad = normalise(big.slice(offset, size))
            assert not bad
            out.append(good)
            offset += size
            left -= size
            i += 1
        if left <= 0:
            return out
    return out


def records(lines: list[dict[str, Any]]) -> pa.RecordBatch:
    """A normalised batch from dicts (as the NDJSON reader would build it)."""
    from tradecli import ndjson

    block = b"".join(orjson.dumps(x) + b"\n" for x in lines)
    decoded = ndjson.decode(block, 1)
    assert not decoded.rejects, decoded.rejects
    batches = [normalise(b)[0] for b in decoded.batches]
    table = pa.concat_tables([pa.Table.from_batches([b]) for b in batches], promote_options="permissive")
    return table.combine_chunks().to_batches()[0]


def dataset_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("type=*/date=*/*.parquet"))


def read_dataset(root: Path) -> pa.Table:
    """Every row of every published file, with ``type`` from the directory (independent of
    the code under test: plain pyarrow)."""
    tables = []
    for path in dataset_files(root):
        table = pq.read_table(path)
        rtype = path.parent.parent.name.split("=", 1)[1]
        table = table.append_column("type", pa.array([rtype] * table.num_rows, pa.string()))
        tables.append(table)
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")


def row_keys(table: pa.Table, columns: list[str] | None = None) -> list[bytes]:
    """Each row as canonical bytes (sorted keys, nulls left out), for multiset comparisons."""
    names = [n for n in (columns or table.column_names) if n in table.column_names]
    table = plain(table.select(names))
    out = []
    for row in table.to_pylist():
        clean = {k: v for k, v in row.items() if v is not None}
        out.append(orjson.dumps(clean, option=orjson.OPT_SORT_KEYS, default=str))
    return sorted(out)


def plain(table: pa.Table) -> pa.Table:
    """Timestamps as int64 ns and dictionaries as text, so rows convert to Python exactly."""
    columns = []
    for col in table.columns:
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.int64())
        elif pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        columns.append(col)
    return pa.Table.from_arrays(columns, names=table.column_names)


def arrow_stream_rows(data: bytes) -> int:
    """Whole batches in a (possibly torn) file of concatenated Arrow IPC streams."""
    source = io.BytesIO(data)
    rows = 0
    while source.tell() < len(data):
        try:
            reader = pa.ipc.open_stream(source)
        except (pa.ArrowInvalid, OSError):
            return rows
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError):
                return rows
            rows += batch.num_rows
    return rows
