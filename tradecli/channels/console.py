"""console: one readable line per alert on stderr, coloured on a terminal (stdout stays receipts).

    🚨 09:31:02 GAP_AND_GO AAPL LONG  entry $187.20  stop $180.11  target $215.28
       confidence 75.0%  R/R 4.0:1  Gap & Go: AAPL gapped 12.3% with 4.2x volume

(one line in fact, folded here).

The time is the event time in the machine's local zone. rich decides whether and how to colour
(a terminal, ``NO_COLOR``, ``FORCE_COLOR``, ``TERM=dumb``): the side is green for long and red for
short, the strategy and symbol bold. Control characters in the data are removed, so a symbol or
message cannot move the cursor or recolour the terminal. Lines for a whole batch are written at
once, which keeps the console path fast.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any, ClassVar, TextIO

from tradecli.channels import Channel, Outcome, Settings
from tradecli.channels import fields as f

TARGET = "console"


def _styles(stream: TextIO) -> dict[str, tuple[str, str]]:
    """ANSI (prefix, suffix) per style name, or empty strings when colour is off."""
    names = {"time": "dim", "title": "bold", "symbol": "bold", "long": "bold green", "short": "bold red"}
    try:
        from rich.console import Console
        from rich.style import Style

        system = Console(file=stream).color_system
    except Exception:  # no rich, or a stream rich cannot inspect: plain text
        system = None
    if system is None:
        return {name: ("", "") for name in names}
    from rich.console import COLOR_SYSTEMS

    out = {}
    for name, spec in names.items():
        prefix, _, suffix = Style.parse(spec).render("\0", color_system=COLOR_SYSTEMS[system]).partition("\0")
        out[name] = (prefix, suffix)
    return out


def _clock(ns: Any) -> str:
    if isinstance(ns, bool) or not isinstance(ns, int):
        return "--:--:--"
    try:
        return datetime.fromtimestamp(ns / 1e9).strftime("%H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "--:--:--"


class Console(Channel):
    kind: ClassVar[str] = "console"
    inline: ClassVar[bool] = True

    def __init__(self, stream: TextIO | None = None, colour: bool = True) -> None:
        super().__init__("console", "console")
        self._stream = stream
        self._styles: dict[str, tuple[str, str]] | None = None if colour else {}

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _style(self, name: str, value: str) -> str:
        if self._styles is None:
            self._styles = _styles(self.stream)
        prefix, suffix = self._styles.get(name, ("", ""))
        return f"{prefix}{value}{suffix}" if prefix else value

    def render(self, signal: dict[str, Any], alert_id: str) -> str:
        which = f.side(signal)
        table = f.table(signal)
        parts = [
            self._style("time", _clock(signal.get("timestamp"))),
            self._style("title", f.strategy(signal).upper()),
            self._style("symbol", table[0][1]),
        ]
        if which:
            parts.append(self._style(which, which.upper()))
        numbers = "  ".join(f"{f.short_name(name)} {value}" for name, value in table[1:] if value != f.NA)
        message = f.text(signal.get("message"))
        return "  ".join(x for x in ("🚨 " + " ".join(parts), numbers, message) if x) + "\n"

    def preview(self, rendered: str) -> str:
        return rendered.rstrip("\n")

    def send(self, rendered: str, alert_id: str) -> Outcome:
        return self.send_many([rendered])

    def send_many(self, rendered: list[str]) -> Outcome:
        try:
            self.stream.write("".join(rendered))
            self.stream.flush()
        except (OSError, ValueError) as err:
            return Outcome(False, f"cannot write to stderr ({type(err).__name__})")
        return Outcome(True)


def from_target(arg: str | None, settings: Settings) -> Console:
    if arg:
        from tradecli.errors import UsageError

        raise UsageError("--to console takes no argument")
    return Console(colour=not settings.dry_run)
