"""Records in and out over pipes: NDJSON or Arrow IPC, sniffed, micro-batched, flushed per batch.

Reading
    :class:`RecordReader` sniffs the first bytes (``FF FF FF FF`` is an Arrow IPC stream, anything
    else is read as NDJSON) and yields normalised record batches. NDJSON arrives in micro-batches:
    one blocking read takes whatever the pipe holds now, and more is taken while more is waiting,
    up to a cap - so a quiet stream is passed on line by line and a busy one in large, cheap
    batches. An Arrow input may hold several streams one after another (a writer that changed its
    schema ends one stream and starts the next); each is read in turn.

    Bad records never end the stream: each is reported once on stderr with its line (or batch and
    row) and field, kept in ``--errors FILE`` with its reason, and counted; ``--strict`` stops at
    the first with exit 65 after passing on the good records before it.

Writing
    :class:`RecordWriter` writes the format it is told, or the format its input came in. Every
    batch is flushed as soon as it is written, so an alert never waits in a pipe buffer. An Arrow
    output keeps one stream while batches fit its schema (missing columns are filled with nulls,
    compatible types are cast) and starts a new stream when they do not.
"""

from __future__ import annotations

import io
import os
import queue
import select
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import suppress
from typing import IO, Any, BinaryIO, Protocol

import numpy as np
import orjson
import pyarrow as pa

from tradecli import ndjson
from tradecli.errors import DataError, Stopped, TradeError
from tradecli.ndjson import MAX_LINE
from tradecli.records import (
    DICT_STRING,
    FIELD_TYPES,
    Reject,
    from_numpy,
    invalid,
    malformed,
    normalise,
    rebuild_dictionaries,
)
from tradecli.runtime import Session

ARROW_STREAM_MAGIC = b"\xff\xff\xff\xff"
ARROW_FILE_MAGIC = b"ARROW1"
FORMATS = ("ndjson", "arrow")

READ_CAP = 4 << 20  # bytes gathered into one NDJSON micro-batch at most
LINGER_SECONDS = 0.002  # when the pipe was full, wait this long for more before parsing
FINISH_QUIET = 0.2  # when stopping, the input counts as ended once the pipe is quiet this long
FINISH_MAX = 1.0  # ... or this long after the stop at the most (a writer that goes on)
JOIN_ROWS = 65_536  # small Arrow messages already waiting are handed on together, up to this many rows


def _grow_pipe(fd: int) -> None:
    """Ask Linux for a 1 MiB pipe buffer: fewer wake-ups between stages. Best effort."""
    try:
        import fcntl

        fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ
    except (OSError, ImportError, ValueError):
        pass


