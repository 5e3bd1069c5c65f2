"""ingest: read a market-data feed and write one record per event to stdout.

Sources:

* ``sim`` (the default): a simulated session for a universe of symbols - trades and quotes with a
  previous close, some symbols gapping 10-30 % at the open on a burst of volume. ``--seed`` makes it
  reproducible byte for byte; ``--rate`` paces it in events per second with wall-clock timestamps.
* ``file PATH...``: NDJSON, CSV, Parquet or Arrow IPC files (``-`` for stdin), normalised to the
  record fields; ``--speed`` replays at the recorded pace or faster.

``--count`` and ``--duration`` bound any source. Records go out as NDJSON unless ``--format arrow``
(or ``TRADE_FORMAT=arrow``) says otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from tradecli.options import Common, parse_duration, split_list, stage_options

if TYPE_CHECKING:
    import pyarrow as pa

    from tradecli.runtime import Session
    from tradecli.wire import ErrorSink

TYPE_NAMES = {
    "trades": "trade",
    "quotes": "quote",
    "bars": "bar",
    "trade": "trade",
    "quote": "quote",
    "bar": "bar",
}


class Source(StrEnum):
    sim = "sim"
    file = "file"


@dataclass
class IngestOptions:
    source: str = "sim"
    paths: list[str] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)
    universe: int | None = None
    types: list[str] | None = None  # record types: trade, quote, bar
    seed: int | None = None
    day: date | None = None
    count: int | None = None
    duration: float | None = None
    rate: float | None = None
    speed: float | None = None  # None = as fast as possible


def _bounded(
    batches: Iterator[pa.RecordBatch], count: int | None, duration: float | None, session: Session
) -> Iterator[pa.RecordBatch]:
    """Stop after ``count`` records or ``duration`` wall-clock seconds, whichever comes first."""
    deadline = None if duration is None else time.monotonic() + duration
    left = count
    for batch in batches:
        if left is not None:
            if left <= 0:
                return
            if batch.num_rows > left:
                batch = batch.slice(0, left)
            left -= batch.num_rows
        yield batch
        if deadline is not None and time.monotonic() >= deadline:
            return
        session.stopper.check()


def _filtered(
    batches: Iterator[pa.RecordBatch], types: list[str] | None, symbols: list[str]
) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted_symbols = pa.array([s.upper() for s in symbols]) if symbols else None
    wanted_types = pa.array(types) if types else None
    for batch in batches:
        mask = None
        if wanted_types is not None:
            mask = pc.is_in(batch.column("type").cast(pa.string()), value_set=wanted_types)
        if wanted_symbols is not None and "symbol" in batch.schema.names:
            by_symbol = pc.is_in(batch.column("symbol").cast(pa.string()), value_set=wanted_symbols)
            mask = by_symbol if mask is None else pc.and_(mask, by_symbol)
        if mask is not None:
            batch = batch.filter(mask)
        if batch.num_rows:
            yield batch


class Feed:
    """The batches of a feed, and the format its input came in (when it read stdin)."""

    def __init__(self, batches: Iterator[pa.RecordBatch], origin: object = None) -> None:
        self._batches = batches
        self._origin = origin

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return self._batches

    @property
    def format(self) -> str | None:
        return getattr(self._origin, "format", None)


def ingest(options: IngestOptions, session: Session, errors: ErrorSink) -> Feed:
    """Normalised record batches from the chosen feed, bounded by --count and --duration.

    Example: trade ingest --source sim --seed 7 --count 1000 | trade enrich
    """
    if options.source == "sim":
        from tradecli.sources.sim import SimConfig, simulate, simulate_live, universe

        types = options.types or ["trade", "quote"]
        config = SimConfig(
            symbols=universe(options.symbols, options.universe),
            trades="trade" in types,
            quotes="quote" in types,
            seed=options.seed,
            day=options.day,
        )

        def counted(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                session.counters.records_in += batch.num_rows
                yield batch

        raw = simulate_live(config, options.rate, session.stopper) if options.rate else simulate(config)
        return Feed(counted(_bounded(raw, options.count, options.duration, session)))

    from tradecli.sources.file import FileOptions, FileReplay, pace, stamp_received

    replay = FileReplay(FileOptions(options.paths, options.speed), session, errors)
    batches = _filtered(replay.batches(), options.types, options.symbols)
    if options.speed is not None:
        batches = pace(batches, options.speed, session)
    return Feed(
        (stamp_received(b) for b in _bounded(batches, options.count, options.duration, session)), replay
    )


def _speed(text: str | None) -> float | None:
    if text is None or text.lower() == "max":
        return None
    try:
        speed = float(text)
    except ValueError:
        raise typer.BadParameter(
            "expected a number (1 = recorded pace) or 'max'", param_hint="--speed"
        ) from None
    if speed <= 0:
        raise typer.BadParameter("must be greater than 0", param_hint="--speed")
    return speed


def _types(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = split_list(text)
    unknown = [n for n in names if n.lower() not in TYPE_NAMES]
    if unknown or not names:
        raise typer.BadParameter(
            f"unknown record type {', '.join(unknown) or text!r}; use trades, quotes, bars",
            param_hint="--types",
        )
    return list(dict.fromkeys(TYPE_NAMES[n.lower()] for n in names))


@stage_options("ingest", reads=True, writes=True)
def command(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PATH...",
            help="Files to replay with --source file ('-' reads stdin).",
            show_default=False,
        ),
    ] = None,
    source: Annotated[Source, typer.Option("--source", "-s", help="Where records come from.")] = Source.sim,
    symbols: Annotated[
        str | None,
        typer.Option(
            "--symbols", metavar="LIST", help="Comma-separated tickers (sim: the universe; file: a filter)."
        ),
    ] = None,
    universe: Annotated[
        int | None,
        typer.Option(
            "--universe",
            min=1,
            metavar="N",
            help="sim: the first N built-in tickers, then synthetic ones.",
            show_default="all 44 built-in tickers",
        ),
    ] = None,
    types: Annotated[
        str | None,
        typer.Option(
            "--types",
            metavar="LIST",
            help="Record types: trades, quotes, bars (sim: trades, quotes).",
            show_default="sim: trades,quotes; file: all",
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", metavar="N", help="sim: seed for a reproducible session.")
    ] = None,
    day: Annotated[
        str | None,
        typer.Option(
            "--date", metavar="YYYY-MM-DD", help="sim: the session date.", show_default="today in New York"
        ),
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", "-n", min=0, metavar="N", help="Stop after N records.")
    ] = None,
    duration: Annotated[
        str | None, typer.Option("--duration", metavar="DURATION", help="Stop after this long, e.g. 30s, 5m.")
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            min=0.001,
            metavar="N",
            help="sim: pace to N events per second (wall-clock timestamps).",
            show_default="as fast as possible",
        ),
    ] = None,
    speed: Annotated[
        str | None,
        typer.Option(
            "--speed",
            metavar="X",
            help="file: replay at X times the recorded pace, or 'max'.",
            show_default="max",
        ),
    ] = None,
    *,
    common: Common,
) -> None:
    """Read a market-data feed and write one record per event.

    Example: trade ingest --source sim --seed 7 --duration 10s | trade enrich | trade screen
    """
    chosen = source.value
    if chosen == "file" and not paths:
        raise typer.BadParameter("--source file needs at least one PATH ('-' for stdin)", param_hint="PATH")
    only_for: dict[str, tuple[str, object]] = {
        "PATH": ("file", paths or None),
        "--speed": ("file", speed),
        "--rate": ("sim", rate),
        "--universe": ("sim", universe),
        "--seed": ("sim", seed),
        "--date": ("sim", day),
    }
    for name, (owner, value) in only_for.items():
        if owner != chosen and value is not None:
            raise typer.BadParameter(f"only applies to --source {owner}", param_hint=name)
    if symbols is not None and universe is not None:
        raise typer.BadParameter("give either --symbols or --universe", param_hint="--universe")
    if symbols is not None and not split_list(symbols):
        raise typer.BadParameter(f"{symbols!r} names no symbols", param_hint="--symbols")
    record_types = _types(types)
    if chosen == "sim" and record_types and "bar" in record_types:
        raise typer.BadParameter(
            "the simulated feed makes trades and quotes; bars come from a file", param_hint="--types"
        )
    try:
        session_day = date.fromisoformat(day) if day else None
    except ValueError:
        raise typer.BadParameter(f"{day!r} is not a date (YYYY-MM-DD)", param_hint="--date") from None
    options = IngestOptions(
        source=chosen,
        paths=list(paths or []),
        symbols=split_list(symbols),
        universe=universe,
        types=record_types,
        seed=seed,
        day=session_day,
        count=count,
        duration=parse_duration(duration) if duration else None,
        rate=rate,
        speed=_speed(speed),
    )
    with common.session() as session:
        feed = ingest(options, session, common.error_sink(session))
        common.writer(session, like=feed).write_all(iter(feed))
