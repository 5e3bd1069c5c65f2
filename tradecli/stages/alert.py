"""alert: deliver signals to the console, Discord, Slack, e-mail or a webhook; one receipt each.

Reads the ``type: "signal"`` records ``trade screen`` writes (other records are passed by and
counted as skipped) and sends each to every channel named by ``--to`` (repeatable; default
``console``, or ``to = [...]`` in the config file's ``[alert]`` table):

* ``console``: a coloured line per alert on stderr;
* ``discord[:URL]``: the design document's embed through a webhook;
* ``slack[:URL]``: Block Kit blocks with a plain-text fallback through an incoming webhook;
* ``email[:ADDRESS,...]``: an HTML table and a text alternative over SMTP with STARTTLS or TLS;
* ``webhook[:URL]``: the signal as JSON, signed with HMAC-SHA256 when a secret is set.

Channels deliver concurrently, each in order; a slow or dead channel never holds up the others.
Timeouts, 5xx and 429 are retried with exponential backoff and jitter (``Retry-After`` and rate
limit headers honoured); a permanent error (bad token, unknown webhook) is reported once and stops
that channel. Every alert handed to a channel is journaled first in the outbox under the state
directory; what is not delivered when retries run out, or when the stage is stopped or killed,
is sent first by the next run (``--flush-outbox`` sends it alone), and nothing with a
``delivered`` receipt is sent twice.

Receipts on stdout (NDJSON, or Arrow like the input): ``type: "alert"``, ``alert_id`` (stable: a
hash of the signal's strategy, symbol, time, side, prices and message), ``channel`` (secrets
masked), ``status`` (``delivered``, ``failed``, ``queued``, ``dry-run``), ``attempts``,
``latency_ms``, ``error``, plus ``timestamp``, ``symbol``, ``strategy`` and ``signal_ts``;
``--dry-run`` adds the rendered ``payload`` and sends nothing. Webhook URLs, tokens and SMTP
passwords come from the environment or the config file and never appear in any output.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tradecli.errors import UsageError
from tradecli.identity import ID_FIELDS, alert_id
from tradecli.options import Common, parse_duration, split_list, stage_options

if TYPE_CHECKING:
    import pyarrow as pa

    from tradecli.delivery import Engine
    from tradecli.outbox import Outbox
    from tradecli.runtime import Session
    from tradecli.wire import ErrorSink, RecordReader, RecordWriter

__all__ = [
    "ID_FIELDS",
    "AlertOptions",
    "alert",
    "alert_id",
    "command",
    "receipts_batch",
    "select",
    "to_records",
]
DEFAULTS: dict[str, Any] = {"retries": 5, "backoff": 0.5, "timeout": 10.0}


@dataclass
class AlertOptions:
    to: list[str] = field(default_factory=lambda: ["console"])
    min_confidence: float | None = None
    strategies: list[str] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)
    dry_run: bool = False
    retries: int = 5
    backoff: float = 0.5
    timeout: float = 10.0
    subject: str | None = None
    ca_file: str | None = None


@dataclass
class Selection:
    signals: pa.RecordBatch  # the signals to send
    skipped: int = 0  # records that are not signals
    filtered: int = 0  # signals --min-confidence / --strategies / --symbols left out
    missing_symbol: list[dict[str, Any]] = field(default_factory=list)


def select(
    batch: pa.RecordBatch,
    *,
    min_confidence: float | None = None,
    strategies: Iterable[str] = (),
    symbols: Iterable[str] = (),
) -> Selection:
    """The signal records of a batch that pass the filters (columnar)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = batch.schema.names
    if "type" not in names:
        return Selection(batch.slice(0, 0), skipped=batch.num_rows)
    types = batch.column("type")
    if pa.types.is_dictionary(types.type):
        wanted = pc.equal(types.dictionary, "signal").fill_null(False)
        if wanted.true_count == len(wanted) and not types.null_count:
            is_signal = None  # every row is a signal (screen's output): nothing to filter
        else:
            is_signal = pc.take(wanted, types.indices).fill_null(False)
    else:
        is_signal = pc.equal(types.cast(pa.string()), "signal").fill_null(False)
    signals = batch if is_signal is None else batch.filter(is_signal)
    out = Selection(signals, skipped=batch.num_rows - signals.num_rows)
    if not signals.num_rows:
        return out
    if "symbol" in names:
        if signals.column("symbol").null_count:
            has_symbol = signals.column("symbol").is_valid()
            out.missing_symbol = to_records(signals.filter(pc.invert(has_symbol)))
            signals = signals.filter(has_symbol)
    else:
        out.missing_symbol = to_records(signals)
        signals = signals.slice(0, 0)
    mask = None

    def both(m: pa.Array) -> pa.Array:
        return m if mask is None else pc.and_(mask, m)

    if min_confidence is not None:
        if "confidence" in names:
            mask = both(pc.greater_equal(signals.column("confidence"), min_confidence).fill_null(False))
        else:
            mask = both(pa.array([False] * signals.num_rows))
    wanted_strategies = [s.lower() for s in strategies]
    if wanted_strategies:
        if "strategy" in names:
            lowered = pc.utf8_lower(signals.column("strategy").cast(pa.string()))
            mask = both(pc.is_in(lowered, value_set=pa.array(wanted_strategies)).fill_null(False))
        else:
            mask = both(pa.array([False] * signals.num_rows))
    wanted_symbols = [s.upper() for s in symbols]
    if wanted_symbols:
        symbol = signals.column("symbol").cast(pa.string())
        mask = both(pc.is_in(symbol, value_set=pa.array(wanted_symbols)).fill_null(False))
    kept = signals if mask is None else signals.filter(mask)
    out.filtered = signals.num_rows - kept.num_rows
    out.signals = kept
    return out


