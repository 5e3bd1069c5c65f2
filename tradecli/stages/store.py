"""store: keep every record in a durable, partitioned Parquet dataset, and replay it as a stream.

``trade store [PATH]`` takes records of any type on stdin and files them under
``PATH/type=<type>/date=<YYYY-MM-DD>/part-<seq>.parquet``: one directory per record type and New
York calendar date, rows sorted by (symbol, timestamp) inside each file, zstd-compressed, in row
groups of 122,880 rows. DuckDB, Polars, Spark and pyarrow read the dataset as it is. PATH is a
directory (default ``$XDG_DATA_HOME/tradecli/store``), a ``file://`` URI or any URI pyarrow.fs
understands, such as ``s3://bucket/prefix``; the write-ahead log always stays on local disk.

* Nothing acknowledged is lost. Each batch is appended to a write-ahead log segment (an Arrow IPC
  stream) and fsynced before it counts as stored (``--fsync``). Every ``--roll-rows`` records or
  ``--roll-interval`` the segment becomes Parquet files, written under a ``.tmp`` name and
  published with an atomic link and a directory fsync (on object stores, uploaded to the final
  key, which appears only when complete), so no reader ever sees half a file.
* Recovery: on start, segments left by a crash are published before new records are taken. A
  torn log tail is truncated to its last whole batch, with a warning. ``kill -9`` at any moment
  neither loses an fsynced record nor stores one twice. SIGINT or SIGTERM seals and publishes what
  is in hand before exiting.
* Each record type keeps its own columns; a new column is added, never dropped.
* ``--receipts`` writes one record per published file (path, rows, bytes) to stdout.

Subcommands read and look after the store: ``query`` streams records back in time order (the
replay that turns the store into a backtest), ``stats`` reports rows, files, bytes and the age of
the newest record, ``compact`` merges small files, ``prune`` applies the retention.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tradecli.groups import DefaultCommand, DefaultCommandGroup
from tradecli.options import Common, parse_duration, split_list, stage_options

if TYPE_CHECKING:
    import pyarrow as pa

    from tradecli.runtime import Session
    from tradecli.tickstore.backend import Backend
    from tradecli.tickstore.writer import Published, WriterOptions

TYPE_ALIASES = {"trades": "trade", "quotes": "quote", "bars": "bar", "signals": "signal", "alerts": "alert"}

_PATH_HELP = (
    "The store: a directory, file:// or s3://... URI "
    "[default: $TRADE_STORE, else $XDG_DATA_HOME/tradecli/store]."
)
PathArg = Annotated[
    str | None, typer.Argument(metavar="PATH", help=_PATH_HELP, show_default=False, envvar="TRADE_STORE")
]
WalDirOpt = Annotated[
    str | None,
    typer.Option(
        "--wal-dir",
        metavar="DIR",
        help="Where the write-ahead log lives (local disk).",
        show_default="PATH/_tradecli/wal; for object stores under $XDG_STATE_HOME/tradecli/store",
    ),
]
TypeOpt = Annotated[
    str | None,
    typer.Option(
        "--type",
        metavar="LIST",
        help="Record types, comma-separated (trade, quote, bar, signal, ...).",
        show_default="all",
    ),
]
DateOpt = Annotated[
    str | None,
    typer.Option(
        "--date",
        metavar="DATE",
        help="A New York calendar date or range: 2026-11-20, 2026-11-16..2026-11-20, today, yesterday.",
        show_default="all",
    ),
]

app = typer.Typer(
    cls=DefaultCommandGroup,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# -- shared helpers ------------------------------------------------------------------------------


def store_path(path: str | None) -> str | None:
    """PATH, else ``path`` in the config file's ``[store]`` table, else None (the default)."""
    if path:
        return path
    from tradecli.config import load_config, section

    configured = section(load_config(), "store").get("path")
    return str(configured) if configured else None


def open_store(path: str | None, session: Session) -> Backend:
    from tradecli.tickstore.backend import open_backend

    return open_backend(store_path(path), session.log)


def parse_types(text: str | None) -> list[str] | None:
    names = split_list(text)
    if not names:
        return None
    from tradecli.tickstore.layout import valid_type

    out = [
        TYPE_ALIASES.get(n.lower(), n.lower() if n.lower() in ("trade", "quote", "bar") else n) for n in names
    ]
    bad = [n for n in out if not valid_type(n)]
    if bad:
        raise typer.BadParameter(f"{bad[0]!r} is not a record type", param_hint="--type")
    return list(dict.fromkeys(out))


