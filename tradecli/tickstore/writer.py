"""The writing side: append to the WAL, roll to Parquet in the background, recover on start.

Three threads share the work. The caller's thread appends batches to the open WAL segment and
fsyncs them. A ticker fsyncs on ``--fsync interval`` and closes the segment when it is
``roll_interval`` old, so a quiet feed still reaches the Parquet files within seconds. A roller
turns closed segments into Parquet files, one segment at a time and in order, then deletes them;
while it works the next segment fills (at most one segment waits for it, which pushes back on a
producer that is faster than the disk).

Memory: an appended batch is let go as soon as it is in the log; the roller reads the sealed
segment back through a memory map (page cache, no copy). So the writer holds no input beyond the
batch in hand, and the roll's working set - one segment's rows sorted, and their Parquet bytes -
is what ``--roll-rows`` (and ``ROLL_BYTES``) bound.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tradecli.state import atomic_write, fsync_dir
from tradecli.tickstore import files, wal
from tradecli.tickstore.backend import Backend, StoreError, exclusive_lock, makedirs_durable
from tradecli.tickstore.layout import covered, live_files, part_name, partition, tmp_name
from tradecli.tickstore.schemas import RejectRows, SchemaRegistry

LAST_SEQ = "last-seq"
Part = files.PartitionData
ROLL_BYTES = 128 << 20  # a segment also rolls at this size, so wide records keep the roll bounded
ENCODERS = 2  # record types of a segment sorted and compressed at once


@dataclass
class WriterOptions:
    fsync: str = "batch"  # batch | interval | off
    fsync_interval: float = 0.1
    roll_rows: int = 500_000
    roll_interval: float = 5.0
    wal_dir: Path | None = None


@dataclass
class Published:
    """One Parquet file made visible (what ``--receipts`` reports)."""

    rtype: str
    day: str
    name: str
    path: str
    rows: int
    bytes: int
    seq: int
    min_ts: int | None
    max_ts: int | None
    recovered: bool = False


@dataclass
class _Job:
    seq: int
    path: Path
    batches: list[pa.RecordBatch] | None  # None: read the sealed segment back from ``path``
    schemas: dict[str, pa.Schema]
    rows: int = 0


class StoreWriter:
    """Durable appends into a store; see :mod:`tradecli.tickstore` for the protocol."""

    def __init__(
        self,
        backend: Backend,
        options: WriterOptions,
        log: Any,
        *,
        on_publish: Callable[[Published], None] | None = None,
        reject: RejectRows | None = None,
    ) -> None:
        self.backend = backend
        self.options = options
        self.log = log
        self.on_publish = on_publish
        self.reject = reject
        self.registry = SchemaRegistry()
        self.wal_dir = options.wal_dir or backend.wal_dir()
        self.written = 0  # records appended to the WAL
        self.stored = 0  # records made durable (fsynced, or written under --fsync off)
        self.published_rows = 0
        self.published_files = 0
        self.recovered_rows = 0
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._segment: wal.Segment | None = None
        self._last_seq = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        # one closed segment at a time is with the roller: a producer faster than the disk
        # waits here
        self._roller_free = threading.Semaphore(1)
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._exit = ExitStack()
        self._encoders: ThreadPoolExecutor | None = None
        self._opened = False
        self._closed = False

    # -- start ---------------------------------------------------------------------------------
    def open(self) -> StoreWriter:
        """Lock the WAL, learn the stored schemas, recover what a crash left, start the threads."""
        try:
            makedirs_durable(self.wal_dir)
        except OSError as err:
            raise StoreError(f"cannot create the WAL directory {self.wal_dir}: {err.strerror}") from err
        self._exit.enter_context(
            exclusive_lock(
                self.wal_dir / "LOCK",
                f"another trade store is writing with the WAL in {self.wal_dir}",
            )
        )
        self._opened = True
        for stale in self.wal_dir.glob(f".{LAST_SEQ}.*.tmp"):  # an atomic write cut short
            with suppress(FileNotFoundError):
                stale.unlink()
        try:
            self._seed_schemas()
            self._last_seq = self._find_last_seq()
            self._recover()
        except BaseException:
            self._exit.close()
            raise
        for target, name in ((self._roll_loop, "store-roller"), (self._tick_loop, "store-ticker")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _seed_schemas(self) -> None:
        """Learn each type's columns from its newest file (a compaction may remove a file between
        the listing and the read: then the partition is listed again)."""
        for rtype in self.backend.list_types():
            for day in reversed(self.backend.list_dates(rtype)):
                schema = self._newest_schema(rtype, day)
                if schema is not None:
                    self.registry.seed(rtype, schema)
                    break

    def _newest_schema(self, rtype: str, day: str) -> pa.Schema | None:
        for _attempt in range(5):
            current, _ = live_files(self.backend.list_files(rtype, day))
            if not current:
                return None
            newest = max(current, key=lambda f: (f.last or 0, f.name))
            rel = f"{partition(rtype, day)}/{newest.name}"
            try:
                with self.backend.open_input(rel) as handle:
                    return pq.read_schema(handle)
            except FileNotFoundError:
                continue
            except (OSError, pa.ArrowInvalid) as err:
                raise StoreError(f"cannot read the schema of {self.backend.path_of(rel)}: {err}") from err
        raise StoreError(f"{partition(rtype, day)} keeps changing while its schema is read; try again")

    def _find_last_seq(self) -> int:
        marker = self.wal_dir / LAST_SEQ
        last = 0
        try:
            last = int(marker.read_text().strip() or 0)
        except FileNotFoundError:
            # a new WAL directory: never reuse a number that a file in the store already has
            last = self.backend.max_seq()
            atomic_write(marker, f"{last}\n".encode())
        except ValueError:
            last = self.backend.max_seq()
        segments = wal.list_segments(self.wal_dir)
        return max([last] + [seq for seq, _ in segments])

    def _next_seq(self) -> int:
        # milliseconds since the epoch, strictly increasing: numbers from a fresh WAL directory
        # still sort after everything written before
        self._last_seq = max(self._last_seq + 1, time.time_ns() // 1_000_000)
        return self._last_seq

    def _recover(self) -> None:
        for seq, path in wal.list_segments(self.wal_dir):
            found = wal.read_segment(seq, path)
            if found.problem:
                self.log.warning(
                    f"WAL segment {path.name}: {found.problem}; truncated to its last whole batch "
                    f"({found.good_bytes:,} of {found.size:,} bytes kept, {found.rows:,} records)"
                )
                wal.truncate(path, found.good_bytes)
            batches: list[pa.RecordBatch] = []
            for batch in found.batches:
                batches.extend(self.registry.admit(batch, self._recovery_reject(path), lenient=True))
            published = self._publish(_Job(seq, path, batches, self.registry.snapshot()), recovering=True)
            self.recovered_rows += found.rows
            if found.rows and published:
                self.log.info(
                    f"recovered {found.rows:,} records from WAL segment {path.name} "
                    f"({published} file{'s' if published != 1 else ''} published)"
                )
            elif found.rows:
                self.log.info(
                    f"WAL segment {path.name}: its {found.rows:,} records were already published; removed"
                )

    def _recovery_reject(self, path: Path) -> RejectRows:
        def report(batch: pa.RecordBatch, problems: list[tuple[int, str | None, str]]) -> None:
            for row, _, reason in problems[:5]:
                self.log.warning(f"WAL segment {path.name}: record {row + 1} cannot be stored: {reason}")

        return report

    # -- appending -----------------------------------------------------------------------------
    def append(self, batch: pa.RecordBatch) -> None:
        """Append a batch to the WAL; returns once it is as durable as --fsync asks."""
        self._check()
        if batch.num_rows == 0:
            return
        with self._lock:
            for admitted in self.registry.admit(batch, self.reject):
                for part in self._up_to_roll(admitted):
                    segment = self._segment or self._open_segment()
                    try:
                        segment.append(part)
                    except OSError as err:
                        segment.abandon()
                        self._segment = None
                        raise StoreError(f"cannot append to {segment.path}: {err.strerror or err}") from err
                    self.written += part.num_rows
                    if self.options.fsync == "batch":
                        self.stored += self._sync(segment)
                    elif self.options.fsync == "interval":
                        if time.monotonic() - segment.last_sync >= self.options.fsync_interval:
                            self.stored += self._sync(segment)
                    else:
                        self.stored += part.num_rows
                    if segment.rows >= self.options.roll_rows or segment.size >= ROLL_BYTES:
                        self._rotate()

    def _up_to_roll(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        """The batch in pieces that fill the open segment to --roll-rows and no further, so a file
        holds at most that many records however large the input's batches are."""
        offset = 0
        while offset < batch.num_rows:
            held = self._segment.rows if self._segment is not None else 0
            piece = batch.slice(offset, max(self.options.roll_rows - held, 1))
            offset += piece.num_rows
            yield piece

    def _sync(self, segment: wal.Segment) -> int:
        try:
            return segment.sync()
        except OSError as err:
            raise StoreError(f"cannot fsync {segment.path}: {err.strerror or err}") from err

    def _open_segment(self) -> wal.Segment:
        try:
            self._segment = wal.Segment(self.wal_dir, self._next_seq())
        except OSError as err:
            raise StoreError(f"cannot create a WAL segment in {self.wal_dir}: {err.strerror}") from err
        return self._segment

    def _rotate(self) -> None:
        """Close the open segment and hand it to the roller (caller holds the lock)."""
        segment, self._segment = self._segment, None
        if segment is None:
            return
        try:
            newly = segment.seal()
        except OSError as err:
            raise StoreError(f"cannot close {segment.path}: {err.strerror or err}") from err
        if self.options.fsync != "off":
            self.stored += newly
        if segment.rows == 0:
            with suppress(FileNotFoundError):
                segment.path.unlink()
            return
        self._hand_over(_Job(segment.seq, segment.path, None, self.registry.snapshot(), segment.rows))

    def _hand_over(self, job: _Job | None) -> None:
        while not self._roller_free.acquire(timeout=0.2):
            self._check()
        self._check()
        self._queue.put(job)

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    # -- background ----------------------------------------------------------------------------
    def _tick_loop(self) -> None:
        period = min(self.options.roll_interval / 4, 0.5)
        if self.options.fsync == "interval":
            period = min(period, self.options.fsync_interval)
        period = max(period, 0.005)
        try:
            while not self._stop.wait(period):
                with self._lock:
                    segment = self._segment
                    if segment is None:
                        continue
                    now = time.monotonic()
                    if (
                        self.options.fsync == "interval"
                        and segment.dirty
                        and now - segment.last_sync >= self.options.fsync_interval
                    ):
                        self.stored += self._sync(segment)
                    if segment.rows and now - segment.created >= self.options.roll_interval:
                        self._rotate()
        except BaseException as err:
            self._failure = self._failure or err

    def _roll_loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._publish(job)
            except BaseException as err:
                self._failure = self._failure or err
                return
            finally:
                del job  # let the segment go before waiting for the next one
                self._roller_free.release()

    def _encoded(self, job: _Job, batches: list[pa.RecordBatch]) -> Iterator[tuple[Part, pa.Buffer]]:
        """Each partition of a segment with its Parquet bytes; record types are encoded in parallel
        (sorting, copying and compressing release the GIL), and come out in a fixed order."""

        def work(task: Callable[[], list[Part]]) -> list[tuple[Part, pa.Buffer]]:
            meta = partial(files.file_metadata, first=job.seq, last=job.seq)
            return [(part, files.encode(part.table, meta(part))) for part in task()]

        tasks = files.partition_tasks(batches, job.schemas, time.time_ns())
        if len(tasks) == 1:
            yield from work(tasks[0])
            return
        if self._encoders is None:
            self._encoders = ThreadPoolExecutor(max_workers=ENCODERS, thread_name_prefix="store-encode")
        for done in self._encoders.map(work, tasks):
            yield from done

    def _publish(self, job: _Job, recovering: bool = False) -> int:
        """Write a segment's partitions, then delete the segment. Returns the files published."""
        count = 0
        batches = job.batches
        if batches is None:
            try:
                batches = wal.read_sealed(job.seq, job.path, job.rows)
            except OSError as err:
                raise StoreError(f"cannot read back {job.path}: {err}") from err
        for part, data in self._encoded(job, batches):
            rel = partition(part.rtype, part.day)
            name = part_name(job.seq)
            if recovering:
                self.backend.remove_stale_tmp(part.rtype, part.day, {tmp_name(name)})
                if covered(self.backend.list_files(part.rtype, part.day), job.seq):
                    continue  # published before the crash (perhaps compacted since)
            self.backend.publish(rel, name, data)
            count += 1
            with self._count_lock:
                self.published_rows += part.rows
                self.published_files += 1
            if self.on_publish is not None:
                self.on_publish(
                    Published(
                        part.rtype,
                        part.day,
                        name,
                        self.backend.path_of(f"{rel}/{name}"),
                        part.rows,
                        data.size,
                        job.seq,
                        part.min_ts,
                        part.max_ts,
                        recovering,
                    )
                )
        self._retire(job)
        return count

    def _retire(self, job: _Job) -> None:
        atomic_write(self.wal_dir / LAST_SEQ, f"{job.seq}\n".encode())
        with suppress(FileNotFoundError):
            job.path.unlink()
        fsync_dir(self.wal_dir)

    # -- the end -------------------------------------------------------------------------------
    def close(self) -> None:
        """Seal the open segment, publish everything, stop the threads, release the WAL."""
        if self._closed or not self._opened:
            return
        self._closed = True
        try:
            self._stop.set()
            for thread in self._threads[1:]:
                thread.join()
            self._check()
            with self._lock:
                self._rotate()
            if self._threads:
                self._hand_over(None)
                self._threads[0].join()
            self._check()
        finally:
            if self._encoders is not None:
                self._encoders.shutdown(wait=False, cancel_futures=True)
            self._exit.close()

    def __enter__(self) -> StoreWriter:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