def to_records(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """Rows as dicts, times as integer ns; a null field is None. Converts a column at a time."""
    from tradecli.channels.columns import to_records as rows

    return rows(batch)


def receipts_batch(receipts: list[dict[str, Any]]) -> pa.RecordBatch:
    """Receipt dicts as one record batch in the wire's field types."""
    from tradecli.receipts import receipts_batch as build

    return build(receipts)


CHUNK = 8192  # alerts handed to the channels at once: bounds the memory one batch takes
QUEUED_CHUNK = 2048  # the same when alerts are queued for workers: fewer rows as dicts at once
BACKLOG = 4 * CHUNK  # receipts waiting to be written before the reading thread waits
WRITE_EVERY = 0.05  # seconds: receipts settled one by one are written at most this often


class Alerter:
    """The stage's core: signal batches in, receipts out, through the channels' workers."""

    def __init__(self, engine: Engine, options: AlertOptions, outbox: Outbox | None = None) -> None:
        self.engine = engine
        self.options = options
        self.outbox = outbox
        self.skipped = 0
        self.filtered = 0
        self.missing_symbol: list[dict[str, Any]] = []

    @classmethod
    def create(
        cls,
        options: AlertOptions,
        *,
        env: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        warn: Callable[[str], None] = lambda message: None,
        mask: Callable[[str], str] = lambda text: text,
        add_secret: Callable[[str], None] = lambda secret: None,
        flushing: bool = False,
    ) -> Alerter:
        """Configure the channels, open the outbox (unless a dry run or console only), start."""
        from tradecli.channels import Settings, build
        from tradecli.delivery import Engine
        from tradecli.outbox import Outbox

        settings = Settings(
            env=dict(os.environ) if env is None else env,
            config=config or {},
            timeout=options.timeout,
            ca_file=options.ca_file,
            subject=options.subject,
            warn=warn,
            dry_run=options.dry_run,
        )
        channels = []
        seen: set[str] = set()
        for spec in options.to:
            channel = build(spec, settings)
            for secret in channel.secrets:
                add_secret(secret)
            if channel.key not in seen:
                seen.add(channel.key)
                channels.append(channel)
        outbox = None
        if not options.dry_run and (flushing or any(not c.inline for c in channels)):
            from tradecli.state import state_dir as resolve

            outbox = Outbox(resolve("alert", state_dir), warn)
            outbox.open()
        engine = Engine(
            channels,
            outbox=outbox,
            retries=options.retries,
            backoff=options.backoff,
            warn=warn,
            mask=mask,
            dry_run=options.dry_run,
        )
        engine.start()
        return cls(engine, options, outbox)

    def feed(self, batch: pa.RecordBatch) -> None:
        """Hand a batch's signals to the channels (receipts come from :meth:`collect`)."""
        chosen = select(
            batch,
            min_confidence=self.options.min_confidence,
            strategies=self.options.strategies,
            symbols=self.options.symbols,
        )
        self.skipped += chosen.skipped
        self.filtered += chosen.filtered
        self.missing_symbol += chosen.missing_symbol
        from tradecli.channels.columns import Chunk

        engine = self.engine
        step = CHUNK if engine.dry_run or all(c.inline for c in engine.channels) else QUEUED_CHUNK
        for start in range(0, chosen.signals.num_rows, step):
            engine.submit(Chunk(chosen.signals.slice(start, step)))

    def collect(self) -> list[pa.RecordBatch]:
        return self.engine.collect()

    def finish(self) -> None:
        self.engine.finish()

    def idle(self) -> bool:
        return self.engine.idle()

    def stop(self) -> list[pa.RecordBatch]:
        return self.engine.stop()

    def close(self) -> None:
        self.engine.close()
        if self.outbox is not None:
            self.outbox.close()


def alert(
    batches: Iterable[pa.RecordBatch],
    options: AlertOptions,
    *,
    state_dir: str | os.PathLike[str] | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> Iterator[pa.RecordBatch]:
    """Deliver the signals in ``batches`` to ``options.to``; yield receipt batches as they settle.

    Example: trade ingest --source sim | trade enrich | trade screen | trade alert --to discord
    """
    alerter = Alerter.create(options, state_dir=state_dir, warn=warn)
    finished = False
    try:
        for batch in batches:
            alerter.feed(batch)
            yield from alerter.collect()
        alerter.finish()
        while not alerter.idle():
            alerter.engine.wake.wait(0.2)
            alerter.engine.wake.clear()
            yield from alerter.collect()
        finished = True
        yield from alerter.collect()
    finally:
        if not finished:
            alerter.stop()
        alerter.close()


# ---------------------------------------------------------------------------------------------
# The command: a reading thread feeds the core; the main thread writes receipts as they settle.


class _Input(threading.Thread):
    """Reads stdin and feeds the core in its own thread; the main thread writes the receipts.

    So a quiet input never holds receipts back, and a signal goes from the pipe to its channel
    workers without waiting for the main thread.
    """

    def __init__(self, reader: RecordReader, alerter: Alerter, errors: ErrorSink) -> None:
        super().__init__(name="alert-input", daemon=True)
        from queue import SimpleQueue

        self.reader = reader
        self.alerter = alerter
        self.errors = errors
        self.events: SimpleQueue[tuple[str, Any]] = SimpleQueue()

    def post(self, kind: str, value: Any) -> None:
        self.events.put((kind, value))
        self.alerter.engine.wake.set()

    def run(self) -> None:
        from tradecli.wire import sniff

        engine = self.alerter.engine
        try:
            head = self.reader.input.peek(6)
            self.post("format", sniff(head) if head else None)
            for batch in self.reader.batches():
                if engine.closed:
                    return
                self.alerter.feed(batch)
                for rec in self.alerter.missing_symbol:
                    self.errors.reject(
                        "signal",
                        "field 'symbol' is missing (signal records need it)",
                        record=rec,
                        field="symbol",
                    )
                self.alerter.missing_symbol = []
        except BaseException as exc:  # handed to the main thread, which ends the stage with it
            self.post("error", exc)
        else:
            self.post("end", None)


class _Format:
    """The input's format, once the reading thread has seen the first bytes."""

    format: str | None = None


def _serve(
    session: Session,
    alerter: Alerter,
    writer: RecordWriter,
    source: _Input | None,
    known: _Format,
    format_given: bool = False,
) -> None:
    from queue import Empty

    from tradecli.receipts import status_counts

    counts = {"delivered": 0, "failed": 0}
    held: list[pa.RecordBatch] = []
    format_known = source is None or format_given
    wake = alerter.engine.wake
    last_write = -WRITE_EVERY

    def emit(force: bool = True) -> None:
        """Write the receipts held; unless ``force``, at most once every WRITE_EVERY seconds (or
        when a batch's worth is held), so a burst of single receipts is written in batches."""
        nonlocal held, last_write
        if not held or not format_known:
            return
        now = time.monotonic()
        if not force and now - last_write < WRITE_EVERY and sum(b.num_rows for b in held) < CHUNK:
            return
        batches, held = held, []
        last_write = now
        for batch in batches:
            for status, count in status_counts(batch).items():
                if status in counts:
                    counts[status] += count
            writer.write(batch)

    def pause() -> float:
        """How long to wait for news: until held receipts are due, at most half a second."""
        if held and format_known:
            return max(0.0, min(0.5, last_write + WRITE_EVERY - time.monotonic()))
        return 0.5

    if source is None:
        alerter.finish()
    else:
        source.start()
    input_done = source is None
    try:
        while True:
            session.stopper.check()
            wake.clear()
            while source is not None and not input_done:
                try:
                    kind, value = source.events.get_nowait()
                except Empty:
                    break
                if kind == "format":
                    known.format, format_known = value, True
                elif kind == "end":
                    input_done = format_known = True
                    alerter.finish()
                else:
                    raise value
            held += alerter.collect()
            emit(force=False)
            if alerter.outbox is not None:
                alerter.outbox.sync()
            if input_done and alerter.idle():
                held += alerter.collect()
                emit()
                break
            with session.stopper.blocking():
                wake.wait(pause())
    except BaseException as ending:
        held += alerter.stop()
        format_known = True
        if not isinstance(ending, BrokenPipeError):
            with contextlib.suppress(BrokenPipeError, OSError):  # stdout may be what failed
                emit()
        raise
    finally:
        _tally(session, alerter, counts)
        alerter.close()
    _verdict(alerter, counts["failed"])


def _tally(session: Session, alerter: Alerter, counts: dict[str, int]) -> None:
    extra = session.counters.extra
    engine = alerter.engine
    for name, value in (
        ("delivered", counts["delivered"]),
        ("queued", len(engine.outstanding)),
        ("failed", counts["failed"]),
        ("filtered", alerter.filtered),
        ("skipped", alerter.skipped),
        ("duplicates", engine.duplicates),
    ):
        if value:
            extra[name] = value
    if engine.duplicates:
        engine.warn(f"{engine.duplicates} alert(s) were delivered by an earlier run and not sent again")


def _verdict(alerter: Alerter, failed: int) -> None:
    """Exit 77 when a channel refused our credentials, 69 when any alert was not delivered."""
    from tradecli.errors import AuthError, Unavailable

    engine = alerter.engine
    if engine.stopped_channels:
        reasons = "; ".join(f"{label}: {why}" for label, (why, _) in engine.stopped_channels.items())
        error = AuthError if any(auth for _, auth in engine.stopped_channels.values()) else Unavailable
        raise error(f"channel stopped: {reasons}")
    if engine.outstanding:
        where = alerter.outbox.dir if alerter.outbox is not None else "the outbox"
        raise Unavailable(
            f"{len(engine.outstanding)} alert(s) not delivered; they wait in {where} "
            "for the next run (or trade alert --flush-outbox)"
        )
    if failed:
        raise Unavailable(f"{failed} alert(s) refused by their channel (see the receipts' error)")


def _options(
    cli: dict[str, Any], table: Mapping[str, Any], env: Mapping[str, str]
) -> tuple[AlertOptions, str | None]:
    """Options > environment > the config file's [alert] table > defaults."""

    def listed(value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return split_list(value)
        if isinstance(value, list):
            return [str(v).strip() for v in value if str(v).strip()]
        raise UsageError(f"config file [alert]: expected a list, got {value!r}")

    def duration(name: str) -> float:
        if cli[name] is not None:
            return parse_duration(cli[name])
        value = table.get(name)
        if value is None:
            return float(DEFAULTS[name])
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        try:
            return parse_duration(str(value))
        except typer.BadParameter as err:
            raise UsageError(f"config file [alert] {name}: {err}") from None

    to = list(cli["to"] or []) or listed(table.get("to")) or ["console"]
    min_confidence = cli["min_confidence"]
    try:
        if min_confidence is None and table.get("min_confidence") is not None:
            min_confidence = float(table["min_confidence"])
        retries = (
            cli["retries"] if cli["retries"] is not None else int(table.get("retries", DEFAULTS["retries"]))
        )
    except (TypeError, ValueError):
        raise UsageError(
            "config file [alert]: min_confidence must be a number and retries a whole number"
        ) from None
    options = AlertOptions(
        to=to,
        min_confidence=min_confidence,
        strategies=split_list(cli["strategies"]) if cli["strategies"] else listed(table.get("strategies")),
        symbols=split_list(cli["symbols"]) if cli["symbols"] else listed(table.get("symbols")),
        dry_run=cli["dry_run"],
        retries=retries,
        backoff=duration("backoff"),
        timeout=duration("timeout"),
        subject=cli["subject"],
        ca_file=cli["ca_file"] or env.get("TRADE_CA_FILE") or table.get("ca_file"),
    )
    if options.timeout <= 0:
        raise UsageError("--timeout must be more than 0")
    return options, cli["state_dir"]


@stage_options("alert", reads=True, writes=True)
def command(
    to: Annotated[
        list[str] | None,
        typer.Option(
            "--to",
            metavar="CHANNEL[:TARGET]",
            help="Where to send; repeat for several: console, discord[:URL], slack[:URL], "
            "email[:ADDRESS,...], webhook[:URL]. Keep URLs in the environment or the config file "
            "(argv is visible in ps).",
            show_default="console, or [alert] to = [...] in the config file",
        ),
    ] = None,
    min_confidence: Annotated[
        float | None,
        typer.Option(
            "--min-confidence", min=0.0, max=1.0, metavar="X", help="Send only signals with confidence >= X."
        ),
    ] = None,
    strategies: Annotated[
        str | None,
        typer.Option(
            "--strategies", metavar="LIST", help="Send only signals of these strategies (comma-separated)."
        ),
    ] = None,
    symbols: Annotated[
        str | None,
        typer.Option(
            "--symbols", metavar="LIST", help="Send only signals for these tickers (comma-separated)."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Send nothing: each rendered payload goes to stdout in its receipt (status dry-run).",
        ),
    ] = False,
    flush_outbox: Annotated[
        bool,
        typer.Option("--flush-outbox", help="Send what waits in the outbox, then exit; stdin is not read."),
    ] = False,
    retries: Annotated[
        int | None,
        typer.Option(
            "--retries",
            min=0,
            metavar="N",
            help="Retries per alert on timeouts, 5xx and 429.",
            show_default="5",
        ),
    ] = None,
    backoff: Annotated[
        str | None,
        typer.Option(
            "--backoff",
            metavar="DURATION",
            help="First retry delay; doubles each retry, jittered, capped at 30s.",
            show_default="500ms",
        ),
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option("--timeout", metavar="DURATION", help="Timeout of each request.", show_default="10s"),
    ] = None,
    subject: Annotated[
        str | None,
        typer.Option(
            "--subject",
            metavar="TEMPLATE",
            help="E-mail subject; {field} or {field:spec} names a signal field.",
            show_default="CRITICAL TRADING ALERT: {symbol}",
        ),
    ] = None,
    ca_file: Annotated[
        str | None,
        typer.Option(
            "--ca-file",
            metavar="PEM",
            help="Trust these CA certificates for SMTP and HTTPS instead of the system's (or TRADE_CA_FILE).",
        ),
    ] = None,
    state_dir: Annotated[
        str | None,
        typer.Option(
            "--state-dir",
            metavar="DIR",
            help="Where the outbox lives.",
            show_default="$TRADECLI_STATE_DIR/alert or $XDG_STATE_HOME/tradecli/alert",
        ),
    ] = None,
    *,
    common: Common,
) -> None:
    """Deliver signals to the console, Discord, Slack, e-mail or a webhook; write receipts.

    Example: trade ingest --source sim | trade enrich | trade screen | trade alert --to discord --to console
    """
    cli = dict(
        to=to,
        min_confidence=min_confidence,
        strategies=strategies,
        symbols=symbols,
        dry_run=dry_run,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
        subject=subject,
        ca_file=ca_file,
        state_dir=state_dir,
    )
    for name, value in (("--backoff", backoff), ("--timeout", timeout)):
        if value is not None:
            try:
                parse_duration(value)
            except typer.BadParameter as err:
                raise typer.BadParameter(str(err), param_hint=name) from None
    if dry_run and flush_outbox:
        raise typer.BadParameter(
            "--dry-run sends nothing, so it cannot flush the outbox", param_hint="--flush-outbox"
        )
    with common.session() as session:
        from tradecli.config import load_config, section, warn_if_insecure
        from tradecli.wire import Input, RecordReader

        log = session.log
        config = load_config()
        table = section(config, "alert")
        for secret in _config_secrets(table):
            log.add_secret(secret)
        warn_if_insecure(config, "alert", log.warning)
        options, state = _options(cli, table, os.environ)
        errors = common.error_sink(session)
        alerter = Alerter.create(
            options,
            config=table,
            state_dir=state,
            warn=log.warning,
            mask=log.mask,
            add_secret=log.add_secret,
            flushing=flush_outbox,
        )
        alerter.engine.backlog_cap = BACKLOG  # the reading thread waits for the writer
        known = _Format()
        writer = common.writer(session, like=known)
        source = None
        if not flush_outbox:
            reader = RecordReader(Input(sys.stdin.buffer), errors)  # no session: read in a thread
            source = _Input(reader, alerter, errors)
        _serve(session, alerter, writer, source, known, format_given=common.format is not None)


def _config_secrets(table: Mapping[str, Any]) -> list[str]:
    """Every string in [alert] under a key that names a secret (masked before anything is logged)."""
    from tradecli.config import SECRET_HINTS

    out = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            out += _config_secrets(value)
        elif isinstance(value, str) and any(h in key.lower() for h in SECRET_HINTS):
            out.append(value)
    return out