def parse_date_range(text: str | None) -> tuple[Any, Any]:
    if not text:
        return None, None
    from tradecli.tickstore.timeparse import parse_days

    try:
        return parse_days(text)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--date") from None


def parse_fsync(text: str) -> tuple[str, float]:
    """'batch', 'off' or 'interval:100ms' -> (mode, interval seconds)."""
    mode, _, every = text.strip().lower().partition(":")
    if mode in ("batch", "off") and not every:
        return mode, 0.0
    if mode == "interval":
        seconds = parse_duration(every or "100ms")
        if seconds <= 0:
            raise typer.BadParameter("the interval must be greater than 0", param_hint="--fsync")
        return mode, seconds
    raise typer.BadParameter(f"{text!r}: use batch, interval:100ms or off", param_hint="--fsync")


def process_defaults(jemalloc: bool = True) -> None:
    """Process-wide settings for a store command; a setting the user made in the environment is
    left alone.

    With ``jemalloc``, Arrow's jemalloc pool where pyarrow has it: over a long write it holds about
    60 MB less than mimalloc (the default) for the same work and the same CPU, and an Arrow replay
    60 MB less. (An NDJSON replay costs 7% more CPU with it: that one keeps mimalloc.)
    """
    import os
    from contextlib import suppress

    if jemalloc and "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        import pyarrow as pa

        with suppress(NotImplementedError):  # a pyarrow built without jemalloc (macOS, Windows)
            pa.set_memory_pool(pa.jemalloc_memory_pool())


# -- write ---------------------------------------------------------------------------------------


def receipt(published: Published) -> pa.RecordBatch:
    """The record ``--receipts`` writes for a published file."""
    import pyarrow as pa

    from tradecli.records import FIELD_TYPES, TIMESTAMP

    values: dict[str, Any] = {
        "type": "receipt",
        "timestamp": time.time_ns(),
        "source": "store",
        "path": published.path,
        "record_type": published.rtype,
        "date": published.day,
        "rows": published.rows,
        "bytes": published.bytes,
        "seq": published.seq,
        "first_ts": published.min_ts,
        "last_ts": published.max_ts,
        "recovered": published.recovered,
    }
    columns = []
    for name, value in values.items():
        target = FIELD_TYPES.get(name)
        if target == TIMESTAMP:
            columns.append(pa.array([value], type=pa.int64()).cast(TIMESTAMP))
        elif target is not None:
            columns.append(pa.array([value]).cast(target))
        else:
            columns.append(pa.array([value]))
    return pa.record_batch(columns, names=list(values))


def store(
    batches: Any,
    path: str | None = None,
    *,
    options: WriterOptions | None = None,
    log: Any = None,
    on_publish: Any = None,
) -> dict[str, int]:
    """Store every batch durably under PATH; returns counts (stored, files, recovered).

    Example: trade ingest --source sim --rate 500 | trade store ~/ticks
    """
    from tradecli.log import Log
    from tradecli.tickstore.backend import open_backend
    from tradecli.tickstore.writer import StoreWriter, WriterOptions

    log = log or Log("store")
    writer = StoreWriter(open_backend(path, log), options or WriterOptions(), log, on_publish=on_publish)
    with writer:
        for batch in batches:
            writer.append(batch)
    return {"stored": writer.stored, "files": writer.published_files, "recovered": writer.recovered_rows}


