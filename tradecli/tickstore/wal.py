"""The write-ahead log: one Arrow IPC stream file per segment, appended a batch at a time.

A segment is a sequence of Arrow IPC streams (a new one starts when the columns change), so any
Arrow reader can open it, and ``trade ingest --source file SEGMENT.arrows`` replays it. Each batch
is written by Arrow's IPC writer straight to the file and fsynced (per batch, per interval, or never) before
it counts as stored.

A segment keeps no batches in memory: once a batch is in the file the caller lets it go, and the
roll to Parquet reads the sealed segment back through a memory map (the pages are still in the
page cache, so this costs no copy). Holding the batches instead would keep two segments' worth of
input alive - and that input lives in whatever allocator read it (Python ``bytes`` from a pipe),
where long-lived 8 MB blocks among short-lived ones fragment the heap and the process grows.

Recovery reads the messages in order and stops at the first one that is incomplete or fails
validation: that is the torn tail a crash left, cut off at the last whole batch (kdb+ does the
same with its ``-11!`` count and a truncation).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from tradecli.state import fsync_dir

SUFFIX = ".arrows"


def segment_path(directory: Path, seq: int) -> Path:
    return directory / f"{seq}{SUFFIX}"


def segment_seq(path: Path) -> int | None:
    stem = path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else ""
    return int(stem) if stem.isdigit() else None


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    for path in entries:
        seq = segment_seq(path)
        if seq is not None and path.is_file():
            found.append((seq, path))
    return sorted(found)


def _sync(fd: int) -> None:
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - macOS
        os.fsync(fd)


@dataclass
class Segment:
    """The open segment: its file and how much it holds (its batches are in the file only)."""

    directory: Path
    seq: int
    rows: int = 0
    size: int = 0
    synced_rows: int = 0
    last_sync: float = field(default_factory=time.monotonic)
    created: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.path = segment_path(self.directory, self.seq)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        fsync_dir(self.directory)  # the new name must survive a crash before its records count
        # Arrow's own file: the IPC writer writes straight to the descriptor, without the GIL
        self._file: pa.NativeFile | None = pa.OSFile(str(self.path), mode="a")
        self._fd: int | None = self._file.fileno()
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._schema: pa.Schema | None = None

    @property
    def dirty(self) -> bool:
        return self.synced_rows < self.rows

    def append(self, batch: pa.RecordBatch) -> None:
        assert self._file is not None
        if self._writer is None or not batch.schema.equals(self._schema):
            if self._writer is not None:
                self._writer.close()  # end-of-stream; the next stream carries the new schema
            self._schema = batch.schema
            self._writer = pa.ipc.new_stream(self._file, batch.schema)
        self._writer.write_batch(batch)
        self.size = self._file.tell()
        self.rows += batch.num_rows

    def sync(self) -> int:
        """fsync what was appended; returns how many records that made durable."""
        if self._fd is None or not self.dirty:
            return 0
        _sync(self._fd)
        newly = self.rows - self.synced_rows
        self.synced_rows = self.rows
        self.last_sync = time.monotonic()
        return newly

    def seal(self) -> int:
        """End the last stream, fsync and close; returns the records newly made durable."""
        if self._file is None or self._fd is None:
            return 0
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        newly = self.rows - self.synced_rows
        _sync(self._fd)
        self.synced_rows = self.rows
        self._file.close()
        self._file = self._fd = None
        return newly

    def abandon(self) -> None:
        """Close without sealing (after a failed write): recovery reads what reached the disk."""
        if self._file is not None:
            self._file.close()
            self._file = self._fd = None


@dataclass
class Recovered:
    """What a segment left on disk holds: its whole batches, and where its torn tail began."""

    seq: int
    path: Path
    batches: list[pa.RecordBatch]
    good_bytes: int
    size: int
    problem: str | None = None

    @property
    def rows(self) -> int:
        return sum(b.num_rows for b in self.batches)


def read_segment(seq: int, path: Path, *, full: bool = True) -> Recovered:
    """Every whole batch in a segment, in order, and the byte offset after the last one.

    ``full`` validates every value (what recovery needs to find a torn tail); without it only
    the layout is checked (a segment this process wrote from batches it validated itself).
    """
    size = path.stat().st_size
    batches: list[pa.RecordBatch] = []
    good = 0
    problem: str | None = None
    if size == 0:
        return Recovered(seq, path, batches, 0, 0)
    buffer = pa.memory_map(str(path)).read_buffer()
    position = 0
    while position < size and problem is None:
        source = pa.BufferReader(buffer.slice(position))
        try:
            reader = pa.ipc.open_stream(source)
        except (pa.ArrowInvalid, OSError) as err:
            problem = f"unreadable stream header at byte {position:,} ({err})"
            break
        while True:
            try:
                batch = reader.read_next_batch()
                batch.validate(full=full)
            except StopIteration:
                position += source.tell()
                good = position
                break
            except (pa.ArrowInvalid, OSError) as err:
                problem = f"incomplete batch after byte {good:,} ({err})"
                break
            batches.append(batch)
            good = position + source.tell()
    if problem is None and good < size:
        problem = f"{size - good:,} unreadable bytes after byte {good:,}"
    return Recovered(seq, path, batches, good, size, problem)


def read_sealed(seq: int, path: Path, rows: int) -> list[pa.RecordBatch]:
    """The batches of a segment this process sealed, memory-mapped; an OSError if the file does
    not hold exactly what was written (the roll must never publish less than was acknowledged)."""
    found = read_segment(seq, path, full=False)
    if found.problem is not None or found.rows != rows:
        problem = found.problem or f"{found.rows:,} records where {rows:,} were written"
        raise OSError(f"WAL segment {path.name} does not read back as written: {problem}")
    return found.batches


def truncate(path: Path, length: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, length)
        _sync(fd)
    finally:
        os.close(fd)
