"""The delivery engine behind ``trade alert``: one worker per channel, retries, pacing, outbox.

Each channel (except the console, which writes in the reading thread) gets its own worker thread
and its own queue, so a slow or dead channel never holds up another or the input. A worker sends
its alerts in order, one at a time:

* transient failures (timeouts, connection errors, 5xx, 429) are retried up to ``retries`` times
  with exponential backoff and equal jitter (``backoff`` x 2^n, capped at 30 s, each delay drawn
  from its upper half); a ``Retry-After`` or Discord ``retry_after`` replaces the backoff, and the
  ``X-RateLimit-*`` buckets and Slack's one message a second pace every send;
* when the retries run out (or a service asks for a wait longer than two minutes) the alert is
  ``queued``: it stays in the outbox, the channel counts as
  down, later alerts for it are queued at once, and the channel is probed with backoff (up to a
  minute apart). When a probe gets through, the queued alerts are sent (oldest first);
* a permanent failure (bad token, unknown webhook, STARTTLS missing) is reported once and stops
  the channel: that alert and the later ones get ``failed`` receipts; a payload the service
  refuses (400) fails that alert only;
* a failure after the request went out (a timeout waiting for the answer) makes the next success
  a *possible duplicate*, said in the log and in the receipt's ``error``.

Queues keep up to 1,000 alerts per channel in memory and spill the rest, in order, to a file next
to the outbox journal, so memory stays bounded however far a channel falls behind.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import IO, TYPE_CHECKING, Any

import orjson

from tradecli.channels import Channel, Outcome
from tradecli.outbox import Entry, Outbox

if TYPE_CHECKING:
    import pyarrow as pa

    from tradecli.channels.columns import Chunk

BACKOFF_CAP = 30.0
PROBE_CAP = 60.0
IDLE_SECONDS = 5.0
MAX_WAIT = 120.0  # a Retry-After longer than this queues the alert instead of holding the channel
QUEUE_CAP = 1000


def backoff(attempt: int, base: float, cap: float = BACKOFF_CAP, rng: random.Random | None = None) -> float:
    """Delay before retry ``attempt`` (1, 2, ...): exponential, capped, drawn from its upper half."""
    ceiling = min(cap, base * (2 ** max(attempt - 1, 0)))
    return float(ceiling / 2 + (rng or random).uniform(0, ceiling / 2))


@dataclass
class Item:
    """One alert on its way to one channel."""

    alert_id: str
    signal: dict[str, Any]
    arrived: float  # time.monotonic() when this run took it
    maybe_sent: bool = False  # an earlier attempt may have reached the channel


class SpoolQueue:
    """FIFO of items: up to ``cap`` in memory, the rest appended to ``spill`` and read back in order."""

    def __init__(self, spill: Path | None = None, cap: int = QUEUE_CAP) -> None:
        self._memory: deque[Item] = deque()
        self._cap = cap
        self._spill_path = spill
        self._writer: IO[bytes] | None = None
        self._reader: IO[bytes] | None = None
        self._spilled = 0

    def __len__(self) -> int:
        return len(self._memory) + self._spilled

    def put(self, item: Item) -> None:
        if self._spilled == 0 and (len(self._memory) < self._cap or self._spill_path is None):
            self._memory.append(item)
            return
        if self._writer is None:
            assert self._spill_path is not None
            fd = os.open(self._spill_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            self._writer = os.fdopen(fd, "wb")
            self._reader = open(self._spill_path, "rb")  # noqa: SIM115 - closed in close()
        rec = {"id": item.alert_id, "s": item.signal, "t": item.arrived, "m": item.maybe_sent}
        self._writer.write(orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY))
        self._spilled += 1

    def _refill(self) -> None:
        assert self._writer is not None and self._reader is not None
        self._writer.flush()
        while self._spilled and len(self._memory) < self._cap:
            rec = orjson.loads(self._reader.readline())
            self._memory.append(Item(rec["id"], rec["s"], rec["t"], rec["m"]))
            self._spilled -= 1
        if not self._spilled:  # all read back: start the file afresh
            self._writer.seek(0)
            self._writer.truncate()
            self._reader.seek(0)

    def get(self) -> Item | None:
        if not self._memory and self._spilled:
            self._refill()
        return self._memory.popleft() if self._memory else None

    def take(self) -> Item:
        """The head of a queue known not to be empty."""
        item = self.get()
        assert item is not None
        return item

    def push_front(self, item: Item) -> None:
        """Put an item taken with :meth:`get` back at the head."""
        self._memory.appendleft(item)

    def drain(self) -> list[Item]:
        out: list[Item] = []
        while (item := self.get()) is not None:
            out.append(item)
        return out

    def close(self) -> None:
        for handle in (self._writer, self._reader):
            if handle is not None:
                handle.close()
        self._writer = self._reader = None
        if self._spill_path is not None:
            self._spill_path.unlink(missing_ok=True)


class Engine:
    """Receives alerts from the reading thread, hands them to channel workers, collects receipts."""

    def __init__(
        self,
        channels: list[Channel],
        *,
        outbox: Outbox | None = None,
        retries: int = 5,
        backoff: float = 0.5,
        warn: Callable[[str], None] = lambda message: None,
        mask: Callable[[str], str] = lambda text: text,
        dry_run: bool = False,
    ) -> None:
        self.channels = channels
        self.outbox = outbox
        self.retries = retries
        self.backoff = backoff
        self.warn = warn
        self.mask = mask
        self.dry_run = dry_run
        self.receipts: SimpleQueue[dict[str, Any] | pa.RecordBatch] = SimpleQueue()
        self.wake = threading.Event()  # set whenever a receipt is posted
        self.backlog = 0  # receipts posted and not yet collected
        self.backlog_cap: int | None = None  # submit() waits while the backlog is this large
        self.room = threading.Condition()
        self.stop_event = threading.Event()
        self.workers: dict[str, Worker] = {}
        self.outstanding: set[tuple[str, str]] = set()  # (alert id, channel key) last seen as queued
        self.stopped_channels: dict[str, tuple[str, bool]] = {}  # label -> (reason, auth)
        self.duplicates = 0
        self.final = False
        self.intake = threading.Lock()
        self.closed = False

    # -- set-up -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start a worker per queued channel, with the outbox backlog of earlier runs first."""
        if self.dry_run:
            return
        for channel in self.channels:
            if channel.inline:
                continue
            worker = Worker(self, channel)
            self.workers[channel.key] = worker
        if self.outbox is not None:
            now = time.monotonic()
            for key, entries in self.outbox.backlog.items():
                worker_for = self.workers.get(key)
                if worker_for is None:
                    self.warn(
                        f"outbox: {len(entries)} alert(s) for {entries[0].label} wait for a run "
                        "that sends to that channel; kept"
                    )
                    continue
                for entry in entries:
                    worker_for.put(Item(entry.alert_id, entry.signal, now, entry.tried))
            if any(k in self.workers for k in self.outbox.backlog):
                count = sum(len(v) for k, v in self.outbox.backlog.items() if k in self.workers)
                self.warn(f"outbox: sending {count} alert(s) left by an earlier run first")
        for worker in self.workers.values():
            worker.start()

    # -- the reading thread's side ------------------------------------------------------------
    def submit(self, chunk: Chunk) -> None:
        """Hand a batch of alerts to every channel; receipts known at once are posted.

        Inline channels and dry runs settle the whole batch here, a column at a time. Once
        :meth:`stop` has begun nothing more is taken: a batch being handed over when the stop
        came is finished first (it is in the outbox and gets its receipts). With a
        ``backlog_cap`` this waits while that many receipts wait to be collected, so memory
        stays bounded when receipts are written more slowly than alerts come in.
        """
        self._wait_for_room()
        with self.intake:
            if self.closed:
                return
            now = time.monotonic()
            out: list[pa.RecordBatch] = []
            for channel in self.channels:
                if self.dry_run:
                    out.append(self._dry_run(channel, chunk))
                elif channel.inline:
                    out.append(self._inline(channel, chunk, now))
                else:
                    self._queue(channel, chunk, now)
            self.post_many(out)

    def _queue(self, channel: Channel, chunk: Chunk, now: float) -> None:
        """Journal a batch for a worker's channel, then queue it (alerts it delivered before skipped)."""
        worker = self.workers[channel.key]
        fresh: list[tuple[str, dict[str, Any]]] = []
        for alert_id, signal in zip(chunk.ids, chunk.records, strict=True):
            if self.outbox is not None and self.outbox.was_delivered(alert_id, channel.key):
                self.duplicates += 1
                continue
            fresh.append((alert_id, signal))
        if self.outbox is not None:
            self.outbox.add([Entry(i, channel.key, channel.label, s) for i, s in fresh])
        worker.put_many([Item(alert_id, signal, now) for alert_id, signal in fresh])

    def _wait_for_room(self) -> None:
        if self.backlog_cap is None:
            return
        with self.room:
            while self.backlog >= self.backlog_cap and not self.closed and not self.stop_event.is_set():
                self.room.wait(0.1)

    def collect(self) -> list[pa.RecordBatch]:
        """The receipts posted so far, as record batches in the order they were posted."""
        from tradecli.receipts import receipts_batch

        out: list[pa.RecordBatch] = []
        loose: list[dict[str, Any]] = []
        taken = 0
        while True:
            try:
                item = self.receipts.get_nowait()
            except Empty:
                break
            if isinstance(item, dict):
                loose.append(item)
                taken += 1
                continue
            if loose:
                out.append(receipts_batch(loose))
                loose = []
            out.append(item)
            taken += item.num_rows
        if loose:
            out.append(receipts_batch(loose))
        if taken:
            with self.room:
                self.backlog -= taken
                self.room.notify_all()
        return out

    def post(self, receipt: dict[str, Any]) -> None:
        with self.room:
            self.backlog += 1
        self.receipts.put(receipt)
        self.wake.set()

    def post_many(self, batches: list[pa.RecordBatch]) -> None:
        rows = sum(b.num_rows for b in batches)
        if not rows:
            return
        with self.room:
            self.backlog += rows
        for batch in batches:
            if batch.num_rows:
                self.receipts.put(batch)
        self.wake.set()

    def _dry_run(self, channel: Channel, chunk: Chunk) -> pa.RecordBatch:
        """Render a batch for a channel; receipts carry the payloads (status dry-run)."""
        from tradecli.receipts import receipt_columns

        payload = channel.preview_column(chunk)
        return receipt_columns(chunk, channel.label, "dry-run", attempts=0, latency_ms=0.0, payload=payload)

    def _inline(self, channel: Channel, chunk: Chunk, arrived: float) -> pa.RecordBatch:
        """Render and write a batch for an inline channel (the console); its receipts."""
        from tradecli.receipts import receipt_columns, receipts_batch

        outcomes = channel.send_column(chunk)
        latency = round((time.monotonic() - arrived) * 1000, 3)
        first = outcomes[0] if outcomes else Outcome(True)
        if all(o.ok == first.ok and o.error == first.error for o in outcomes):
            return receipt_columns(
                chunk,
                channel.label,
                "delivered" if first.ok else "failed",
                attempts=1,
                latency_ms=latency,
                error=self.mask(first.error) if first.error else None,
            )
        base: dict[str, Any] = {
            "type": "alert",
            "timestamp": time.time_ns(),
            "channel": channel.label,
            "attempts": 1,
            "latency_ms": latency,
        }
        return receipts_batch(
            [
                {
                    **base,
                    "alert_id": alert_id,
                    "status": "delivered" if outcome.ok else "failed",
                    "error": self.mask(outcome.error) if outcome.error else None,
                    "symbol": signal.get("symbol"),
                    "strategy": signal.get("strategy"),
                    "signal_ts": signal.get("timestamp"),
                }
                for alert_id, signal, outcome in zip(chunk.ids, chunk.records, outcomes, strict=True)
            ]
        )

    def receipt(
        self,
        alert_id: str,
        signal: dict[str, Any],
        channel: Channel,
        status: str,
        attempts: int,
        arrived: float,
        error: str | None,
        payload: str | None = None,
    ) -> dict[str, Any]:
        key = (alert_id, channel.key)
        if status == "queued":
            self.outstanding.add(key)
        else:
            self.outstanding.discard(key)
        rec: dict[str, Any] = {
            "type": "alert",
            "timestamp": time.time_ns(),
            "alert_id": alert_id,
            "channel": channel.label,
            "status": status,
            "attempts": attempts,
            "latency_ms": round((time.monotonic() - arrived) * 1000, 3) if status != "dry-run" else 0.0,
            "error": self.mask(error) if error else None,
            "symbol": signal.get("symbol"),
            "strategy": signal.get("strategy"),
            "signal_ts": signal.get("timestamp"),
        }
        if payload is not None:
            rec["payload"] = payload
        return rec

    # -- ending -------------------------------------------------------------------------------
    def finish(self) -> None:
        """No more input: workers exit once their queues are empty."""
        for worker in self.workers.values():
            worker.finish()

    def idle(self) -> bool:
        return not any(w.is_alive() for w in self.workers.values())

    def stop(self, grace: float = 2.0) -> list[pa.RecordBatch]:
        """Stop now: let sends in flight finish for up to ``grace`` s; queue everything else."""
        self.stop_event.set()
        deadline = time.monotonic() + grace
        taken = self.intake.acquire(timeout=grace)  # a batch being handed over is finished first
        self.closed = True
        if taken:
            self.intake.release()
        for worker in self.workers.values():
            worker.wake()
        for worker in self.workers.values():
            worker.join(max(0.0, deadline - time.monotonic()))
        self.final = True  # workers post nothing more: what is unsettled is queued below
        if self.outbox is not None:
            self.outbox.seal()  # a send that finishes after this stays pending for the next run
        out: list[dict[str, Any]] = []
        for worker in self.workers.values():
            out += worker.leftovers()
        from tradecli.receipts import receipts_batch

        return self.collect() + ([receipts_batch(out)] if out else [])

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


