"""Times and dates on the command line, read in the exchange's calendar (America/New_York).

``--from 2026-11-24T09:30`` means the New York open, whatever the machine's zone: a time without
an offset is New York time, a date alone is New York midnight. ``Z`` or an offset is honoured, a
bare number is seconds, ms, us or ns since the epoch (told apart by magnitude, as in the
records), and ``now``, ``today`` and ``yesterday`` are understood.
"""

from __future__ import annotations

import re
import time
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from tradecli.tickstore.layout import EXCHANGE_TZ

NEW_YORK = ZoneInfo(EXCHANGE_TZ)
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def today() -> date:
    return datetime.now(NEW_YORK).date()


def parse_day(text: str) -> date:
    word = text.strip().lower()
    if word == "today":
        return today()
    if word == "yesterday":
        return today() - timedelta(days=1)
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD, today or yesterday)") from None


def parse_days(text: str) -> tuple[date, date]:
    """``D`` or ``D1..D2`` (inclusive)."""
    if ".." in text:
        first, _, last = text.partition("..")
        start, end = parse_day(first), parse_day(last)
        if end < start:
            raise ValueError(f"{text!r}: the range ends before it starts")
        return start, end
    day = parse_day(text)
    return day, day


def midnight_ns(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=NEW_YORK).timestamp()) * 10**9


def parse_time(text: str, *, end: bool = False) -> int:
    """ns since the epoch. With ``end``, a date alone means the end of that day (exclusive)."""
    word = text.strip()
    lower = word.lower()
    if lower == "now":
        return time.time_ns()
    if lower in ("today", "yesterday") or re.fullmatch(r"\d{4}-\d{2}-\d{2}", word):
        day = parse_day(word)
        return midnight_ns(day + timedelta(days=1) if end else day)
    if _NUMBER.match(word):
        value = float(word)
        magnitude = abs(value)
        scale = 1e9 if magnitude < 1e11 else 1e6 if magnitude < 1e14 else 1e3 if magnitude < 1e17 else 1
        return int(word) * int(scale) if "." not in word else int(value * scale)
    iso = word.replace(" ", "T", 1)
    if iso.endswith(("Z", "z")):
        iso = iso[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time (ISO-8601 such as 2026-11-24T09:30, New York time unless it "
            "has an offset; or ns/ms/s since the epoch; or now, today, yesterday)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=NEW_YORK)
    fraction_ns = moment.microsecond * 1000
    nanos = re.search(r"\.(\d{7,9})", word)
    if nanos:
        fraction_ns = int(nanos.group(1).ljust(9, "0"))
    whole = int(moment.replace(microsecond=0).timestamp())
    return whole * 10**9 + fraction_ns