class Input:
    """Bytes from a file object, with peek and micro-batch reads; interruptible where it blocks."""

    def __init__(
        self, stream: BinaryIO | IO[bytes], session: Session | None = None, name: str = "stdin"
    ) -> None:
        self.name = name
        self.session = session
        self._stream = stream
        self._buffer = bytearray()
        self.eof = False
        self.bytes_read = 0
        self._cancelled = threading.Event()
        self._finish_by: float | None = None  # set by finish(): a monotonic deadline
        self._exact = False  # inside read(): an Arrow message is read whole, deadline or not
        try:
            self._fd: int | None = stream.fileno()
            os.fstat(self._fd)
        except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
            self._fd = None
        if self._fd is not None:
            _grow_pipe(self._fd)

    def cancel(self) -> None:
        """Make a read blocked in another thread give up (within a tenth of a second)."""
        self._cancelled.set()

    def finish(self) -> None:
        """Read on only what the writer has already sent: a pipe ends once it has been quiet for
        FINISH_QUIET (FINISH_MAX at the most); a file or anything else ends at once."""
        import stat
        import time

        pipe = False
        if self._fd is not None:
            with suppress(OSError):
                pipe = stat.S_ISFIFO(os.fstat(self._fd).st_mode)
        self._finish_by = time.monotonic() + (FINISH_MAX if pipe else 0.0)

    def _wait_readable(self) -> None:
        # wait in short steps rather than in one blocking read, so cancel() is seen (a thread
        # must not be inside pyarrow's reader when the interpreter shuts down) and so is a
        # signal the kernel handed to another thread
        assert self._fd is not None
        stopper = self.session.stopper if self.session is not None else None
        while True:
            step = 0.1 if self._finish_by is None else FINISH_QUIET
            if stopper.wait_readable(self._fd, step) if stopper else self._ready(step):
                return
            if self._cancelled.is_set():
                raise ReadCancelled(self.name)
            if self._finish_by is not None:
                raise _Finished

    def rest_of_line(self, limit: int) -> bytes:
        """Up to and including the next newline (the input's end, or ``limit`` bytes, at most),
        read past the finish deadline; what follows the newline is dropped."""
        self._exact = True
        try:
            data = bytearray(self._buffer)
            self._buffer.clear()
            while b"\n" not in data and len(data) <= limit and not self.eof:
                data += self._raw_read(1 << 16)
        finally:
            self._exact = False
        end = data.find(b"\n")
        return bytes(data if end < 0 else data[: end + 1])

    def finish_due(self) -> bool:
        """finish() was called and its deadline has passed: take no new message or block."""
        import time

        return self._finish_by is not None and time.monotonic() >= self._finish_by

    def _raw_read(self, size: int) -> bytes:
        if self._cancelled.is_set():
            raise ReadCancelled(self.name)
        try:
            if not self._exact and self.finish_due():
                raise _Finished
            if self._fd is None:
                chunk = self._read_obj(size)
            elif self.session is not None:
                with self.session.stopper.blocking():
                    self._wait_readable()
                    chunk = os.read(self._fd, size)
            else:
                self._wait_readable()
                chunk = os.read(self._fd, size)
        except _Finished:
            chunk = b""  # the stage is stopping: the input ends here
        if not chunk:
            self.eof = True
        self.bytes_read += len(chunk)
        return chunk

    def _read_obj(self, size: int) -> bytes:
        read1 = getattr(self._stream, "read1", None)
        return bytes(read1(size) if read1 is not None else self._stream.read(size))

    def _ready(self, timeout: float) -> bool:
        if self._fd is None:
            return True
        try:
            readable, _, _ = select.select([self._fd], [], [], timeout)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def peek(self, size: int) -> bytes:
        while len(self._buffer) < size and not self.eof:
            self._buffer += self._raw_read(max(size - len(self._buffer), 1 << 16))
        return bytes(self._buffer[:size])

    def read(self, size: int = -1) -> bytes:
        """Exactly ``size`` bytes unless the input ends first (what pyarrow's reader expects)."""
        self._exact = True
        try:
            return self._read(size)
        finally:
            self._exact = False

    def _read(self, size: int) -> bytes:
        if size is None or size < 0:
            while not self.eof:
                self._buffer += self._raw_read(1 << 20)
            size = len(self._buffer)
        if size <= len(self._buffer):
            out = bytes(self._buffer[:size])
            del self._buffer[:size]
            return out
        # a large message body: take what is buffered, then read just what is missing
        parts = [bytes(self._buffer)]
        self._buffer.clear()
        missing = size - len(parts[0])
        while missing > 0 and not self.eof:
            chunk = self._raw_read(missing)
            parts.append(chunk)
            missing -= len(chunk)
        return b"".join(parts)

    @property
    def consumed(self) -> int:
        """Bytes handed to the reader so far."""
        return self.bytes_read - len(self._buffer)

    def backlog(self) -> int:
        """Bytes that are here already: readable now without waiting for the writer."""
        if self._fd is None:
            return 1 << 62  # an in-memory stream: all of it is here
        try:
            import fcntl
            import struct
            import termios

            (waiting,) = struct.unpack("i", fcntl.ioctl(self._fd, termios.FIONREAD, b"\0\0\0\0"))
        except (OSError, ImportError, ValueError):
            waiting = 0
        return len(self._buffer) + int(waiting)

    def read_available(self, cap: int = READ_CAP) -> bytes:
        """One micro-batch: block for the first bytes, then take whatever else is waiting."""
        if not self._buffer and not self.eof:
            self._buffer += self._raw_read(cap)
        while len(self._buffer) < cap and not self.eof:
            before = len(self._buffer)
            if self._ready(0):
                self._buffer += self._raw_read(cap - len(self._buffer))
            elif before >= (1 << 16) and self._ready(LINGER_SECONDS):
                continue  # a busy writer: a moment's wait buys a larger, cheaper batch
            else:
                break
        out = bytes(self._buffer)
        self._buffer.clear()
        return out

    # pyarrow treats any object with read() as a readable file
    @property
    def closed(self) -> bool:
        return False

    def readable(self) -> bool:
        return True


BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark


def sniff(head: bytes) -> str:
    """'arrow' for an Arrow IPC stream, 'arrow-file' for the file format, else 'ndjson'."""
    if head.startswith(ARROW_STREAM_MAGIC):
        return "arrow"
    if head.startswith(ARROW_FILE_MAGIC):
        return "arrow-file"
    return "ndjson"