@app.command("write", cls=DefaultCommand, hidden=True)
@stage_options("store", reads=True, writes=True)
def command(
    path: PathArg = None,
    fsync: Annotated[
        str,
        typer.Option(
            "--fsync",
            metavar="MODE",
            help="When the log is fsynced: every batch; at most every interval (interval:100ms); "
            "or off (the OS decides).",
        ),
    ] = "batch",
    roll_rows: Annotated[
        int, typer.Option("--roll-rows", min=1, metavar="N", help="Roll the log to Parquet after N records.")
    ] = 500_000,
    roll_interval: Annotated[
        str,
        typer.Option(
            "--roll-interval", metavar="DURATION", help="... or when its oldest record is this old (5s, 1m)."
        ),
    ] = "5s",
    wal_dir: WalDirOpt = None,
    receipts: Annotated[
        bool,
        typer.Option("--receipts", help="Write one record per published file (path, rows, bytes) to stdout."),
    ] = False,
    *,
    common: Common,
) -> None:
    """Store records in a durable, partitioned Parquet dataset that DuckDB reads.

    Subcommands: query, stats, compact, prune (trade store COMMAND --help).

    Example: trade ingest --source sim --rate 500 | trade enrich | tee >(trade store) | trade screen
    """
    process_defaults()
    from tradecli.tickstore.writer import WriterOptions

    mode, interval = parse_fsync(fsync)
    options = WriterOptions(
        fsync=mode,
        fsync_interval=interval,
        roll_rows=roll_rows,
        roll_interval=parse_duration(roll_interval),
        wal_dir=Path(wal_dir).expanduser() if wal_dir else None,
    )
    if options.roll_interval <= 0:
        raise typer.BadParameter("must be greater than 0", param_hint="--roll-interval")
    with common.session() as session:
        _write(path, options, receipts, common, session)


def _write(
    path: str | None, options: WriterOptions, receipts: bool, common: Common, session: Session
) -> None:
    from tradecli.tickstore.writer import StoreWriter
    from tradecli.wire import _row_as_dict

    backend = open_store(path, session)
    reader = common.reader(session)
    errors = reader.errors
    out = common.writer(session, like=reader) if receipts else None
    out_lock = threading.Lock()
    seen = 0

    def publish(published: Published) -> None:
        if out is not None:
            with out_lock:
                out.write(receipt(published))

    def reject(batch: pa.RecordBatch, problems: list[tuple[int, str | None, str]]) -> None:
        for row, field, reason in problems:
            errors.reject(
                f"record {seen + row + 1}",
                reason,
                record=_row_as_dict(batch, row),
                field=field,
                record_number=seen + row + 1,
            )

    writer = StoreWriter(backend, options, session.log, on_publish=publish, reject=reject)

    def finish() -> None:
        try:
            writer.close()
        finally:
            extra = session.counters.extra
            extra["stored"] = writer.stored
            extra["files"] = writer.published_files
            if writer.recovered_rows:
                extra["recovered"] = writer.recovered_rows

    session.on_close(finish)
    writer.open()
    for batch in reader.batches():
        writer.append(batch)
        seen += batch.num_rows
        session.stopper.check()


# -- query ---------------------------------------------------------------------------------------


