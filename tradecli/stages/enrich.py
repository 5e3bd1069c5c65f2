"""enrich: add streaming indicator columns to market records, per symbol, equal to TA-Lib's.

Every trade updates its symbol's indicators and comes out with them; a bar updates its symbol's
bar series from its close and volume (and ATR from high, low and close); a quote comes out with
``mid`` and ``spread``; any other record passes through untouched, in its place in the stream.

Defaults, as in the design document: ``vwap``, ``sma_20``, ``ema_9``, ``rsi_14``,
``avg_volume_20``, ``volume_ratio``, and ``gap_pct``, ``day_high``, ``day_low``, ``day_volume``.
``--sma``, ``--ema``, ``--rsi``, ``--volume-avg`` and ``--atr`` take comma-separated periods (or
``none``); ``--macd F,S,G`` and ``--bbands N,K`` may be given more than once. Column names carry
the periods: ``ema_21``, ``macd_12_26_9``, ``macd_signal_12_26_9``, ``macd_hist_12_26_9``,
``bb_upper_20_2``, ``bb_middle_20_2``, ``bb_lower_20_2``, ``atr_14``.

Values equal TA-Lib's after warm-up and are null before it. ``vwap``, ``day_high``, ``day_low``
and ``day_volume`` are per session, which starts at ``--session-start`` in ``--timezone``; the
averages run on across sessions. ``--state FILE`` keeps the indicator state across restarts:
restored on start, saved on exit and every ``--checkpoint``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from tradecli.options import Common, parse_duration, split_list, stage_options

if TYPE_CHECKING:
    import pyarrow as pa

    from tradecli.indicators import IndicatorState, Spec
    from tradecli.runtime import Session

MAX_PERIOD = 100_000  # TA-Lib's bound


def enrich(
    batches: Iterable[pa.RecordBatch], *, spec: Spec | None = None, state: IndicatorState | None = None
) -> Iterator[pa.RecordBatch]:
    """Market record batches in, the same batches with indicator columns out.

    ``state`` carries the indicators (pass one restored from a snapshot to continue a stream);
    otherwise a fresh one is made from ``spec`` (default: the design document's indicators).

    Example: trade ingest --source sim | trade enrich --ema 9,21 --macd 12,26,9 | trade screen
    """
    from tradecli.indicators import IndicatorState, Spec

    engine = state if state is not None else IndicatorState(spec or Spec())
    for batch in batches:
        yield engine.add(batch)


# ---------------------------------------------------------------------------------------------
# Options


def _periods(text: str, option: str, minimum: int = 1) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none", "off"):
        return ()
    out: list[int] = []
    for part in split_list(text):
        try:
            period = int(part)
        except ValueError:
            raise typer.BadParameter(
                f"{part!r} is not a period (a whole number)", param_hint=option
            ) from None
        if not minimum <= period <= MAX_PERIOD:
            raise typer.BadParameter(
                f"period {period} is out of range ({minimum}..{MAX_PERIOD:,})", param_hint=option
            )
        out.append(period)
    return tuple(dict.fromkeys(out))


def _macd(texts: list[str]) -> tuple[tuple[int, int, int], ...]:
    out: list[tuple[int, int, int]] = []
    for text in texts:
        parts = split_list(text)
        if len(parts) != 3:
            raise typer.BadParameter(
                f"{text!r}: expected FAST,SLOW,SIGNAL such as 12,26,9", param_hint="--macd"
            )
        fast, slow = _periods(parts[0], "--macd", 2), _periods(parts[1], "--macd", 2)
        signal = _periods(parts[2], "--macd", 1)
        if not (fast and slow and signal):
            raise typer.BadParameter(f"{text!r}: expected three periods", param_hint="--macd")
        out.append((fast[0], slow[0], signal[0]))
    return tuple(dict.fromkeys(out))


def _bbands(texts: list[str]) -> tuple[tuple[int, float], ...]:
    out: list[tuple[int, float]] = []
    for text in texts:
        parts = split_list(text)
        if len(parts) not in (1, 2):
            raise typer.BadParameter(f"{text!r}: expected PERIOD,K such as 20,2", param_hint="--bbands")
        period = _periods(parts[0], "--bbands", 2)
        try:
            k = float(parts[1]) if len(parts) == 2 else 2.0
        except ValueError:
            raise typer.BadParameter(f"{parts[1]!r} is not a number", param_hint="--bbands") from None
        if not period or not (0 <= k <= 100):
            raise typer.BadParameter(
                f"{text!r}: expected PERIOD >= 2 and 0 <= K <= 100", param_hint="--bbands"
            )
        out.append((period[0], k))
    return tuple(dict.fromkeys(out))


def build_spec(
    *,
    sma: str = "20",
    ema: str = "9",
    rsi: str = "14",
    volume_avg: str = "20",
    macd: list[str] | None = None,
    bbands: list[str] | None = None,
    atr: str = "none",
    session_start: str = "04:00",
    timezone: str = "America/New_York",
) -> Spec:
    """The indicator spec from option text; ``typer.BadParameter`` names the bad option."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from tradecli.indicators import Spec, parse_clock

    try:
        parse_clock(session_start)
    except ValueError:
        raise typer.BadParameter(
            f"{session_start!r} is not a time of day (HH:MM, 24-hour)", param_hint="--session-start"
        ) from None
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(
            f"{timezone!r} is not a time zone (such as America/New_York)", param_hint="--timezone"
        ) from None
    return Spec(
        sma=_periods(sma, "--sma"),
        ema=_periods(ema, "--ema"),
        rsi=_periods(rsi, "--rsi", 2),
        volume_avg=_periods(volume_avg, "--volume-avg"),
        macd=_macd(macd or []),
        bbands=_bbands(bbands or []),
        atr=_periods(atr, "--atr"),
        session_start=session_start,
        timezone=timezone,
    )


# ---------------------------------------------------------------------------------------------
# State file


def load_state(engine: IndicatorState, path: str, session: Session) -> None:
    """Continue from ``path`` if it holds a state for these indicators; else start cold, saying why."""
    from tradecli.errors import TradeError

    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (FileNotFoundError, NotADirectoryError):
        return  # a first run: the file is written on exit
    except OSError as err:
        raise TradeError(f"cannot read state file {path}: {err.strerror}", 74) from err
    try:
        engine.restore(data)
    except ValueError as err:
        session.log.warning(f"state file {path}: {err}; starting cold (it will be replaced)")
        return
    session.log.info(f"continuing from {path}: {engine.symbols:,} symbols")


def save_state(engine: IndicatorState, path: str) -> None:
    """Write the state atomically (a reader sees the old file or the new one)."""
    from tradecli.errors import TradeError
    from tradecli.state import atomic_write

    try:
        atomic_write(path, engine.snapshot())
    except OSError as err:
        raise TradeError(f"cannot write state file {path}: {err.strerror or err}", 74) from err


@stage_options("enrich", reads=True, writes=True)
def command(
    sma: Annotated[
        str, typer.Option("--sma", metavar="LIST", help="Simple moving averages of the price: sma_N.")
    ] = "20",
    ema: Annotated[
        str,
        typer.Option("--ema", metavar="LIST", help="Exponential averages (seeded with the SMA): ema_N."),
    ] = "9",
    rsi: Annotated[
        str, typer.Option("--rsi", metavar="LIST", help="Wilder's RSI, periods >= 2: rsi_N.")
    ] = "14",
    volume_avg: Annotated[
        str,
        typer.Option(
            "--volume-avg",
            metavar="LIST",
            help="Average volume over N records: avg_volume_N; volume_ratio uses the first.",
        ),
    ] = "20",
    macd: Annotated[
        list[str] | None,
        typer.Option(
            "--macd",
            metavar="F,S,G",
            help="MACD with fast, slow and signal periods (repeatable): macd_F_S_G, "
            "macd_signal_F_S_G, macd_hist_F_S_G.",
            show_default="none",
        ),
    ] = None,
    bbands: Annotated[
        list[str] | None,
        typer.Option(
            "--bbands",
            metavar="N,K",
            help="Bollinger bands, SMA +/- K population standard deviations (repeatable): "
            "bb_upper_N_K, bb_middle_N_K, bb_lower_N_K.",
            show_default="none",
        ),
    ] = None,
    atr: Annotated[
        str,
        typer.Option("--atr", metavar="LIST", help="Average true range of bars (Wilder): atr_N."),
    ] = "none",
    session_start: Annotated[
        str,
        typer.Option(
            "--session-start",
            metavar="HH:MM",
            help="When a session starts (vwap and day_* reset), local time in --timezone.",
        ),
    ] = "04:00",
    timezone: Annotated[
        str, typer.Option("--timezone", metavar="TZ", help="The time zone of --session-start.")
    ] = "America/New_York",
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            metavar="FILE",
            help="Restore the indicator state from FILE on start; save it there on exit and "
            "every --checkpoint.",
            show_default=False,
        ),
    ] = None,
    checkpoint: Annotated[
        str,
        typer.Option(
            "--checkpoint",
            metavar="DURATION",
            help="With --state: also save this often while running (0 = only on exit).",
        ),
    ] = "60s",
    *,
    common: Common,
) -> None:
    """Add per-symbol streaming indicators (VWAP, SMA, EMA, RSI, ...) to market records.

    Example: trade ingest --source sim | trade enrich --ema 9,21 --macd 12,26,9 | trade screen
    """
    spec = build_spec(
        sma=sma,
        ema=ema,
        rsi=rsi,
        volume_avg=volume_avg,
        macd=macd,
        bbands=bbands,
        atr=atr,
        session_start=session_start,
        timezone=timezone,
    )
    every = parse_duration(checkpoint)
    with common.session() as session:
        from tradecli.indicators import IndicatorState
        from tradecli.tuning import keep_freed_memory

        keep_freed_memory()
        engine = IndicatorState(spec)

        def count_symbols() -> None:
            session.counters.extra["symbols"] = engine.symbols

        session.on_close(count_symbols)
        if state:
            path = os.path.expanduser(state)
            load_state(engine, path, session)
            session.on_close(lambda: save_state(engine, path))
        reader = common.reader(session)
        writer = common.writer(session, like=reader)
        saved = time.monotonic()
        for batch in enrich(reader.batches(), state=engine):
            writer.write(batch)
            if state and every > 0 and time.monotonic() - saved >= every:
                try:
                    save_state(engine, path)
                except Exception as err:  # a failed checkpoint is reported; the stream goes on
                    session.log.warning(str(err))
                saved = time.monotonic()
            session.stopper.check()