class Worker(threading.Thread):
    """Sends one channel's alerts in order."""

    def __init__(self, engine: Engine, channel: Channel) -> None:
        super().__init__(name=f"alert-{channel.kind}", daemon=True)
        self.engine = engine
        self.channel = channel
        outbox = engine.outbox
        self.queue = SpoolQueue(outbox.spill_path(channel.key, "queue") if outbox else None)
        self.deferred = SpoolQueue(outbox.spill_path(channel.key, "deferred") if outbox else None)
        self.cond = threading.Condition()
        self.finishing = False
        self.state = "up"  # up, down (retries ran out: probing), stopped (permanent failure)
        self.reason: str | None = None
        self.probe_level = 0
        self.next_probe = 0.0
        self.current: Item | None = None
        self.rng = random.Random()

    def put(self, item: Item) -> None:
        with self.cond:
            self.queue.put(item)
            self.cond.notify()

    def put_many(self, items: list[Item]) -> None:
        """Queue a batch of items in order, with one hand-over to the worker."""
        if not items:
            return
        with self.cond:
            for item in items:
                self.queue.put(item)
            self.cond.notify()

    def finish(self) -> None:
        with self.cond:
            self.finishing = True
            self.cond.notify()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify()

    def _next(self) -> tuple[Item, bool] | None:
        """The next item and whether it was waiting in the outbox; None when the worker should end.

        Called with the lock held; waits as needed. While the channel is down, new alerts join the
        queued ones behind, and only the oldest queued alert probes the channel, so the order holds.
        """
        idle_since = time.monotonic()
        idled = False
        while not self.engine.stop_event.is_set():
            now = time.monotonic()
            if self.deferred and self.state == "up":
                return self.deferred.take(), True
            if self.queue:
                return self.queue.take(), False
            if self.deferred and self.state == "down":
                if now >= self.next_probe:
                    return self.deferred.take(), True
                if self.finishing:
                    return None  # the input has ended: the queued alerts wait for the next run
                self.cond.wait(self.next_probe - now)
                continue
            if self.finishing:
                return None
            if not idled and now - idle_since >= IDLE_SECONDS:
                idled = True
                self.cond.release()
                try:
                    self.channel.idle()
                finally:
                    self.cond.acquire()
                continue
            self.cond.wait(IDLE_SECONDS if not idled else None)
        return None

    def run(self) -> None:
        try:
            while True:
                with self.cond:
                    chosen = self._next()
                    self.current = chosen[0] if chosen else None
                if chosen is None:
                    return
                item, waited = chosen
                result = self.deliver(item, waited)
                with self.cond:  # settle, post and clear together, so stop() sees one or the other
                    if result is None or self.engine.final:
                        return  # stopping: the item stays ``current`` and stop() queues it
                    receipt, settle = result
                    if settle is not None and not self._settle(item, settle):
                        return
                    self.current = None
                    if receipt["status"] != "queued":
                        self.engine.post(receipt)
                    elif waited:
                        self.deferred.push_front(item)  # still the oldest; it has its receipt already
                    else:
                        self.deferred.put(item)
                        self.engine.post(receipt)
        finally:
            self.channel.close()
            self.engine.wake.set()  # the main thread notices at once that this worker is done

    # -- one alert ------------------------------------------------------------------------------
    def _settle(self, item: Item, delivered: bool) -> bool:
        outbox = self.engine.outbox
        return outbox.done(item.alert_id, self.channel.key, delivered) if outbox is not None else True

    def deliver(self, item: Item, waited: bool = False) -> tuple[dict[str, Any], bool | None] | None:
        """Send one alert: its receipt, and how to settle it in the outbox (None: keep it pending).

        ``waited``: the alert comes from the outbox queue (a probe while the channel is down).
        None when the engine is stopping before the alert was settled.
        """
        engine, channel = self.engine, self.channel

        def concluded(status: str, attempts: int, error: str | None) -> dict[str, Any]:
            return engine.receipt(item.alert_id, item.signal, channel, status, attempts, item.arrived, error)

        if self.state == "stopped":
            return concluded("failed", 0, f"channel stopped: {self.reason}"), False
        if self.state == "down" and not waited:
            return concluded("queued", 0, f"channel unavailable: {self.reason}"), None
        try:
            rendered = channel.render(item.signal, item.alert_id)
        except Exception as err:  # a signal the channel cannot render fails alone
            return concluded("failed", 0, f"cannot render: {type(err).__name__}: {err}"), False
        limit = 1 if self.state == "down" else 1 + engine.retries
        attempts = 0
        maybe_dup = item.maybe_sent
        while True:
            wait = channel.ready_at() - time.monotonic()
            if (wait > 0 and engine.stop_event.wait(wait)) or engine.stop_event.is_set():
                return None
            if engine.outbox is not None:
                engine.outbox.attempt(item.alert_id, channel.key)
            attempts += 1
            try:
                outcome = channel.send(rendered, item.alert_id)
            except Exception as err:  # a channel bug must not kill its worker: this alert fails alone
                outcome = Outcome(False, f"{type(err).__name__}: {err}")
            if channel.min_interval:
                channel.hold(channel.min_interval)
            if outcome.ok:
                if outcome.wait_after:
                    channel.hold(outcome.wait_after)
                if self.state != "up":
                    engine.warn(f"{channel.label}: reachable again; sending the alerts it missed")
                self.state, self.reason, self.probe_level = "up", None, 0
                note = outcome.note
                if maybe_dup:
                    note = "possibly a duplicate: an earlier attempt may have been delivered" + (
                        f"; {note}" if note else ""
                    )
                    engine.warn(f"{channel.label}: alert {item.alert_id} may have been delivered twice")
                return concluded("delivered", attempts, note), True
            error = outcome.error or "failed"
            maybe_dup = maybe_dup or outcome.maybe_sent
            if not maybe_dup and engine.outbox is not None:
                engine.outbox.not_sent(item.alert_id, channel.key)
            if outcome.stop_channel:
                self.state, self.reason = "stopped", error
                engine.stopped_channels[channel.label] = (error, outcome.auth)
                engine.warn(f"{channel.label}: {error}; this channel stops, the others go on")
                return concluded("failed", attempts, error), False
            if not outcome.retry:
                engine.warn(f"{channel.label}: alert {item.alert_id} refused: {error}")
                return concluded("failed", attempts, error), False
            too_long = outcome.retry_after is not None and outcome.retry_after > MAX_WAIT
            if attempts >= limit or too_long:
                delay = backoff(self.probe_level + 2, engine.backoff, PROBE_CAP, self.rng)
                if too_long and outcome.retry_after is not None:
                    delay = outcome.retry_after  # the service said when: probe then, not before
                    error += f" (asked to wait {outcome.retry_after:g} s)"
                self.probe_level += 1
                self.next_probe = time.monotonic() + delay
                if self.state == "up":
                    engine.warn(
                        f"{channel.label}: {error}; alert {item.alert_id} kept in the outbox after "
                        f"{attempts} attempt(s); later alerts wait there until the channel answers"
                    )
                self.state, self.reason = "down", error
                item.maybe_sent = maybe_dup
                return concluded(
                    "queued", attempts, f"{error} (kept in the outbox after {attempts} attempts)"
                ), None
            if outcome.retry_after is not None:
                channel.hold(outcome.retry_after)
                continue
            if engine.stop_event.wait(backoff(attempts, engine.backoff, rng=self.rng)):
                return None

    def leftovers(self) -> list[dict[str, Any]]:
        """Queued receipts for everything this worker did not settle (the engine is stopping)."""
        engine = self.engine
        with self.cond:
            current, alive = self.current, self.is_alive()
            pending = self.queue.drain()
            self.queue.close()
            self.deferred.close()
        out = []
        if current is not None:
            why = "stopped while sending; it may have been delivered" if alive else "stopped before sending"
            out.append(
                engine.receipt(
                    current.alert_id,
                    current.signal,
                    self.channel,
                    "queued",
                    0,
                    current.arrived,
                    f"{why}; kept in the outbox",
                )
            )
        for item in pending:
            out.append(
                engine.receipt(
                    item.alert_id,
                    item.signal,
                    self.channel,
                    "queued",
                    0,
                    item.arrived,
                    "stopped; kept in the outbox",
                )
            )
        return out
