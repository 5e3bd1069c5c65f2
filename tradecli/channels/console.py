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
import time
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


class Console(Channel):
    kind: ClassVar[str] = "console"
    inline: ClassVar[bool] = True

    def __init__(self, stream: TextIO | None = None, colour: bool = True) -> None:
        super().__init__("console", "console")
        self._stream = stream
        self._styles: dict[str, tuple[str, str]] | None = None if colour else {}
        self._offsets: dict[int, int] = {}

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _clock(self, ns: Any) -> str:
        """HH:MM:SS in the local zone; the zone's offset is looked up once per hour of event time."""
        if type(ns) is not int:
            return "--:--:--"
        seconds = ns // 1_000_000_000
        hour = seconds // 3600
        offset = self._offsets.get(hour)
        if offset is None:
            try:
                offset = time.localtime(seconds).tm_gmtoff
            except (OverflowError, OSError, ValueError):
                return "--:--:--"
            if len(self._offsets) > 4096:
                self._offsets.clear()
            self._offsets[hour] = offset
        t = (seconds + offset) % 86400
        return f"{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}"

    def render(self, signal: dict[str, Any], alert_id: str) -> str:
        d = f.display(signal)
        if self._styles is None:
            self._styles = _styles(self.stream)
        styles = self._styles
        if styles:
            time_on, time_off = styles["time"]
            title_on, title_off = styles["title"]
            symbol_on, symbol_off = styles["symbol"]
            head = f"🚨 {time_on}{self._clock(signal.get('timestamp'))}{time_off} "
            head += f"{title_on}{d.strategy.upper()}{title_off} {symbol_on}{d.symbol}{symbol_off}"
            if d.side:
                side_on, side_off = styles[d.side]
                head += f" {side_on}{d.side.upper()}{side_off}"
        else:
            head = f"🚨 {self._clock(signal.get('timestamp'))} {d.strategy.upper()} {d.symbol}"
            if d.side:
                head += f" {d.side.upper()}"
        numbers = "  ".join(
            f"{label} {value}"
            for label, value in (
                ("entry", d.entry),
                ("stop", d.stop),
                ("target", d.target),
                ("confidence", d.confidence),
                ("R/R", d.rr),
            )
            if value != f.NA
        )
        message = d.message.replace("\n", " ") if "\n" in d.message else d.message
        return "  ".join(x for x in (head, numbers, message) if x) + "\n"

    def preview(self, rendered: str) -> str:
        return rendered.rstrip("\n")

    def send(self, rendered: str, alert_id: str) -> Outcome:
        return self.send_many([(rendered, alert_id)])[0]

    def send_many(self, items: list[tuple[Any, str]]) -> list[Outcome]:
        """One write for a whole batch of lines."""
        try:
            self.stream.write("".join(line for line, _ in items))
            self.stream.flush()
        except (OSError, ValueError) as err:
            return [Outcome(False, f"cannot write to stderr ({type(err).__name__})")] * len(items)
        return [Outcome(True)] * len(items)


def from_target(arg: str | None, settings: Settings) -> Console:
    if arg:
        from tradecli.errors import UsageError

        raise UsageError("--to console takes no argument")
    return Console(colour=not settings.dry_run)
