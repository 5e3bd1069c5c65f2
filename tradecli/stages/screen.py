"""screen: run trading strategies over enriched records and write a signal record when one fires.

``screen`` reads what ``trade enrich`` writes and emits ``type: "signal"`` records: ``symbol``,
``timestamp`` (the event time of the record that fired it), ``source``, ``recv_ts``,
``strategy``, ``side`` (long/short), ``signal_type``, ``confidence`` (0 to 1), ``entry_price``,
``stop_loss``, ``target``, ``rr_ratio`` (|target - entry_price| / |entry_price - stop_loss|, 0
when there is no risk) and ``message``, plus the input fields the strategy's rule read (for Gap
& Go: ``price``, ``prev_close``, ``vwap``, ``volume_ratio``), so a signal can be checked or
filtered with ``jq`` without the record behind it.

Only market records (trades, quotes, bars) are screened; for a bar, ``price`` means its
``close``. A strategy fires on the edge: when its condition becomes true for a symbol, not on
every record while it stays true. A record that lacks a field the rule needs neither starts nor
ends a condition. The condition starts afresh each New York day. After a signal the
(symbol, strategy) pair is quiet for the strategy's cooldown, and each strategy gives at most
``max_per_day`` signals per New York day. Cooldowns and days are measured in event time (the
records' timestamps), so a replay screens exactly as the live session did.

Built-in strategies (``trade screen --list`` shows their parameters):

{builtins}

User strategies come from a TOML file (``--strategies FILE``), one ``[strategy.NAME]`` table
each: ``where`` (a condition), ``side``, ``signal_type``, ``entry_price`` (default: the
record's price, a bar's close or a quote's mid), ``stop_loss``, ``target``, ``confidence``
(default 0.5; expressions or numbers), ``message`` (a
template such as ``'{{symbol}} gapped {{gap_pct:.1%}}'``), ``cooldown``, ``max_per_day`` and
``params`` (named numbers the expressions may use, changeable with ``--param``). A
``[builtin.NAME]`` table sets a built-in's parameters, ``cooldown`` and ``max_per_day``; a
top-level ``columns = [...]`` declares extra input columns. ``--where EXPR`` is an ad hoc
strategy named ``where``.

Expressions are numexpr expressions over the record's columns: numbers, + - * / ** %,
comparisons (chains allowed), and/or/not (or & | ~), and numexpr's element-wise functions (abs,
sqrt, log, exp, where, minimum, maximum, ...). They may name the numeric record fields (price,
volume, prev_close, bid, ask, open, high, low, close, ...), enrich's columns (vwap,
volume_ratio, gap_pct, day_high, day_low, day_volume, mid, spread, sma_N, ema_N, rsi_N,
avg_volume_N, atr_N, macd_F_S_G, macd_signal_F_S_G, macd_hist_F_S_G, bb_upper_N_K,
bb_middle_N_K, bb_lower_N_K) and declared columns. Anything else - another name, attribute
access, indexing, text, lambdas, any other call - is refused at start-up with exit status 2;
Python never evaluates user text. Expressions run on whole batches. A null field reads as NaN;
a condition that reads a null field does not change the symbol's state on that record. A row
whose entry, stop, target or confidence comes out NaN or infinite is skipped with one warning.
A column that no record carries at all is reported once (after 10,000 screened records, or at
the end) and the strategies that need it stay silent.

State - each symbol's last condition and last signal per strategy, and the day's signal counts -
lives in the state directory (``--state-dir``, else ``$TRADECLI_STATE_DIR/screen``, else
``$XDG_STATE_HOME/tradecli/screen``): a snapshot rewritten atomically every ``--checkpoint`` and
on exit, and a journal to which each signal is appended before it is written out. A screen
stopped or killed and restarted the same day never fires a signal again and never resets a
count; after a SIGKILL, conditions roll back to the last snapshot, so a set-up in progress may be
missed (a shorter ``--checkpoint`` narrows that). One screen per state directory.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tradecli.options import Common, parse_duration, split_list, stage_options
from tradecli.strategies import BUILTINS, COMMON_KEYS, builtin_module, describe_params, param_defaults

if TYPE_CHECKING:
    import pyarrow as pa

    from tradecli.screener import ScreenState
    from tradecli.strategies import Strategy
    from tradecli.strategies.expressions import StrategyFile, UserSpec


def _duration_text(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _builtin_doc(name: str, bullet: str) -> str:
    module = builtin_module(name)
    params = ", ".join(f"{key} {default}" for key, default, _ in describe_params(module))
    return (
        f"{bullet}{name} ({module.SIDES}): {module.TITLE}. {module.RULE} Parameters: {params}. "
        f"Cooldown {module.COOLDOWN}, at most {module.MAX_PER_DAY} signals a day."
    )


__doc__ = (__doc__ or "").format(builtins="\n".join(_builtin_doc(n, "* ") for n in BUILTINS))


# ---------------------------------------------------------------------------------------------
# Choosing and configuring strategies


class ConfigError(ValueError):
    """A bad option value; ``option`` names the option for the usage error."""

    def __init__(self, message: str, option: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass
class ScreenOptions:
    """What the command line chose; :func:`configure` turns it into strategies."""

    strategies: list[str] = field(default_factory=list)
    strategies_file: str | None = None
    where: list[str] = field(default_factory=list)
    side: str = "long"
    params: list[str] = field(default_factory=list)
    cooldown: float | None = None
    max_per_day: int | None = None


_PARAM = re.compile(r"^\s*([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)\s*=\s*(.+?)\s*$")


def _parse_params(items: Sequence[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        match = _PARAM.match(item)
        if not match:
            raise ConfigError(f"{item!r} is not NAME.KEY=VALUE (e.g. gap_and_go.min_gap=0.08)", "--param")
        name, key, value = match.groups()
        out.setdefault(name, {})[key] = value
    return out


def _limits(
    name: str, values: dict[str, Any], cooldown: float, max_per_day: int, source: str
) -> tuple[float, int, dict[str, Any]]:
    """Cooldown and daily limit after overrides: --param NAME.KEY > --cooldown/--max-per-day > file."""
    rest = dict(values)
    if "cooldown" in rest:
        cooldown = _seconds(rest.pop("cooldown"), f"{name}.cooldown", source)
    if "max_per_day" in rest:
        max_per_day = _count(rest.pop("max_per_day"), f"{name}.max_per_day", source)
    return cooldown, max_per_day, rest


def _seconds(value: Any, what: str, option: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    try:
        return parse_duration(str(value))
    except typer.BadParameter:
        raise ConfigError(f"{what}: {value!r} is not a duration (try 30s, 5m, 1h)", option) from None


def _count(value: Any, what: str, option: str) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigError(f"{what}: {value!r} is not a whole number", option) from None
    if number < 0:
        raise ConfigError(f"{what} must be >= 0 (0 = no limit)", option)
    return number


def load_file(path: str) -> StrategyFile:
    from tradecli.strategies.expressions import ExpressionError, load_strategy_file

    try:
        return load_strategy_file(path, BUILTINS, parse_duration)
    except ExpressionError as err:
        raise ConfigError(str(err), "--strategies") from None


def where_specs(options: ScreenOptions, extra_columns: Iterable[str] = ()) -> list[UserSpec]:
    from tradecli.strategies.expressions import ExpressionError, column_checker, where_spec

    specs = []
    for i, text in enumerate(options.where, start=1):
        name = "where" if i == 1 else f"where_{i}"
        try:
            specs.append(
                where_spec(text, name=name, side=options.side, is_column=column_checker(extra_columns))
            )
        except ExpressionError as err:
            raise ConfigError(str(err), "--where") from None
    return specs


def configure(options: ScreenOptions) -> list[Strategy]:
    """The strategies to run, checked and with every override applied; ConfigError when not."""
    from tradecli.strategies import resolve_params

    file = load_file(options.strategies_file) if options.strategies_file else None
    users = list(file.strategies) if file else []
    users += where_specs(options, file.columns if file else ())
    user_by_name = {u.name: u for u in users}
    where_names = [s.name for s in users if s.name == "where" or s.name.startswith("where_")]
    available = [*BUILTINS, *user_by_name]
    if options.strategies:
        unknown = [n for n in options.strategies if n not in available]
        if unknown:
            raise ConfigError(
                f"no strategy is called {unknown[0]!r}; available: {', '.join(available)}", "--strategy"
            )
        chosen = list(dict.fromkeys([*options.strategies, *where_names]))
    elif where_names:
        chosen = where_names
    else:
        chosen = available
    overrides = _parse_params(options.params)
    for name in overrides:
        if name not in chosen:
            raise ConfigError(
                f"--param {name}.…: {name!r} is not a strategy that runs here (running: {', '.join(chosen)})",
                "--param",
            )
    strategies = []
    for name in chosen:
        given = overrides.get(name, {})
        if name in BUILTINS:
            module = builtin_module(name)
            from_file = dict(file.builtin.get(name, {})) if file else {}
            cooldown, max_per_day, file_params = _limits(
                name, from_file, parse_duration(module.COOLDOWN), module.MAX_PER_DAY, "--strategies"
            )
            cooldown, max_per_day = _global(options, cooldown, max_per_day)
            cooldown, max_per_day, cli_params = _limits(name, given, cooldown, max_per_day, "--param")
            try:
                params = resolve_params(name, param_defaults(module), file_params)
            except ValueError as err:
                raise ConfigError(str(err), "--strategies") from None
            try:
                params = resolve_params(name, params, {k: _number(v, name, k) for k, v in cli_params.items()})
            except ValueError as err:
                raise ConfigError(str(err), "--param") from None
            strategy = module.build(params)
        else:
            spec = user_by_name[name]
            cooldown, max_per_day = _global(options, spec.cooldown, spec.max_per_day)
            cooldown, max_per_day, cli_params = _limits(name, given, cooldown, max_per_day, "--param")
            unknown_keys = [k for k in cli_params if k not in spec.params]
            if unknown_keys:
                known = ", ".join([*spec.params, *COMMON_KEYS])
                raise ConfigError(f"{name} has no parameter {unknown_keys[0]!r} (it has: {known})", "--param")
            strategy = spec.build({k: _number(v, name, k) for k, v in cli_params.items()})
            if name in where_names:  # an ad hoc screen: a new expression starts with a clean slate
                digest = hashlib.sha256(spec.where.text.encode()).hexdigest()[:12]
                strategy.state_key = f"{name}#{digest}"
        strategy.cooldown = cooldown
        strategy.max_per_day = max_per_day
        strategies.append(strategy)
    return strategies


def _global(options: ScreenOptions, cooldown: float, max_per_day: int) -> tuple[float, int]:
    return (
        options.cooldown if options.cooldown is not None else cooldown,
        options.max_per_day if options.max_per_day is not None else max_per_day,
    )


def _number(value: str, name: str, key: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}.{key}: {value!r} is not a number", "--param") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name}.{key}: {value!r} is not a finite number", "--param")
    return number


def read_universe(text: str) -> list[str]:
    """``AAPL,TSLA`` or ``@FILE`` (tickers separated by commas, spaces or lines; # comments)."""
    if text.startswith("@"):
        path = text[1:]
        try:
            content = Path(path).read_text()
        except OSError as err:
            raise ConfigError(f"cannot read {path}: {err.strerror}", "--universe") from None
        words = [w for line in content.splitlines() for w in re.split(r"[,\s]+", line.split("#", 1)[0])]
    else:
        words = split_list(text)
    symbols = list(dict.fromkeys(w.strip().upper() for w in words if w.strip()))
    if not symbols:
        raise ConfigError(f"{text!r} names no symbols", "--universe")
    return symbols


# ---------------------------------------------------------------------------------------------
# The core


def screen(
    batches: Iterable[pa.RecordBatch],
    *,
    strategies: Sequence[Strategy] | None = None,
    state: ScreenState | None = None,
    universe: Iterable[str] | None = None,
    pass_through: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Signal record batches for enriched record batches (every built-in when no strategies given).

    Example: trade ingest --source sim | trade enrich | trade screen --strategy gap_and_go
    """
    from tradecli.screener import Screener

    chosen = list(strategies) if strategies is not None else configure(ScreenOptions())
    screener = Screener(chosen, state, universe=universe, pass_through=pass_through, warn=warn)
    for batch in batches:
        out = screener.process(batch)
        if out is not None and out.num_rows:
            yield out
    screener.finish()


# ---------------------------------------------------------------------------------------------
# The command


class Side(StrEnum):
    long = "long"
    short = "short"


def _complete_strategy(incomplete: str) -> list[str]:
    return [name for name in BUILTINS if name.startswith(incomplete)]


def list_strategies(strategies: Sequence[Strategy], specs: dict[str, UserSpec]) -> str:
    lines = []
    for s in strategies:
        sides = ", ".join(dict.fromkeys(z.side for z in s.zones))
        limit = f"at most {s.max_per_day} a day" if s.max_per_day else "no daily limit"
        lines.append(f"{s.name} ({sides}): cooldown {_duration_text(s.cooldown)}, {limit}")
        if s.builtin:
            module = builtin_module(s.name)
            lines.append(f"    {module.TITLE}. Needs: {', '.join(s.needs)}.")
            defaults = {key: help_text for key, _, help_text in describe_params(module)}
            for key, value in s.params.items():
                lines.append(f"    {key:<20} {_plain(value):<10} {defaults[key]}")
        else:
            spec = specs[s.name]
            lines.append(f"    {spec.describe()}")
            for key, value in s.params.items():
                lines.append(f"    {key:<20} {_plain(value)}")
    return "\n".join(lines) + "\n"


def _plain(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _option_duration(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except typer.BadParameter as err:
        raise typer.BadParameter(str(err.message), param_hint=option) from None


def _usage(err: ConfigError) -> typer.BadParameter:
    return typer.BadParameter(str(err), param_hint=err.option)


@stage_options("screen", reads=True, writes=True)
def command(
    strategy: Annotated[
        list[str] | None,
        typer.Option(
            "--strategy",
            "-s",
            metavar="NAME",
            help="Run this strategy (repeatable).",
            show_default="every built-in and every strategy of --strategies; with --where, only it",
            autocompletion=_complete_strategy,
        ),
    ] = None,
    strategies_file: Annotated[
        str | None,
        typer.Option("--strategies", metavar="FILE", help="User strategies and built-in settings (TOML)."),
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where", metavar="EXPR", help="An ad hoc strategy: fire when EXPR becomes true (repeatable)."
        ),
    ] = None,
    side: Annotated[Side, typer.Option("--side", help="The side of --where signals.")] = Side.long,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            metavar="NAME.KEY=VALUE",
            help="Set a strategy parameter, or its cooldown or max_per_day (repeatable).",
        ),
    ] = None,
    universe: Annotated[
        list[str] | None,
        typer.Option(
            "--universe",
            "-u",
            metavar="LIST|@FILE",
            help="Screen only these symbols (comma-separated, or a file of tickers); repeatable.",
            show_default="every symbol",
        ),
    ] = None,
    max_per_day: Annotated[
        int | None,
        typer.Option(
            "--max-per-day",
            min=0,
            metavar="N",
            help="At most N signals per strategy and New York day, for every strategy (0 = no limit).",
            show_default="each strategy's own, 50",
        ),
    ] = None,
    cooldown: Annotated[
        str | None,
        typer.Option(
            "--cooldown",
            metavar="DURATION",
            help="Quiet time per symbol and strategy after a signal, for every strategy (e.g. 5m, 0).",
            show_default="each strategy's own",
        ),
    ] = None,
    pass_through: Annotated[
        bool,
        typer.Option(
            "--pass-through", help="Also write the input records, in order, each signal after its record."
        ),
    ] = False,
    list_only: Annotated[
        bool, typer.Option("--list", help="List the chosen strategies with their parameters and exit.")
    ] = False,
    state_dir: Annotated[
        str | None,
        typer.Option(
            "--state-dir",
            metavar="DIR",
            help="Where counters, cooldowns and conditions are kept.",
            show_default="$XDG_STATE_HOME/tradecli/screen",
        ),
    ] = None,
    checkpoint: Annotated[
        str,
        typer.Option("--checkpoint", metavar="DURATION", help="Rewrite the state snapshot this often."),
    ] = "30s",
    *,
    common: Common,
) -> None:
    """Run strategies over enriched records; write a signal record when one fires.

    Example: trade ingest --source sim | trade enrich | trade screen | trade alert
    """
    options = ScreenOptions(
        strategies=list(strategy or []),
        strategies_file=strategies_file,
        where=list(where or []),
        side=side.value,
        params=list(param or []),
        cooldown=_option_duration(cooldown, "--cooldown") if cooldown is not None else None,
        max_per_day=max_per_day,
    )
    interval = _option_duration(checkpoint, "--checkpoint")
    try:
        strategies = configure(options)
        symbols = (
            list(dict.fromkeys(s for text in universe for s in read_universe(text))) if universe else None
        )
    except ConfigError as err:
        raise _usage(err) from None
    if list_only:
        file = load_file(strategies_file) if strategies_file else None
        wheres = where_specs(options, file.columns if file else ())
        specs = {s.name: s for s in [*(file.strategies if file else []), *wheres]}
        typer.echo(list_strategies(strategies, specs), nl=False)
        return
    run(strategies, symbols, pass_through, state_dir, interval, common)


def run(
    strategies: list[Strategy],
    universe: list[str] | None,
    pass_through: bool,
    state_dir: str | None,
    checkpoint: float,
    common: Common,
) -> None:
    import time

    from tradecli.screener import Screener, StateFiles
    from tradecli.state import state_dir as resolve_state_dir
    from tradecli.tuning import keep_freed_memory

    with common.session() as session:
        keep_freed_memory()
        if not all(strategy.builtin for strategy in strategies):
            import numexpr

            # a batch is too small for numexpr's worker threads to pay, and the other stages of
            # the pipeline want the other cores: one thread is faster even on an idle machine
            numexpr.set_num_threads(1)
        files = StateFiles(resolve_state_dir("screen", state_dir))
        files.lock()
        session.on_close(files.close)
        state = files.load(session.log.warning)
        screener = Screener(
            strategies, state, universe=universe, pass_through=pass_through, warn=session.log.warning
        )

        def finish() -> None:
            screener.finish()
            files.journal(state.take_pending())
            files.save(state)
            session.counters.extra.update(screener.summary())

        session.on_close(finish)
        reader = common.reader(session)
        writer = common.writer(session, like=reader)
        saved = time.monotonic()
        for batch in reader.batches():
            out = screener.process(batch)
            files.journal(state.take_pending())  # before the signals leave: a restart never repeats them
            if out is not None:
                writer.write(out)
            if checkpoint > 0 and time.monotonic() - saved >= checkpoint:
                files.save(state)
                saved = time.monotonic()
            session.stopper.check()


command.__doc__ = (
    "Run strategies over enriched records; write a signal record when one fires.\n\n"
    "Built-in strategies (every one runs unless --strategy picks; --list shows them with their "
    "parameters):\n\n"
    + "\n\n".join(_builtin_doc(name, "") for name in BUILTINS)
    + "\n\nUser strategies: --strategies FILE (TOML tables [strategy.NAME] with where, side, "
    "entry_price, stop_loss, target, confidence, message, cooldown, max_per_day, params) and "
    "--where EXPR, both numexpr expressions over the record's columns (see man trade-screen).\n\n"
    "Example: trade ingest --source sim | trade enrich | trade screen | trade alert"
)
