"""Names in the store: partitions, part files and their sequence ranges, and exchange dates."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tradecli.records import from_numpy

EXCHANGE_TZ = "America/New_York"
_NEW_YORK = ZoneInfo(EXCHANGE_TZ)
DAY_NS = 86_400 * 10**9
EPOCH = date(1970, 1, 1)
NO_TIME = np.iinfo(np.int64).max  # sorts a missing timestamp after every real one

ROW_GROUP_ROWS = 122_880  # DuckDB's own default: good for its parallel scans and for pruning
SMALL_FILE_ROWS = 1_000_000  # below this a file is "small": compaction merges such files
METADATA_KEY = b"tradecli.store"

_PART = re.compile(r"^part-(\d+)(?:-(\d+))?\.parquet$")
_TMP = re.compile(r"^\.part-(\d+)(?:-(\d+))?\.parquet\.tmp$")
_TYPE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def part_name(first: int, last: int | None = None) -> str:
    """``part-<seq>.parquet``, or ``part-<first>-<last>.parquet`` for a compacted file."""
    return f"part-{first}.parquet" if last is None or last == first else f"part-{first}-{last}.parquet"


def tmp_name(name: str) -> str:
    """The in-flight name of a file: hidden (pyarrow.dataset skips dot files) and not ending in
    ``.parquet`` (DuckDB's and Polars' ``**/*.parquet`` globs match hidden files too)."""
    return f".{name}.tmp"


def parse_part(name: str) -> tuple[int, int] | None:
    """(first seq, last seq) of a part file name, or None for any other name."""
    match = _PART.match(name)
    if not match:
        return None
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) else first
    return (first, last) if first <= last else None


def is_tmp(name: str) -> bool:
    return bool(_TMP.match(name))


def valid_type(name: str) -> bool:
    """A record type becomes a directory name: letters, digits, ``_ . -`` only."""
    return bool(_TYPE.match(name)) and name not in (".", "..")


def valid_date(name: str) -> bool:
    if not _DATE.match(name):
        return False
    try:
        date.fromisoformat(name)
    except ValueError:
        return False
    return True


def partition(rtype: str, day: str) -> str:
    return f"type={rtype}/date={day}"


def day_text(day: int) -> str:
    """Days since 1970-01-01 -> 'YYYY-MM-DD'."""
    return (EPOCH + timedelta(days=int(day))).isoformat()


def day_number(text: str) -> int:
    return (date.fromisoformat(text) - EPOCH).days


@dataclass(frozen=True)
class PartFile:
    """A published file in one partition."""

    name: str
    size: int
    first: int | None = None  # sequence range, None for files not written by trade store
    last: int | None = None

    @classmethod
    def of(cls, name: str, size: int) -> PartFile:
        seqs = parse_part(name)
        return cls(name, size, *(seqs or (None, None)))

    def covers(self, seq: int) -> bool:
        return self.first is not None and self.last is not None and self.first <= seq <= self.last

    def inside(self, other: PartFile) -> bool:
        """True when ``other`` (a compacted file) already holds every row of this one."""
        if self is other or None in (self.first, self.last, other.first, other.last):
            return False
        assert self.first is not None and self.last is not None
        assert other.first is not None and other.last is not None
        wider = (other.last - other.first) > (self.last - self.first)
        return other.first <= self.first and self.last <= other.last and wider


def live_files(files: list[PartFile]) -> tuple[list[PartFile], list[PartFile]]:
    """Split a partition's files into (current, superseded).

    A file whose sequence range lies inside a compacted file's range was merged into it; it is
    only still there because a compaction stopped between publishing and removing. Readers skip
    it, so nothing is counted twice.
    """
    ranged = sorted((f for f in files if f.first is not None), key=lambda f: (f.first, -(f.last or 0)))
    superseded: list[PartFile] = []
    widest: PartFile | None = None
    for f in ranged:
        if widest is not None and f.inside(widest):
            superseded.append(f)
            continue
        if widest is None or (f.last or 0) > (widest.last or 0):
            widest = f
    gone = {id(f) for f in superseded}
    return [f for f in files if id(f) not in gone], superseded


def covered(files: list[PartFile], seq: int) -> bool:
    return any(f.covers(seq) for f in files)


def exchange_days(batch: pa.RecordBatch, fallback_ns: int) -> np.ndarray:
    """The New York calendar day (days since 1970-01-01) of each record's ``timestamp``.

    DST-correct and vectorised (Arrow's time zone database). A record without a timestamp is
    filed under its ``recv_ts``, else under ``fallback_ns`` (when it was stored).
    """
    ns = event_ns(batch, fallback_ns)
    offset = _one_offset(ns)
    if offset is not None:
        same: np.ndarray = np.floor_divide(ns + offset, DAY_NS)
        return same
    stamps = from_numpy(ns, type=pa.timestamp("ns", tz=EXCHANGE_TZ))
    local = np.asarray(pc.local_timestamp(stamps).cast(pa.int64()).to_numpy(), dtype=np.int64)
    days: np.ndarray = np.floor_divide(local, DAY_NS)
    return days


def _one_offset(ns: np.ndarray) -> int | None:
    """New York's UTC offset in ns when it is the same for every one of these times, else None.

    Times less than a week apart with the same offset at both ends have no change of offset
    between them (New York's two changes a year are months apart): then the date is plain
    arithmetic, ten times faster than looking up the zone for each value.
    """
    if not len(ns):
        return None
    lo, hi = int(ns.min()), int(ns.max())
    if hi - lo >= 7 * DAY_NS:
        return None
    try:
        offsets = {datetime.fromtimestamp(t // 10**9, _NEW_YORK).utcoffset() for t in (lo, hi)}
    except (OverflowError, OSError, ValueError):
        return None
    if len(offsets) != 1:
        return None
    offset = offsets.pop()
    return None if offset is None else int(offset.total_seconds()) * 10**9


def event_ns(batch: pa.RecordBatch, fallback_ns: int) -> np.ndarray:
    """``timestamp`` as int64 ns, falling back to ``recv_ts`` and then to ``fallback_ns``."""
    out = np.full(batch.num_rows, fallback_ns, dtype=np.int64)
    missing = np.ones(batch.num_rows, dtype=bool)
    for name in ("timestamp", "recv_ts"):
        index = batch.schema.get_field_index(name)
        if index < 0 or not pa.types.is_timestamp(batch.column(index).type):
            continue
        col = batch.column(index)
        values = col.cast(pa.int64())
        if not col.null_count and missing.all():
            return np.asarray(values.to_numpy(), dtype=np.int64)
        valid = np.asarray(col.is_valid())
        fill = missing & valid
        out[fill] = np.asarray(values.fill_null(0).to_numpy(), dtype=np.int64)[fill]
        missing &= ~valid
        if not missing.any():
            break
    return out


def sort_ns(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Timestamps as int64 ns for sorting; a missing one sorts last."""
    values = col.cast(pa.int64())
    if values.null_count:
        values = values.fill_null(NO_TIME)
    return np.asarray(values.to_numpy(), dtype=np.int64)