@app.command("query")
@stage_options("store query", reads=False, writes=True)
def query_command(
    path: PathArg = None,
    types: TypeOpt = None,
    symbols: Annotated[
        str | None, typer.Option("--symbols", metavar="LIST", help="Only these tickers, comma-separated.")
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="TIME",
            help="From this time on (2026-11-24T09:30 is New York time; Z or an offset is honoured).",
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(
            "--to", metavar="TIME", help="Up to this time, exclusive (a date alone: through that day)."
        ),
    ] = None,
    day: DateOpt = None,
    columns: Annotated[
        str | None, typer.Option("--columns", metavar="LIST", help="Only these columns, in this order.")
    ] = None,
    where: Annotated[
        str | None,
        typer.Option(
            "--where",
            metavar="EXPR",
            help='Only records where EXPR is true: price > 100 and symbol in ("AAPL", "TSLA").',
        ),
    ] = None,
    speed: Annotated[
        str | None,
        typer.Option(
            "--speed", metavar="X", help="Replay at X times the recorded pace, or 'max'.", show_default="max"
        ),
    ] = None,
    *,
    common: Common,
) -> None:
    """Stream stored records in time order, as NDJSON or Arrow.

    The replay that turns the store into a backtest: the output is what ingest would have
    written, so it feeds the same pipeline. Records come out in timestamp order across types,
    symbols and files; --speed 1 paces them as they were recorded.

    --where takes comparisons (== != < <= > >=) joined by and, or, not (or &, |, ~), arithmetic
    (+ - * /), in ("A", "B"), == None, abs(), isnull(), notnull() and ts("2026-11-20T09:30"). It
    is parsed, never evaluated; a comparison with a missing value is not true, as in SQL. Times
    without an offset, here and in --from and --to, are New York time.

    Example: trade store query --date 2026-11-20 --type trade | trade enrich | trade screen
    """
    process_defaults(jemalloc=common.format == "arrow")
    from tradecli.stages.ingest import _speed
    from tradecli.tickstore.reader import QueryOptions
    from tradecli.tickstore.timeparse import parse_time

    first_day, last_day = parse_date_range(day)
    bounds: list[int | None] = []
    for value, hint, is_end in ((start, "--from", False), (end, "--to", True)):
        try:
            bounds.append(parse_time(value, end=is_end) if value else None)
        except ValueError as err:
            raise typer.BadParameter(str(err), param_hint=hint) from None
    options = QueryOptions(
        types=parse_types(types),
        symbols=[s.upper() for s in split_list(symbols)],
        start_ns=bounds[0],
        end_ns=bounds[1],
        first_day=first_day,
        last_day=last_day,
        columns=split_list(columns) or None,
        where=where,
    )
    pace_speed = _speed(speed)
    shown = options.columns
    if pace_speed is not None and shown and "timestamp" not in shown:
        options.columns = [*shown, "timestamp"]  # pacing needs the times; they are dropped after
    with common.session() as session:
        from tradecli.tickstore.reader import Query

        plan = Query(open_store(path, session), options)
        if not plan.types:
            stored = plan.backend.list_types()
            session.log.warning(
                f"no stored records of type {', '.join(options.types or [])} (stored: {', '.join(stored)})"
                if stored
                else f"{plan.backend.display} holds no stored records"
            )
        batches = plan.batches()
        if pace_speed is not None:
            from tradecli.sources.file import pace

            batches = pace(batches, pace_speed, session)
            if shown and "timestamp" not in shown:
                # a type without some of the columns (quotes have no price) gives what it has
                batches = (b.select([c for c in shown if c in b.schema.names]) for b in batches)
        common.writer(session).write_all(batches)
        session.counters.records_in = session.counters.records_out


# -- stats ---------------------------------------------------------------------------------------


def _human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TB"


