"""A signal's fields as text, the same in every channel, and the text hygiene every channel needs.

Text that came from data (a symbol, a strategy name, a message) is untrusted: it may hold control
characters that repaint a terminal, ``@everyone`` that pings a whole Discord server, or ``<``
that Slack or an HTML mail reader would interpret. Each channel escapes for its own medium; the
helpers here do the parts they share.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from typing import Any, NamedTuple

NA = "n/a"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NEWLINES = re.compile(r"[\r\n\t]+")
_MENTION = re.compile(r"@(everyone|here)", re.IGNORECASE)


def number(value: Any) -> float | None:
    """A finite float, or None for anything missing, not numeric, NaN or infinite."""
    if type(value) is float:
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def text(value: Any) -> str:
    """Data as one safe line of text: control characters and bidi overrides removed."""
    if value is None:
        return ""
    raw = value if isinstance(value, str) else str(value)
    if raw.isprintable():  # the common case: nothing to remove
        return raw.strip()
    return _CONTROL.sub("", _NEWLINES.sub(" ", raw)).strip()


def block(value: Any) -> str:
    """Data as safe text that may keep its line breaks (a message)."""
    if value is None:
        return ""
    raw = value if isinstance(value, str) else str(value)
    if raw.isprintable():
        return raw.strip()
    return "\n".join(_CONTROL.sub("", line.replace("\t", " ")) for line in raw.splitlines()).strip()


def no_mentions(value: str) -> str:
    """Break ``@everyone``/``@here`` and ``<@id>`` mention syntax with a zero-width space."""
    if "@" not in value:
        return value
    return _MENTION.sub("@\u200b\\1", value).replace("<@", "<@\u200b")


def money(value: Any) -> str:
    """``$123.45``; four decimals below a dollar (``$0.0123``); ``n/a`` when missing."""
    x = number(value)
    if x is None:
        return NA
    return f"${x:,.2f}" if x >= 1 or x <= -1 else f"${x:,.4f}"


def percent(value: Any) -> str:
    x = number(value)
    return NA if x is None else f"{x:.1%}"


def rr_ratio(signal: dict[str, Any]) -> float | None:
    """The signal's ``rr_ratio``, else reward/risk from entry, stop and target as the seed did."""
    given = number(signal.get("rr_ratio"))
    if given is not None:
        return given
    entry, stop, target = (number(signal.get(k)) for k in ("entry_price", "stop_loss", "target"))
    if entry is None or stop is None or target is None:
        return None
    risk = abs(entry - stop)
    return abs(target - entry) / risk if risk > 0 else 0.0


def rr_text(signal: dict[str, Any]) -> str:
    x = rr_ratio(signal)
    return NA if x is None else f"{x:.1f}:1"


def side(signal: dict[str, Any]) -> str | None:
    """``long`` or ``short`` from ``side`` (or a ``signal_type`` that is exactly one of them)."""
    for key in ("side", "signal_type"):
        value = signal.get(key)
        if isinstance(value, str) and value.strip().lower() in ("long", "short"):
            return value.strip().lower()
    return None


def iso_time(ns: Any) -> str | None:
    """Integer ns since the epoch as ISO-8601 UTC with milliseconds (``2026-11-20T14:31:00.000Z``)."""
    if isinstance(ns, bool) or not isinstance(ns, int):
        return None
    try:
        moment = datetime.fromtimestamp(ns // 1_000_000 / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def strategy(signal: dict[str, Any]) -> str:
    return text(signal.get("strategy")) or "signal"


def title(signal: dict[str, Any]) -> str:
    """The design document's title: ``🚨 GAP_AND_GO ALERT``."""
    return f"🚨 {strategy(signal).upper()} ALERT"


def table(signal: dict[str, Any]) -> list[tuple[str, str]]:
    """The fields the design document's Discord embed shows, in its order, as text."""
    return display(signal).table()


def short_name(field: str) -> str:
    return "R/R" if field == "R/R Ratio" else field.lower()


def summary_line(signal: dict[str, Any]) -> str:
    """One plain line: ``AAPL long, entry $1.00, stop ..., R/R 2.0:1 - message``."""
    head = text(signal.get("symbol")) or NA
    which = side(signal)
    parts = [f"{head} {which}" if which else head]
    parts += [f"{short_name(name)} {value}" for name, value in table(signal)[1:] if value != NA]
    message = text(signal.get("message"))
    return ", ".join(parts) + (f" - {message}" if message else "")


class Display(NamedTuple):
    """A signal's fields as display text, computed once and shared by the channels' layouts."""

    symbol: str
    strategy: str  # as given (text); ``title()`` upper-cases it
    side: str | None
    entry: str
    stop: str
    target: str
    confidence: str
    rr: str
    time: str | None  # ISO-8601 UTC with milliseconds
    message: str  # may hold line breaks

    def table(self) -> list[tuple[str, str]]:
        return [
            ("Symbol", self.symbol),
            ("Entry", self.entry),
            ("Stop", self.stop),
            ("Target", self.target),
            ("Confidence", self.confidence),
            ("R/R Ratio", self.rr),
        ]


_INF = (math.inf, -math.inf)
_SIDES = {
    "long": "long",
    "short": "short",
    "LONG": "long",
    "SHORT": "short",
    "Long": "long",
    "Short": "short",
}
_second_cache: list[Any] = [None, ""]


def _money_fast(x: Any) -> str:
    if type(x) is float and x == x and x not in _INF:
        return f"${x:,.2f}" if x >= 1 or x <= -1 else f"${x:,.4f}"
    return money(x)


def _iso_fast(ns: Any) -> str | None:
    if type(ns) is not int:
        return iso_time(ns)
    seconds, rest = divmod(ns, 1_000_000_000)
    if _second_cache[0] != seconds:  # consecutive alerts mostly share their second
        try:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        except (OverflowError, OSError, ValueError):
            return None
        _second_cache[0], _second_cache[1] = seconds, prefix
    return f"{_second_cache[1]}.{rest // 1_000_000:03d}Z"


def display(signal: dict[str, Any]) -> Display:
    """Every display field of a signal in one pass (the hot path of the console and --dry-run)."""
    get = signal.get
    symbol = get("symbol")
    symbol = symbol.strip() if type(symbol) is str and symbol.isprintable() else text(symbol)
    name = get("strategy")
    name = name.strip() if type(name) is str and name.isprintable() else text(name)
    which = _SIDES.get(get("side"))  # type: ignore[arg-type]
    if which is None:
        which = side(signal)
    confidence = get("confidence")
    message = get("message")
    message = message.strip() if type(message) is str and message.isprintable() else block(message)
    return Display(
        symbol or NA,
        name or "signal",
        which,
        _money_fast(get("entry_price")),
        _money_fast(get("stop_loss")),
        _money_fast(get("target")),
        f"{confidence:.1%}"
        if type(confidence) is float and math.isfinite(confidence)
        else percent(confidence),
        rr_text(signal),
        _iso_fast(get("timestamp")),
        message,
    )
