"""Looking after a store: ``stats``, ``compact`` and ``prune``.

Compaction merges runs of small files of one partition into files of up to ``target_rows``
rows, named after the sequence range they hold (``part-<first>-<last>.parquet``). Only files
that are next to each other in sequence order are merged, so a range names exactly the files it
replaced. Each merged file is published (whole, atomically) before its inputs are removed, so at
no moment is a record missing. The inputs are removed right after - microseconds later - and a
reader that lists the directory in between, or after a crash in between, could see a record in
both; ``trade store`` itself never does, because it skips any file whose range lies inside a
larger file's range, and the next ``compact`` removes such leftovers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tradecli.records import from_numpy
from tradecli.tickstore import files, wal
from tradecli.tickstore.backend import Backend, StoreError
from tradecli.tickstore.layout import (
    SMALL_FILE_ROWS,
    PartFile,
    is_tmp,
    live_files,
    parse_part,
    part_name,
    partition,
    sort_ns,
)
from tradecli.tickstore.timeparse import today

DEFAULT_TARGET_ROWS = 2 * SMALL_FILE_ROWS


def _in_days(day: str, first: date | None, last: date | None) -> bool:
    d = date.fromisoformat(day)
    return (first is None or d >= first) and (last is None or d <= last)


def selected_partitions(
    backend: Backend, types: list[str] | None, first: date | None, last: date | None
) -> Iterator[tuple[str, str]]:
    for rtype in backend.list_types():
        if types and rtype not in types:
            continue
        for day in backend.list_dates(rtype):
            if _in_days(day, first, last):
                yield rtype, day


@dataclass
class FileInfo:
    part: PartFile
    rows: int
    min_ts: int | None
    max_ts: int | None


def file_info(backend: Backend, rtype: str, day: str, f: PartFile) -> FileInfo | None:
    """Rows and time range from the footer; None when the file vanished meanwhile."""
    rel = f"{partition(rtype, day)}/{f.name}"
    try:
        with backend.open_input(rel) as handle:
            metadata = pq.read_metadata(handle)
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowInvalid) as err:
        raise StoreError(f"cannot read {backend.path_of(rel)}: {err}") from err
    lo, hi = files.time_range(metadata)
    return FileInfo(f, metadata.num_rows, lo, hi)


# -- stats -------------------------------------------------------------------------------------


@dataclass
class PartitionStats:
    type: str
    date: str
    files: int = 0
    small_files: int = 0
    rows: int = 0
    bytes: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    superseded_files: int = 0
    tmp_files: int = 0

    def add(self, info: FileInfo, small_rows: int) -> None:
        self.files += 1
        self.rows += info.rows
        self.bytes += info.part.size
        self.small_files += info.rows < small_rows
        if info.min_ts is not None:
            self.first_ts = info.min_ts if self.first_ts is None else min(self.first_ts, info.min_ts)
        if info.max_ts is not None:
            self.last_ts = info.max_ts if self.last_ts is None else max(self.last_ts, info.max_ts)


@dataclass
class StoreStats:
    path: str
    partitions: list[PartitionStats] = field(default_factory=list)
    newest_ts: int | None = None
    wal_dir: str | None = None
    wal_segments: int = 0
    wal_bytes: int = 0
    measured_at_ns: int = field(default_factory=time.time_ns)

    @property
    def newest_age_seconds(self) -> float | None:
        if self.newest_ts is None:
            return None
        return (self.measured_at_ns - self.newest_ts) / 1e9

    def totals(self, rtype: str | None = None) -> dict[str, Any]:
        chosen = [p for p in self.partitions if rtype is None or p.type == rtype]
        firsts = [p.first_ts for p in chosen if p.first_ts is not None]
        lasts = [p.last_ts for p in chosen if p.last_ts is not None]
        return {
            "partitions": len(chosen),
            "files": sum(p.files for p in chosen),
            "small_files": sum(p.small_files for p in chosen),
            "rows": sum(p.rows for p in chosen),
            "bytes": sum(p.bytes for p in chosen),
            "first_ts": min(firsts) if firsts else None,
            "last_ts": max(lasts) if lasts else None,
        }

    def as_dict(self) -> dict[str, Any]:
        types = sorted({p.type for p in self.partitions})
        return {
            "path": self.path,
            "partitions": [asdict(p) for p in self.partitions],
            "types": {t: self.totals(t) for t in types},
            "total": self.totals(),
            "newest_ts": self.newest_ts,
            "newest_age_seconds": self.newest_age_seconds,
            "small_file_rows": SMALL_FILE_ROWS,
            "wal": {"dir": self.wal_dir, "segments": self.wal_segments, "bytes": self.wal_bytes},
            "measured_at_ns": self.measured_at_ns,
        }


def newest_record(backend: Backend, types: list[str] | None = None) -> int | None:
    """The timestamp of the newest stored record: cheap (the latest few files of each type).

    Example: trade store stats --format json | jq .newest_age_seconds
    """
    newest: int | None = None
    for rtype in backend.list_types():
        if types and rtype not in types:
            continue
        for day in reversed(backend.list_dates(rtype)):
            current, _ = live_files(backend.list_files(rtype, day))
            latest = sorted(current, key=lambda f: (f.last or 0, f.name), reverse=True)[:3]
            found = [info for f in latest if (info := file_info(backend, rtype, day, f)) is not None]
            highs = [i.max_ts for i in found if i.max_ts is not None]
            if highs:
                newest = max(highs) if newest is None else max(newest, max(highs))
                break
    return newest


def stats(
    backend: Backend,
    *,
    types: list[str] | None = None,
    first: date | None = None,
    last: date | None = None,
    wal_dir: Path | None = None,
    small_rows: int = SMALL_FILE_ROWS,
) -> StoreStats:
    """Rows, files, bytes and time range per partition, small files, the newest record's age."""
    out = StoreStats(backend.display)
    for rtype, day in selected_partitions(backend, types, first, last):
        entry = PartitionStats(rtype, day)
        names = [n for n, _ in backend.list_entries(rtype, day)]
        entry.tmp_files = sum(is_tmp(n) for n in names)
        current, superseded = live_files(backend.list_files(rtype, day))
        entry.superseded_files = len(superseded)
        for f in current:
            info = file_info(backend, rtype, day, f)
            if info is not None:
                entry.add(info, small_rows)
        out.partitions.append(entry)
    out.newest_ts = newest_record(backend)
    directory = wal_dir or backend.wal_dir()
    if directory.exists():
        out.wal_dir = str(directory)
        for _, path in wal.list_segments(directory):
            out.wal_segments += 1
            out.wal_bytes += path.stat().st_size
    return out