def _ny(ns: int | None) -> str:
    if ns is None:
        return "-"
    from datetime import datetime

    from tradecli.tickstore.timeparse import NEW_YORK

    moment = datetime.fromtimestamp(ns // 10**9, NEW_YORK)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + f".{(ns % 10**9) // 10**6:03d}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(abs(seconds))
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    text = (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return text + (" ago" if seconds >= 0 else " in the future")


def stats_table(report: Any) -> str:
    """trade store stats for people: one line per partition, totals, freshness, the WAL."""
    header = ("TYPE", "DATE", "FILES", "SMALL", "ROWS", "BYTES", "FIRST (NEW YORK)", "LAST (NEW YORK)")
    rows = [
        (
            p.type,
            p.date,
            f"{p.files:,}",
            f"{p.small_files:,}",
            f"{p.rows:,}",
            _human_bytes(p.bytes),
            _ny(p.first_ts),
            _ny(p.last_ts),
        )
        for p in report.partitions
    ]
    total = report.totals()
    rows.append(
        (
            "total",
            f"{total['partitions']:,} partitions",
            f"{total['files']:,}",
            f"{total['small_files']:,}",
            f"{total['rows']:,}",
            _human_bytes(total["bytes"]),
            _ny(total["first_ts"]),
            _ny(total["last_ts"]),
        )
    )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {2, 3, 4, 5}
    lines = [
        "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)).rstrip()
        for r in [header, *rows]
    ]
    lines.append(f"newest record: {_ny(report.newest_ts)} New York ({_age(report.newest_age_seconds)})")
    leftovers = sum(p.superseded_files + p.tmp_files for p in report.partitions)
    if leftovers:
        lines.append(
            f"leftovers of interrupted writes or compactions: {leftovers} (trade store compact removes them)"
        )
    if report.wal_dir:
        lines.append(
            f"write-ahead log: {report.wal_segments} segment(s), "
            f"{_human_bytes(report.wal_bytes)} in {report.wal_dir}"
        )
    return "\n".join(lines) + "\n"


@app.command("stats")
@stage_options("store stats", reads=False, writes=False)
def stats_command(
    path: PathArg = None,
    types: TypeOpt = None,
    day: DateOpt = None,
    wal_dir: WalDirOpt = None,
    output: Annotated[
        str,
        typer.Option(
            "--format", metavar="FORMAT", help="table (for people) or json (for scripts and health checks)."
        ),
    ] = "table",
    *,
    common: Common,
) -> None:
    """Report rows, files, bytes and time range per type and date, and the newest record's age.

    Small files are those under 1,000,000 rows (trade store compact merges them). The JSON
    form has newest_age_seconds, the data-freshness figure for health checks.

    Example: trade store stats --format json | jq .newest_age_seconds
    """
    process_defaults()
    import json
    import sys

    from tradecli.tickstore.maintenance import stats

    if output not in ("table", "json"):
        raise typer.BadParameter(f"{output!r}: use table or json", param_hint="--format")
    first_day, last_day = parse_date_range(day)
    with common.session(summary=False) as session:
        report = stats(
            open_store(path, session),
            types=parse_types(types),
            first=first_day,
            last=last_day,
            wal_dir=Path(wal_dir).expanduser() if wal_dir else None,
        )
        text = json.dumps(report.as_dict(), indent=2) + "\n" if output == "json" else stats_table(report)
        sys.stdout.write(text)
        sys.stdout.flush()


# -- compact -------------------------------------------------------------------------------------


@app.command("compact")
@stage_options("store compact", reads=False, writes=False)
def compact_command(
    path: PathArg = None,
    day: DateOpt = None,
    types: TypeOpt = None,
    target_rows: Annotated[
        int,
        typer.Option(
            "--target-rows",
            min=2,
            metavar="N",
            help="Merged files hold up to N rows; files under N/2 rows count as small.",
        ),
    ] = 2_000_000,
    *,
    common: Common,
) -> None:
    """Merge the small files of each partition into large ones.

    Neighbouring small files (in the order they were written) are merged into one file named
    after the range it holds, part-<first>-<last>.parquet, published atomically before the
    files it replaces are removed: no record is ever missing from the dataset. A glob reader
    listing the directory in the microseconds between the two steps, or after a crash between
    them, could count merged records twice until the next compact removes the leftovers;
    trade store query and stats never do (they skip a file whose range lies inside
    another's).

    Example: trade store compact --date yesterday
    """
    process_defaults()
    from tradecli.tickstore.maintenance import compact

    first_day, last_day = parse_date_range(day)
    with common.session(summary=False) as session:
        started = time.monotonic()
        result = compact(
            open_store(path, session),
            types=parse_types(types),
            first=first_day,
            last=last_day,
            target_rows=target_rows,
            on_merge=lambda m: session.log.info(
                f"type={m.rtype}/date={m.day}: {len(m.inputs)} files -> {m.name} "
                f"({m.rows:,} rows, {_human_bytes(m.bytes)})"
            ),
            log=session.log,
        )
        session.log.info(
            f"{result.files_in:,} files merged into {len(result.merged):,} "
            f"in {time.monotonic() - started:.2f} s"
        )


# -- prune ---------------------------------------------------------------------------------------


@app.command("prune")
@stage_options("store prune", reads=False, writes=False)
def prune_command(
    path: PathArg = None,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Remove dates more than this long ago (days: 2555d is 7 years).",
        ),
    ] = "2555d",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] = False,
    *,
    common: Common,
) -> None:
    """Remove partitions older than the retention period (the design document keeps 7 years).

    Whole dates go, every record type at once; the date is the New York calendar date of the
    partition, compared with today in New York.

    Example: trade store prune --older-than 2555d
    """
    process_defaults()
    from tradecli.tickstore.maintenance import prune

    days = int(parse_duration(older_than) // 86_400)
    if days < 1:
        raise typer.BadParameter("must be at least 1d", param_hint="--older-than")
    with common.session(summary=False) as session:
        verb = "would remove" if dry_run else "removed"
        removed = prune(
            open_store(path, session),
            days,
            dry_run=dry_run,
            on_prune=lambda p: session.log.info(
                f"{verb} type={p.rtype}/date={p.day} ({p.files} files, {_human_bytes(p.bytes)})"
            ),
        )
        total = sum(p.bytes for p in removed)
        session.log.info(
            f"{verb} {len(removed):,} partitions ({sum(p.files for p in removed):,} files, "
            f"{_human_bytes(total)}) older than {days:,} days"
        )
