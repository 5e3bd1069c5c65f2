"""Options every stage shares, declared once and added to each stage command.

``@stage_options(reads=True, writes=True)`` appends ``--format``, ``--errors``, ``--strict``,
``--quiet``, ``--log-format`` and ``--debug`` to a Typer command's signature and hands the command
one :class:`Common` object instead, so each stage's own signature lists only what is its own.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from tradecli.runtime import Session
    from tradecli.wire import ErrorSink, HasFormat, RecordReader, RecordWriter


class Format(StrEnum):
    ndjson = "ndjson"
    arrow = "arrow"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


@dataclass
class Common:
    """The shared options of one stage invocation."""

    stage: str
    format: str | None = None
    errors: str | None = None
    strict: bool = False
    quiet: bool = False
    log_format: str = "text"
    debug: bool = False

    @contextmanager
    def session(self, summary: bool = True) -> Iterator[Session]:
        from tradecli.runtime import stage_session

        with stage_session(
            self.stage, log_format=self.log_format, quiet=self.quiet, debug=self.debug, summary=summary
        ) as session:
            yield session

    def error_sink(self, session: Session) -> ErrorSink:
        from tradecli.wire import ErrorSink

        return ErrorSink(session, self.errors, self.strict)

    def reader(self, session: Session) -> RecordReader:
        """Records from stdin, format sniffed."""
        from tradecli.wire import Input, RecordReader

        return RecordReader(Input(sys.stdin.buffer, session), self.error_sink(session))

    def writer(self, session: Session, like: HasFormat | None = None) -> RecordWriter:
        """Records to stdout in --format, else the format ``like`` was read in, else NDJSON."""
        from tradecli.wire import RecordWriter

        return RecordWriter(sys.stdout.buffer, session, self.format, like=like)


_FORMAT = inspect.Parameter(
    "format_",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        Format | None,
        typer.Option(
            "--format",
            envvar="TRADE_FORMAT",
            case_sensitive=False,
            help="Output format [default: the input's format, else ndjson].",
            show_default=False,
        ),
    ],
)
_ERRORS = inspect.Parameter(
    "errors",
    inspect.Parameter.KEYWORD_ONLY,
    default=None,
    annotation=Annotated[
        str | None,
        typer.Option(
            "--errors",
            metavar="FILE",
            help="Append every rejected record, with its reason, to FILE (NDJSON).",
        ),
    ],
)
_STRICT = inspect.Parameter(
    "strict",
    inspect.Parameter.KEYWORD_ONLY,
    default=False,
    annotation=Annotated[
        bool, typer.Option("--strict", help="Stop at the first bad record with exit status 65.")
    ],
)
_QUIET = inspect.Parameter(
    "quiet",
    inspect.Parameter.KEYWORD_ONLY,
    default=False,
    annotation=Annotated[bool, typer.Option("--quiet", "-q", help="No closing summary on stderr.")],
)
_LOG_FORMAT = inspect.Parameter(
    "log_format",
    inspect.Parameter.KEYWORD_ONLY,
    default=LogFormat.text,
    annotation=Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            envvar="TRADE_LOG_FORMAT",
            case_sensitive=False,
            help="Diagnostics on stderr as readable text or one JSON object per line.",
        ),
    ],
)
_DEBUG = inspect.Parameter(
    "debug",
    inspect.Parameter.KEYWORD_ONLY,
    default=False,
    annotation=Annotated[
        bool,
        typer.Option(
            "--debug", envvar="TRADECLI_DEBUG", help="Show a traceback instead of a one-line error."
        ),
    ],
)

F = TypeVar("F", bound=Callable[..., Any])


def stage_options(stage: str, *, reads: bool = True, writes: bool = True) -> Callable[[F], F]:
    """Give a stage command the shared options; it receives them as ``common: Common``."""
    extra = (
        ([_FORMAT] if writes else []) + ([_ERRORS, _STRICT] if reads else []) + [_QUIET, _LOG_FORMAT, _DEBUG]
    )

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "common"]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            shared = {p.name: kwargs.pop(p.name, p.default) for p in extra}
            fmt = shared.get("format_")
            log_format = shared["log_format"]
            common = Common(
                stage=stage,
                format=fmt.value if isinstance(fmt, Format) else fmt,
                errors=shared.get("errors"),
                strict=bool(shared.get("strict", False)),
                quiet=bool(shared["quiet"]),
                log_format=log_format.value if isinstance(log_format, LogFormat) else str(log_format),
                debug=bool(shared["debug"]),
            )
            return fn(*args, common=common, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=own + extra)  # type: ignore[attr-defined]
        annotations = {k: v for k, v in getattr(fn, "__annotations__", {}).items() if k != "common"}
        annotations.update({p.name: p.annotation for p in extra})
        wrapper.__annotations__ = annotations
        return wrapper  # type: ignore[return-value]

    return decorate


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(text: str) -> float:
    """'30s', '5m', '100ms', '1.5h', '2d' or plain seconds -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration (try 30s, 5m, 100ms, 1h)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def split_list(text: str | None) -> list[str]:
    """'AAPL, tsla,,MSFT' -> ['AAPL', 'tsla', 'MSFT']"""
    return [part.strip() for part in (text or "").split(",") if part.strip()]
