"""console: one readable line per alert on stderr, coloured on a terminal (stdout stays receipts).

    🚨 09:31:02 GAP_AND_GO AAPL LONG  entry $187.20  stop $180.11  target $215.28
       confidence 75.0%  R/R 4.0:1  Gap & Go: AAPL gapped 12.3% with 4.2x volume

(one line in fact, folded here).

The time is the event time in the machine's local zone. rich decides whether and how to colour
(a terminal, ``NO_COLOR``, ``FORCE_COLOR``, ``TERM=dumb``): the side is green for long and red for
short, the strategy and symbol bold. Control characters in the data are removed, so a symbol or
message cannot move the cursor or recolour the terminal. A batch of alerts is rendered a column
at a time (:mod:`tradecli.channels.columns`: each piece once per distinct value) and written at
once, which keeps the console path fast.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TextIO

from tradecli.channels import Channel, Outcome, Settings
from tradecli.channels import fields as f

if TYPE_CHECKING:
    import pyarrow as pa

    from tradecli.channels.columns import Chunk

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

    def preview_column(self, chunk: Chunk) -> pa.Array:
        """The lines of a whole batch (without their newline), as :meth:`render` writes them.

        Each piece is computed once per distinct value of its field and the pieces are joined
        by Arrow; a part that :meth:`render` leaves out is an empty piece here.
        """
        import pyarrow.compute as pc

        if chunk.small:
            return super().preview_column(chunk)
        if self._styles is None:
            self._styles = _styles(self.stream)
        styles = self._styles

        def style(name: str) -> tuple[str, str]:
            return styles.get(name, ("", ""))

        def side_piece(value: Any) -> str:
            if value is None:
                return ""
            on, off = style(value)
            return f" {on}{value.upper()}{off}"

        def number(label: str, show: Callable[[Any], str]) -> Callable[[Any], str]:
            def piece(value: Any) -> str:
                text = show(value)
                return "" if text == f.NA else f"  {label} {text}"

            return piece

        def message(value: Any) -> str:
            text = f.block(value)
            return "  " + text.replace("\n", " ") if text else ""

        from tradecli.channels.columns import Distinct

        time_on, time_off = style("time")
        title_on, title_off = style("title")
        symbol_on, symbol_off = style("symbol")
        return pc.binary_join_element_wise(
            "🚨 " + time_on,
            self._clock_column(chunk),
            f"{time_off} {title_on}",
            chunk.distinct("strategy").strings(lambda v: (f.text(v) or "signal").upper()),
            f"{title_off} {symbol_on}",
            chunk.distinct("symbol").strings(lambda v: f.text(v) or f.NA),
            symbol_off,
            Distinct(chunk.side(), chunk.rows).strings(side_piece),
            chunk.distinct("entry_price").strings(number("entry", f.money)),
            chunk.distinct("stop_loss").strings(number("stop", f.money)),
            chunk.distinct("target").strings(number("target", f.money)),
            chunk.distinct("confidence").strings(number("confidence", f.percent)),
            chunk.rr_strings(number("R/R", lambda x: f.NA if x is None else f"{x:.1f}:1")),
            chunk.distinct("message").strings(message),
            "",
        )

    def _clock_column(self, chunk: Chunk) -> pa.Array:
        import pyarrow as pa

        from tradecli.channels.columns import strings_of

        parts = chunk.times()
        if parts is None:
            return pa.array([self._clock(r.get("timestamp")) for r in chunk.records], pa.string())
        seconds, _, ok = parts
        return strings_of(seconds, ok, lambda s: "--:--:--" if s is None else self._clock(s * 1_000_000_000))

    def send_column(self, chunk: Chunk) -> list[Outcome]:
        """One write for a whole batch of lines."""
        import pyarrow.compute as pc

        if chunk.small or not chunk.rows:
            return super().send_column(chunk)
        import numpy as np

        lines = pc.binary_join_element_wise(self.preview_column(chunk), "", "\n")
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
        start, end = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
        text = memoryview(lines.buffers()[2])[start:end].tobytes().decode()  # the lines, end to end
        return self._write(text, len(lines))

    def send(self, rendered: str, alert_id: str) -> Outcome:
        return self.send_many([(rendered, alert_id)])[0]

    def send_many(self, items: list[tuple[Any, str]]) -> list[Outcome]:
        """One write for a whole batch of lines."""
        return self._write("".join(line for line, _ in items), len(items))

    def _write(self, text: str, count: int) -> list[Outcome]:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError) as err:
            return [Outcome(False, f"cannot write to stderr ({type(err).__name__})")] * count
        return [Outcome(True)] * count


def from_target(arg: str | None, settings: Settings) -> Console:
    if arg:
        from tradecli.errors import UsageError

        raise UsageError("--to console takes no argument")
    return Console(colour=not settings.dry_run)
