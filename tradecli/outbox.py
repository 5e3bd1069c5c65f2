"""The alert outbox: a journal of every alert handed to a channel, kept until it is delivered.

Each ``trade alert`` run appends to its own journal, ``<state dir>/outbox/journal-<pid>-<ns>.ndjson``
(mode 0600, in a 0700 directory), and holds an exclusive ``flock`` on it while it runs. One NDJSON
line per event, written with a single ``write`` so a killed process leaves whole lines:

* ``{"op":"add","id":ALERT_ID,"ch":CHANNEL_KEY,"label":...,"signal":{...}}`` before an alert is
  handed to a channel's worker;
* ``{"op":"try",...}`` before the first attempt to send it (so the next run knows it may have
  reached the channel: a possible duplicate), and ``{"op":"untried",...}`` when every attempt
  so far failed in a way that shows nothing was sent (a refused connection, an error answer);
* ``{"op":"done",...,"status":"delivered"|"failed"}`` once it is settled, *before* its receipt is
  written. An alert with a ``delivered`` receipt is therefore never sent again.

An alert with no ``done`` is pending: retries ran out, the stage was stopped, or the process was
killed. A new run adopts every journal whose owner is gone (its lock is free), sends the pending
alerts of the channels it has first, keeps the others (with a warning naming the channel) and
deletes the adopted files. Journals are compacted when adopted, when the run ends, and when one
passes 32 MiB. Channel keys are hashes (:func:`tradecli.channels.fingerprint`) and labels are
masked: no webhook token, URL or password is ever written here. The journal survives a crash of
the process as soon as a line is written; it is fsynced about once a second and at the end, so a
power cut can lose at most the last second.

The journal also remembers the last 20,000 deliveries, so the same alert (same id, same channel)
arriving again - a replay, an upstream restart - is not delivered twice.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from tradecli.errors import TradeError

MAX_SENT = 20_000
COMPACT_BYTES = 32 << 20
SYNC_SECONDS = 1.0

Key = tuple[str, str]  # (alert id, channel key)


@dataclass
class Entry:
    """A pending alert for one channel."""

    alert_id: str
    key: str
    label: str
    signal: dict[str, Any]
    tried: bool = False  # an earlier attempt may have reached the channel


@dataclass
class Replayed:
    pending: dict[Key, Entry] = field(default_factory=dict)  # in journal order
    sent: OrderedDict[Key, None] = field(default_factory=OrderedDict)
    bad_lines: int = 0


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        yield from handle


def _keyed(path: Path) -> Iterator[tuple[Key, dict[str, Any]]]:
    """The journal's entries with their (alert id, channel) key; unreadable lines are skipped."""
    for line in _lines(path):
        try:
            rec = orjson.loads(line)
            key = (str(rec["id"]), str(rec["ch"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
        yield key, rec


def replay(lines: Iterator[bytes], into: Replayed | None = None) -> Replayed:
    """Pending alerts and recent deliveries from journal lines (a torn last line is skipped)."""
    state = into or Replayed()
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
            key = (str(rec["id"]), str(rec["ch"]))
            op = rec["op"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            state.bad_lines += 1
            continue
        if op == "add":
            if key not in state.pending and key not in state.sent:
                signal = rec.get("signal")
                state.pending[key] = Entry(
                    key[0], key[1], str(rec.get("label", key[1])), signal if isinstance(signal, dict) else {}
                )
                if rec.get("tried"):
                    state.pending[key].tried = True
        elif op == "try":
            if key in state.pending:
                state.pending[key].tried = True
        elif op == "untried":
            if key in state.pending:
                state.pending[key].tried = False
        elif op == "done":
            state.pending.pop(key, None)
            if rec.get("status") == "delivered":
                state.sent[key] = None
                state.sent.move_to_end(key)
        elif op == "sent":
            state.sent[key] = None
    while len(state.sent) > MAX_SENT:
        state.sent.popitem(last=False)
    return state


def _add_line(entry: Entry) -> bytes:
    rec: dict[str, Any] = {
        "op": "add",
        "id": entry.alert_id,
        "ch": entry.key,
        "label": entry.label,
        "signal": entry.signal,
    }
    if entry.tried:
        rec["tried"] = True
    return orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Outbox:
    """One run's journal. Thread-safe: the reading thread adds, channel workers settle."""

    def __init__(self, state_dir: Path, warn: Callable[[str], None] = lambda message: None) -> None:
        self.dir = Path(state_dir) / "outbox"
        self.warn = warn
        self.path: Path | None = None
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._dirty = False
        self._synced = time.monotonic()
        self._size = 0
        self._sent: OrderedDict[Key, None] = OrderedDict()
        self._tried: set[Key] = set()
        self.sealed = False
        self.backlog: dict[str, list[Entry]] = {}  # pending alerts adopted from earlier runs, per channel

    # -- opening: adopt the journals of runs that are gone ---------------------------------------
    def open(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self.dir / f"journal-{os.getpid()}-{time.time_ns()}.ndjson"
            hidden = self.dir / f".{path.name}.new"  # locked before it gets a name others adopt
            fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.replace(hidden, path)
        except OSError as err:
            raise TradeError(f"cannot create the outbox in {self.dir}: {err.strerror}", 74) from err
        self.path, self._fd = path, fd
        state = Replayed()
        adopted: list[tuple[Path, int]] = []
        for other in sorted(self.dir.glob("journal-*.ndjson")):
            if other == path:
                continue
            try:
                ofd = os.open(other, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(ofd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # its run is still going: leave it alone
                os.close(ofd)
                continue
            replay(_lines(other), into=state)
            adopted.append((other, ofd))
        if state.bad_lines:
            self.warn(f"outbox: skipped {state.bad_lines} unreadable journal line(s) (a torn write)")
        data = b"".join(_add_line(e) for e in state.pending.values())
        data += b"".join(orjson.dumps({"op": "sent", "id": i, "ch": c}) + b"\n" for i, c in state.sent)
        _write_all(fd, data)
        os.fsync(fd)
        self._size = len(data)
        self._sent = state.sent
        for entry in state.pending.values():
            self.backlog.setdefault(entry.key, []).append(entry)
            if entry.tried:
                self._tried.add((entry.alert_id, entry.key))
        for other, ofd in adopted:
            for spill in self.dir.glob(f"{other.name}.*.spill"):
                spill.unlink(missing_ok=True)
            other.unlink(missing_ok=True)
            os.close(ofd)
        _fsync_dir(self.dir)

    def spill_path(self, key: str, kind: str) -> Path:
        assert self.path is not None
        return self.dir / f"{self.path.name}.{key}-{kind}.spill"

    # -- journal ----------------------------------------------------------------------------------
    def _append(self, data: bytes) -> bool:
        with self._lock:
            return self._append_locked(data)

    def _append_locked(self, data: bytes) -> bool:
        if self._fd is None or self.sealed:
            return False
        _write_all(self._fd, data)
        self._dirty = True
        self._size += len(data)
        if self._size > COMPACT_BYTES:
            self._compact()
        return True

    def add(self, entries: list[Entry]) -> None:
        """Journal alerts before they are handed to their channels (one write for all)."""
        if entries:
            self._append(b"".join(_add_line(e) for e in entries))

    def attempt(self, alert_id: str, key: str) -> None:
        """An attempt to send is about to start: from here on it may reach the channel."""
        if (alert_id, key) not in self._tried:
            self._tried.add((alert_id, key))
            self._append(orjson.dumps({"op": "try", "id": alert_id, "ch": key}) + b"\n")

    def not_sent(self, alert_id: str, key: str) -> None:
        """The attempts so far certainly did not reach the channel: no longer a possible duplicate."""
        with self._lock:
            if (alert_id, key) in self._tried:
                self._tried.discard((alert_id, key))
                self._append_locked(orjson.dumps({"op": "untried", "id": alert_id, "ch": key}) + b"\n")

    def done(self, alert_id: str, key: str, delivered: bool) -> bool:
        """Settle an alert. False when the outbox was already sealed (the run is ending)."""
        status = "delivered" if delivered else "failed"
        line = orjson.dumps({"op": "done", "id": alert_id, "ch": key, "status": status}) + b"\n"
        with self._lock:
            if not self._append_locked(line):
                return False
            self._tried.discard((alert_id, key))
            if delivered:
                self._sent[(alert_id, key)] = None
                while len(self._sent) > MAX_SENT:
                    self._sent.popitem(last=False)
        return True

    def was_delivered(self, alert_id: str, key: str) -> bool:
        return (alert_id, key) in self._sent

    def sync(self, force: bool = False) -> None:
        """fsync the journal if something was written since the last sync (at most once a second)."""
        with self._lock:
            if self._fd is None or not self._dirty:
                return
            if not force and time.monotonic() - self._synced < SYNC_SECONDS:
                return
            os.fsync(self._fd)
            self._dirty = False
            self._synced = time.monotonic()

    def seal(self) -> None:
        """No more settling: alerts still in flight stay pending for the next run."""
        with self._lock:
            self.sealed = True

    def _compact(self) -> None:
        """Rewrite the journal with only what is pending and the recent deliveries (lock held)."""
        assert self.path is not None and self._fd is not None
        os.fsync(self._fd)
        settled: set[Key] = set()
        tried: set[Key] = set()
        for key, rec in _keyed(self.path):
            if rec.get("op") == "done":
                settled.add(key)
            elif rec.get("op") == "try" or rec.get("tried"):
                tried.add(key)
            elif rec.get("op") == "untried":
                tried.discard(key)
        tmp = self.path.with_name(self.path.name + ".tmp")
        size = 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            seen: set[Key] = set()
            chunk: list[bytes] = []
            for key, rec in _keyed(self.path):
                if rec.get("op") != "add" or key in settled or key in seen:
                    continue
                seen.add(key)
                if key in tried:
                    rec["tried"] = True
                chunk.append(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE))
                if len(chunk) >= 1024:
                    data = b"".join(chunk)
                    _write_all(fd, data)
                    size += len(data)
                    chunk = []
            chunk += [orjson.dumps({"op": "sent", "id": i, "ch": c}) + b"\n" for i, c in self._sent]
            data = b"".join(chunk)
            _write_all(fd, data)
            size += len(data)
            os.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        old, self._fd = self._fd, fd
        os.close(old)
        self._size = size
        self._dirty = False
        _fsync_dir(self.dir)

    def close(self) -> None:
        """Compact, sync and release the journal; it stays for the next run to adopt."""
        with self._lock:
            if self._fd is None:
                return
            try:
                self._compact()
            finally:
                fd, self._fd = self._fd, None
                if fd is not None:
                    os.fsync(fd)
                    os.close(fd)
            if self.path is not None and self._size == 0:
                self.path.unlink(missing_ok=True)  # nothing pending, nothing to remember
        for spill in self.dir.glob(f"{self.path.name if self.path else '?'}.*.spill"):
            spill.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