class ErrorSink:
    """Where rejected records go: stderr, the --errors file, the count, and --strict."""

    def __init__(self, session: Session, errors_path: str | None = None, strict: bool = False) -> None:
        self.session = session
        self.strict = strict
        self._file: IO[bytes] | None = None
        if errors_path:
            try:
                self._file = open(errors_path, "ab")  # noqa: SIM115 - closed by the session
            except OSError as err:
                raise TradeError(f"cannot open --errors file {errors_path}: {err.strerror}", 74) from err
            session.on_close(self._file.close)

    def reject(
        self,
        where: str,
        reason: str,
        *,
        record: Any = None,
        raw: bytes | None = None,
        field: str | None = None,
        **location: Any,
    ) -> None:
        self.session.counters.rejected += 1
        self.session.log.reject(where, reason, field=field, **location)
        if self._file is not None:
            entry: dict[str, Any] = {"stage": self.session.stage, **location, "field": field, "error": reason}
            if raw is not None:
                entry["input"] = raw.decode("utf-8", errors="backslashreplace")
            if record is not None:
                entry["record"] = record
            self._file.write(orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE))
            self._file.flush()
        if self.strict:
            raise DataError(f"{where}: {reason} (stopped by --strict)")


class RecordReader:
    """Normalised record batches from a byte stream in either format."""

    def __init__(
        self,
        source: Input,
        errors: ErrorSink,
        *,
        label: str | None = None,
        prepare: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None,
    ) -> None:
        self.input = source
        self.errors = errors
        self._where = f"{label} " if label else ""
        self._prepare = prepare or (lambda batch: batch)
        self.session = errors.session
        self.format: str | None = None
        self.when_sniffed: list[Callable[[str], None]] = []  # told the input's format once known
        self._line = 1
        self._batch_no = 0

    def batches(self, prefetch: bool = True) -> Iterator[pa.RecordBatch]:
        """The records, batch by batch. With ``prefetch`` the next batch is read and parsed in a
        thread while the stage works on this one (parsing and encoding release the GIL)."""
        if not prefetch:
            yield from self._read_all()
            return
        yield from _prefetched(self._read_all(), self.session, self.input.cancel, self.input.finish)

    def _read_all(self) -> Iterator[pa.RecordBatch]:
        if self.input.peek(3) == BOM:  # some Windows tools start UTF-8 text with one; not data
            self.input.read(3)
        while True:
            self.session.stopper.check()
            head = self.input.peek(4)
            if not head:
                return
            kind = sniff(self.input.peek(6))
            if kind == "arrow-file":
                raise TradeError(
                    f"{self.input.name} is an Arrow file (ARROW1), which needs seekable input; "
                    "read it with `trade ingest --source file PATH`"
                )
            if self.format is None:
                self.format = kind
                for listener in self.when_sniffed:
                    listener(kind)
            if kind == "arrow":
                if not (yield from self._arrow_stream()):
                    return
            else:
                if self.format == "arrow":
                    self._garbage_after_arrow()
                    return
                yield from self._ndjson()
                return

    # -- NDJSON -------------------------------------------------------------------------------
    def _ndjson(self) -> Iterator[pa.RecordBatch]:
        pending = b""  # the unfinished last line of the previous read
        skipping = False  # inside an over-long line, discarding up to its newline
        while True:
            chunk = self.input.read_available()
            at_eof = not chunk
            if at_eof and not skipping and pending and self.input.finish_due():
                # stopping in the middle of a line: its rest is already on its way, take it too
                chunk = self.input.rest_of_line(MAX_LINE - len(pending))
                at_eof = not chunk
            if skipping:
                newline = chunk.find(b"\n")
                if newline < 0:
                    if at_eof:
                        return
                    continue
                chunk, skipping = chunk[newline + 1 :], False
            data = pending + chunk if pending else chunk
            cut = len(data) if at_eof else data.rfind(b"\n") + 1
            block, pending = data[:cut], data[cut:]
            if block:
                yield from self._decode(block)
            if len(pending) > MAX_LINE:
                self.session.counters.records_in += 1
                line, self._line = self._line, self._line + 1
                pending, skipping = b"", True
                self.errors.reject(
                    f"{self._where}line {line}", f"line is longer than {MAX_LINE:,} bytes; skipped", line=line
                )
            if at_eof:
                return

    def _decode(self, block: bytes) -> Iterator[pa.RecordBatch]:
        decoded = ndjson.decode(block, self._line)
        self._line += block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        rejects = {r.line: r for r in decoded.rejects}
        good: list[tuple[pa.RecordBatch, np.ndarray]] = []
        for batch, lines in zip(decoded.batches, decoded.line_numbers, strict=True):
            batch, bad = normalise(self._prepare(batch))
            if bad:
                keep = np.ones(len(lines), dtype=bool)
                for bad_row in bad:
                    keep[bad_row.row] = False
                    line = int(lines[bad_row.row])
                    rejects[line] = ndjson.LineReject(line, bad_row.reason, b"", bad_row.field)
                lines = lines[keep]
            good.append((batch, lines))
        self.session.counters.records_in += sum(b.num_rows for b, _ in good) + len(rejects)
        if not rejects:
            for batch, _ in good:
                if batch.num_rows:
                    yield batch
            return
        raws = _raw_lines(block, self._line - _count_lines(block))
        first_bad = min(rejects) if self.errors.strict else None
        for batch, lines in good:
            if first_bad is not None:  # --strict: hand on the good rows before the first bad line
                before = int(np.searchsorted(lines, first_bad))
                if before:
                    yield batch.slice(0, before)
                if before < batch.num_rows:
                    break
            elif batch.num_rows:
                yield batch
        for line in sorted(rejects):
            r = rejects[line]
            self.errors.reject(
                f"{self._where}line {line}",
                r.reason,
                raw=r.raw or raws.get(line, b""),
                line=line,
                field=r.field,
            )

    # -- Arrow --------------------------------------------------------------------------------
    def _arrow_stream(self) -> Generator[pa.RecordBatch, None, bool]:
        """One IPC stream; returns False when the input cannot go on after it.

        A message is handed on as soon as nothing else is waiting, so a quiet stream keeps its
        latency. When more messages are already in the pipe (a writer sending many small ones, or
        a stage that fell behind), those are joined into one batch of up to JOIN_ROWS rows: each
        batch costs a stage a fixed overhead, and a backlog of tiny ones would never clear. Only
        the bytes that were there when the first was read are joined: a busy writer is never
        chased, so no batch waits on messages that had not been sent yet.
        """
        try:
            reader = pa.ipc.open_stream(self.input)
        except (pa.ArrowInvalid, OSError) as err:
            return self._unreadable(f"unreadable Arrow stream header ({err})")
        held: list[pa.RecordBatch] = []  # checked batches that go on together
        rows = 0
        until = 0  # held messages are joined up to this input position: what was waiting
        while True:
            if held and (rows >= JOIN_ROWS or self.input.consumed >= until):
                yield _joined(held)
                held, rows = [], 0
            if self.input.finish_due():
                ended = False  # the stage is stopping: the input ends between two messages
            else:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    ended = True
                except (pa.ArrowInvalid, OSError) as err:
                    if held:
                        yield _joined(held)
                    return self._unreadable(f"truncated or corrupt Arrow message ({err})")
                else:
                    self._batch_no += 1
                    if not held:  # join what is here now, never what the writer sends later
                        until = self.input.consumed + self.input.backlog()
                    try:
                        for good in self._checked(batch):
                            if held and not good.schema.equals(held[0].schema):
                                yield _joined(held)
                                held, rows = [], 0
                            held.append(good)
                            rows += good.num_rows
                    except Exception:  # --strict stopped at a bad record: what came before it goes on
                        if held:
                            yield _joined(held)
                        raise
                    continue
            if held:
                yield _joined(held)
            return ended

    def _unreadable(self, reason: str) -> bool:
        """Report a damaged Arrow message as one bad batch; the stream cannot go on after it."""
        self._batch_no += 1
        self.session.counters.records_in += 1
        self.errors.reject(f"{self._where}batch {self._batch_no}", reason, batch=self._batch_no)
        return False

    def _checked(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        number = self._batch_no
        yield from checked(
            self._prepare(batch),
            self.errors,
            lambda row: f"{self._where}batch {number} row {row + 1}",
            lambda row: {"batch": number, "row": row + 1},
        )

    def _garbage_after_arrow(self) -> None:
        rest = self.input.read(1 << 16)
        extra = len(rest)
        while not self.input.eof:
            extra += len(self.input.read(1 << 20))
        self.session.counters.records_in += 1
        self.errors.reject(
            f"{self._where}after batch {self._batch_no}",
            f"{extra:,} bytes after the Arrow stream are not an Arrow stream; ignored",
            raw=rest[:200],
            batch=self._batch_no,
        )


_END = object()


def _joined(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    """One batch of same-schema batches (dictionaries unified)."""
    return batches[0] if len(batches) == 1 else pa.concat_batches(batches)


class ReadCancelled(Exception):
    """The stage stopped consuming; a reader thread gives up its read."""


class _Finished(Exception):
    """Input.finish() was called and nothing more is waiting: the input ends."""


def _prefetched(
    source: Iterator[pa.RecordBatch],
    session: Session,
    cancel: Callable[[], None],
    finish: Callable[[], None] | None = None,
    depth: int = 2,
) -> Iterator[pa.RecordBatch]:
    """Run ``source`` in a thread, ``depth`` batches ahead; its exceptions surface here, in order.

    When the consumer stops early the thread is told to give up and is waited for, so it is
    never left inside native code while the process exits. With ``finish`` (and in the main
    thread, where signals arrive), a first SIGINT/SIGTERM ends the input instead: what was read
    is handed on and the stream ends, so the stage writes every record it took from the pipe.
    """
    handoff: queue.Queue[Any] = queue.Queue(maxsize=depth)
    abandoned = threading.Event()

    def offer(item: Any) -> bool:
        while not abandoned.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in source:
                if not offer(batch):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            offer(exc)
            return
        offer(_END)

    def stop() -> None:
        abandoned.set()
        cancel()
        worker.join(timeout=5)

    stopper = session.stopper
    graceful = finish is not None and threading.current_thread() is threading.main_thread()
    stopper.check()  # stopped before this input began: nothing of it to finish
    worker = threading.Thread(target=produce, name="read-records", daemon=True)
    worker.start()
    session.on_close(stop)  # however the stage ends, even if this generator is never closed
    finishing = False
    stopper.graceful += graceful
    try:
        while True:
            if graceful and not finishing and stopper.signum is not None:
                finishing = True
                assert finish is not None
                finish()  # the reader thread reads only what is already waiting, then ends
            try:
                item = stopper.wait_queue(handoff, finishing=finishing)
            except Stopped:
                if not graceful or stopper.signals > 1:
                    raise
                continue  # the first signal: finish above
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopper.graceful -= graceful
        stop()


def checked(
    batch: pa.RecordBatch,
    errors: ErrorSink,
    where: Callable[[int], str],
    location: Callable[[int], dict[str, Any]],
) -> Iterator[pa.RecordBatch]:
    """Normalise a batch; pass on its good rows and report the bad ones by ``where(row)``.

    Arrow input is fully validated first: its reader checks only the layout, and text that is not
    UTF-8 (or a dictionary index out of range) would break every stage after this one.
    Under --strict the good rows before the first bad one are passed on, then the stage stops.
    """
    errors.session.counters.records_in += batch.num_rows
    rejects: list[tuple[int, Reject, dict[str, Any] | None]] = []  # (row in the input, why, record)
    kept = batch
    origin = np.arange(batch.num_rows)
    if invalid(batch) is not None:
        keep = np.ones(batch.num_rows, dtype=bool)
        for row, field, reason in malformed(batch):
            keep[row] = False
            rejects.append(
                (row, Reject(row, f"field '{field}' is malformed Arrow data ({reason})", field), None)
            )
        origin = np.flatnonzero(keep)
        kept = rebuild_dictionaries(batch.filter(from_numpy(keep)))
    good, bad = normalise(kept)
    rejects += [(int(origin[r.row]), r, _row_as_dict(kept, r.row)) for r in bad]
    rejects.sort(key=lambda item: item[0])
    if rejects and errors.strict:
        first = rejects[0][0]  # every row before it is good, and first in ``good``
        if first:
            yield good.slice(0, first)
    elif good.num_rows:
        yield good
    for row, r, record in rejects:
        errors.reject(where(row), r.reason, record=record, field=r.field, **location(row))


def _count_lines(block: bytes) -> int:
    return block.count(b"\n") + (0 if block.endswith(b"\n") else 1)


def _raw_lines(block: bytes, first_line: int) -> dict[int, bytes]:
    lines = block.split(b"\n")
    if block.endswith(b"\n"):
        lines.pop()
    return {first_line + i: line.rstrip(b"\r") for i, line in enumerate(lines)}


def _row_as_dict(batch: pa.RecordBatch, row: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        cell = col.slice(row, 1)
        if pa.types.is_timestamp(cell.type):
            # ns since the epoch, as NDJSON carries it (as_py() refuses ns without pandas)
            cell = cell.cast(pa.int64())
        try:
            value = cell[0].as_py()
        except (pa.ArrowInvalid, ValueError, OverflowError):
            try:
                value = cell.to_string()
            except (pa.ArrowInvalid, ValueError, OverflowError):
                value = repr(cell.type)
        out[name] = value
    return out


# ---------------------------------------------------------------------------------------------
# Writing


def canonical(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Known fields in their Arrow types (dictionary strings for type/symbol/source)."""
    columns = []
    changed = False
    for name, col in zip(batch.schema.names, batch.columns, strict=True):
        target = FIELD_TYPES.get(name)
        if target is not None and col.type != target:
            with suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                col = col.cast(target)
                changed = True
        columns.append(col)
    return pa.record_batch(columns, names=batch.schema.names) if changed else batch


class HasFormat(Protocol):
    """Anything that knows the format its records came in (a reader, a replay of stdin)."""

    @property
    def format(self) -> str | None: ...


class RecordWriter:
    """Writes batches to a binary stream in NDJSON or Arrow IPC, flushing after each batch."""

    def __init__(
        self,
        stream: BinaryIO | IO[bytes],
        session: Session,
        fmt: str | None = None,
        like: HasFormat | None = None,
    ) -> None:
        self.session = session
        self._stream = stream
        self._fmt = fmt
        self._like = like
        self._arrow: pa.ipc.RecordBatchStreamWriter | None = None
        self._schema: pa.Schema | None = None
        session.on_close(self.close)
        self._warming = False
        if fmt == "ndjson" or (fmt is None and like is None):
            self._warm_up()
        elif fmt is None and like is not None:  # NDJSON out if NDJSON comes in
            listeners = getattr(like, "when_sniffed", None)
            if listeners is not None:
                listeners.append(lambda kind: self._warm_up() if kind == "ndjson" else None)

    def _warm_up(self) -> None:
        """Start importing the NDJSON encoder's library while the first batch is on its way."""
        if not self._warming:
            self._warming = True
            self.session.on_close(ndjson.warm_up())

    @property
    def format(self) -> str:
        if self._fmt is None:
            known = self._like.format if self._like is not None else None
            self._fmt = known if known in FORMATS else "ndjson"
        return self._fmt

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if self.format == "arrow":
            self._write_arrow(batch)
        else:
            self._stream.write(ndjson.encode(batch))
        self._stream.flush()
        self.session.counters.records_out += batch.num_rows

    def write_all(self, batches: Iterator[pa.RecordBatch]) -> None:
        for batch in batches:
            self.write(batch)
            self.session.stopper.check()

    def _write_arrow(self, batch: pa.RecordBatch) -> None:
        batch = canonical(batch)
        if self._arrow is not None and self._schema is not None:
            fitted = _fit(batch, self._schema)
            if fitted is None:
                merged = _merge(self._schema, batch.schema)
                fitted = _fit(batch, merged) if merged is not None else None
                self._arrow.close()  # end this stream; the reader opens the next one
                self._arrow = None
                if fitted is not None:
                    batch = fitted
            else:
                batch = fitted
        if self._arrow is None:
            self._schema = batch.schema
            self._arrow = pa.ipc.new_stream(self._stream, self._schema)
        self._arrow.write_batch(batch)

    def close(self) -> None:
        if self._arrow is not None:
            writer, self._arrow = self._arrow, None
            writer.close()
        self._stream.flush()


def _fit(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch | None:
    """The batch in ``schema`` (missing columns as nulls, safe casts), or None if it does not fit."""
    if batch.schema.equals(schema, check_metadata=False):
        return batch
    names = set(batch.schema.names)
    if not names <= set(schema.names):
        return None
    columns = []
    for f in schema:
        if f.name not in names:
            columns.append(pa.nulls(batch.num_rows, f.type))
            continue
        col = batch.column(f.name)
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                return None
        columns.append(col)
    return pa.record_batch(columns, schema=schema)


def _merge(current: pa.Schema, new: pa.Schema) -> pa.Schema | None:
    """Current columns first, new ones appended - if every shared column keeps a castable type."""
    try:
        return pa.unify_schemas(
            [current.remove_metadata(), new.remove_metadata()], promote_options="permissive"
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None


def string_column(values: Any) -> pa.Array:
    return pa.array(values, type=pa.string()).dictionary_encode().cast(DICT_STRING)