# -- compact -----------------------------------------------------------------------------------


@dataclass
class Compacted:
    rtype: str
    day: str
    name: str
    path: str
    rows: int
    bytes: int
    inputs: list[str]


@dataclass
class CompactResult:
    merged: list[Compacted] = field(default_factory=list)
    cleaned: int = 0  # leftovers of an interrupted compaction removed

    @property
    def files_in(self) -> int:
        return sum(len(m.inputs) for m in self.merged)


def plan(infos: list[FileInfo], target_rows: int) -> list[list[FileInfo]]:
    """Groups of neighbouring small files (in sequence order) to merge, each up to target_rows."""
    small = target_rows // 2
    ranged = sorted((i for i in infos if i.part.first is not None), key=lambda i: i.part.first or 0)
    groups: list[list[FileInfo]] = []
    current: list[FileInfo] = []
    rows = 0
    for info in ranged:
        if info.rows >= small or rows + info.rows > target_rows:
            if len(current) > 1:
                groups.append(current)
            current, rows = [], 0
            if info.rows >= small:
                continue
        current.append(info)
        rows += info.rows
    if len(current) > 1:
        groups.append(current)
    return groups


def _sorted(table: pa.Table) -> pa.Table:
    """Rows by (symbol, timestamp), as every file keeps them."""
    if table.num_rows == 0:
        return table
    batches = table.to_batches()
    ranks = np.concatenate(files._symbol_ranks(batches)) if batches else np.zeros(0)
    ts = (
        sort_ns(table.column("timestamp"))
        if "timestamp" in table.column_names
        else np.zeros(table.num_rows, dtype=np.int64)
    )
    return table.take(from_numpy(files.sort_order(ts, ranks.astype(np.int64))))


def merge(backend: Backend, rtype: str, day: str, group: list[FileInfo]) -> tuple[pa.Table, list[str]]:
    tables = []
    for info in group:
        rel = f"{partition(rtype, day)}/{info.part.name}"
        try:
            with backend.open_input(rel) as handle:
                tables.append(pq.read_table(handle))
        except (OSError, pa.ArrowInvalid) as err:
            raise StoreError(f"cannot read {backend.path_of(rel)}: {err}") from err
    schemas = sorted((t.schema.remove_metadata() for t in tables), key=len, reverse=True)
    try:
        union = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise StoreError(f"{partition(rtype, day)}: files disagree on column types ({err})") from err
    merged = pa.concat_tables([files.conform(t, union) for t in tables])
    return _sorted(merged), [i.part.name for i in group]


def compact(
    backend: Backend,
    *,
    types: list[str] | None = None,
    first: date | None = None,
    last: date | None = None,
    target_rows: int = DEFAULT_TARGET_ROWS,
    on_merge: Callable[[Compacted], None] | None = None,
    log: Any = None,
) -> CompactResult:
    """Merge small files, partition by partition; see the module docstring for the guarantees."""
    result = CompactResult()
    with backend.maintenance_lock():
        for rtype, day in selected_partitions(backend, types, first, last):
            rel = partition(rtype, day)
            # an in-flight file of a compaction (a range in its name) is ours to clean: we hold
            # the lock; a writer's in-flight file (one seq) is left to the writer's recovery
            stale = [
                n
                for n, _ in backend.list_entries(rtype, day)
                if is_tmp(n) and (seqs := parse_part(n[1:-4])) and seqs[0] != seqs[1]
            ]
            current, superseded = live_files(backend.list_files(rtype, day))
            if stale or superseded:
                backend.remove(rel, stale + [f.name for f in superseded])
                result.cleaned += len(stale) + len(superseded)
                if log is not None and superseded:
                    log.info(
                        f"{rel}: removed {len(superseded)} file(s) already merged by an earlier compaction"
                    )
            infos = [i for f in current if (i := file_info(backend, rtype, day, f)) is not None]
            for group in plan(infos, target_rows):
                table, inputs = merge(backend, rtype, day, group)
                first_seq = min(i.part.first or 0 for i in group)
                last_seq = max(i.part.last or 0 for i in group)
                lows = [i.min_ts for i in group if i.min_ts is not None]
                highs = [i.max_ts for i in group if i.max_ts is not None]
                meta = files.file_metadata(
                    first=first_seq,
                    last=last_seq,
                    record_type=rtype,
                    date=day,
                    rows=table.num_rows,
                    min_ts=min(lows) if lows else None,
                    max_ts=max(highs) if highs else None,
                    compacted_from=inputs,
                )
                data = files.encode(table, meta)
                name = part_name(first_seq, last_seq)
                backend.publish(rel, name, data)  # the merged file first ...
                backend.remove(rel, inputs)  # ... then its inputs
                done = Compacted(
                    rtype, day, name, backend.path_of(f"{rel}/{name}"), table.num_rows, data.size, inputs
                )
                result.merged.append(done)
                if on_merge is not None:
                    on_merge(done)
    return result


# -- prune -------------------------------------------------------------------------------------


@dataclass
class Pruned:
    rtype: str
    day: str
    files: int
    bytes: int


def prune(
    backend: Backend,
    older_than_days: int,
    *,
    dry_run: bool = False,
    on_prune: Callable[[Pruned], None] | None = None,
) -> list[Pruned]:
    """Remove every partition dated more than ``older_than_days`` days before today (New York)."""
    cutoff = today() - timedelta(days=older_than_days)
    removed: list[Pruned] = []
    with backend.maintenance_lock():
        for rtype, day in selected_partitions(backend, None, None, cutoff - timedelta(days=1)):
            entries = backend.list_entries(rtype, day)
            done = Pruned(rtype, day, len(entries), sum(size for _, size in entries))
            if not dry_run:
                backend.remove_partition(rtype, day)
            removed.append(done)
            if on_prune is not None:
                on_prune(done)
    return removed
