"""Delivery receipts as record batches, in the wire's field types.

Two ways in, one schema out: :func:`receipts_batch` from receipt dicts (the channel workers post
one per alert as it settles), :func:`receipt_columns` from a whole batch of signals settled
together (the console and ``--dry-run``), built column by column with no dict per alert.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tradecli.records import DICT_STRING, TIMESTAMP

if TYPE_CHECKING:
    from tradecli.channels.columns import Chunk

STATUSES = ("delivered", "failed", "queued", "dry-run")


def receipts_batch(receipts: list[dict[str, Any]]) -> pa.RecordBatch:
    """Receipt dicts as one record batch in the wire's field types."""

    def col(name: str) -> list[Any]:
        return [r.get(name) for r in receipts]

    def text(name: str) -> pa.Array:
        return pa.array([v if isinstance(v, str) else None for v in col(name)], pa.string())

    def times(name: str) -> pa.Array:
        values = [v if isinstance(v, int) and not isinstance(v, bool) else None for v in col(name)]
        return pa.array(values, pa.int64()).cast(TIMESTAMP)

    arrays = {
        "type": text("type").dictionary_encode().cast(DICT_STRING),
        "timestamp": times("timestamp"),
        "alert_id": text("alert_id"),
        "channel": text("channel"),
        "status": text("status"),
        "attempts": pa.array(col("attempts"), pa.int64()),
        "latency_ms": pa.array(col("latency_ms"), pa.float64()),
        "error": text("error"),
        "symbol": text("symbol").dictionary_encode().cast(DICT_STRING),
        "strategy": text("strategy"),
        "signal_ts": times("signal_ts"),
    }
    if any("payload" in r for r in receipts):
        arrays["payload"] = text("payload")
    return pa.record_batch(list(arrays.values()), names=list(arrays))


def _constant(value: Any, rows: int, type: pa.DataType) -> pa.Array:
    return pa.nulls(rows, type) if value is None else pa.repeat(pa.scalar(value, type), rows)


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _symbols(col: pa.Array | None, rows: int) -> pa.Array:
    """The signals' symbols as the receipts carry them (text; anything else null)."""
    if col is not None:
        t = col.type
        if pa.types.is_dictionary(t) and (
            pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)
        ):
            return col.cast(DICT_STRING)
        if _is_text(t):
            return col.cast(pa.string()).dictionary_encode().cast(DICT_STRING)
    return pa.nulls(rows, pa.string()).dictionary_encode().cast(DICT_STRING)


def _texts(col: pa.Array | None, rows: int) -> pa.Array:
    if col is not None:
        t = col.type
        if pa.types.is_dictionary(t) and (
            pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)
        ):
            return col.dictionary_decode().cast(pa.string())
        if _is_text(t):
            return col.cast(pa.string())
    return pa.nulls(rows, pa.string())


def _signal_times(col: pa.Array | None, rows: int) -> pa.Array:
    """The signals' times as integer ns, as TIMESTAMP (anything but an integer or a time: null)."""
    if col is not None:
        t = col.type
        if pa.types.is_timestamp(t):
            return col.cast(pa.timestamp("ns", tz=t.tz)).cast(pa.int64()).cast(TIMESTAMP)
        if pa.types.is_integer(t):
            return col.cast(pa.int64()).cast(TIMESTAMP)
    return pa.nulls(rows, TIMESTAMP)


def receipt_columns(
    chunk: Chunk,
    label: str,
    status: str,
    *,
    attempts: int,
    latency_ms: float,
    error: str | None = None,
    payload: pa.Array | None = None,
) -> pa.RecordBatch:
    """One receipt per signal of ``chunk``, all settled alike, as :func:`receipts_batch` would give."""
    rows = chunk.rows
    arrays = {
        "type": _constant("alert", rows, pa.string()).dictionary_encode().cast(DICT_STRING),
        "timestamp": _constant(time.time_ns(), rows, pa.int64()).cast(TIMESTAMP),
        "alert_id": pa.array(chunk.ids, pa.string()),
        "channel": _constant(label, rows, pa.string()),
        "status": _constant(status, rows, pa.string()),
        "attempts": _constant(attempts, rows, pa.int64()),
        "latency_ms": _constant(latency_ms, rows, pa.float64()),
        "error": _constant(error, rows, pa.string()),
        "symbol": _symbols(chunk.column("symbol"), rows),
        "strategy": _texts(chunk.column("strategy"), rows),
        "signal_ts": _signal_times(chunk.column("timestamp"), rows),
    }
    if payload is not None:
        arrays["payload"] = payload
    return pa.record_batch(list(arrays.values()), names=list(arrays))


def status_counts(batch: pa.RecordBatch) -> dict[str, int]:
    """How many receipts of a batch have each status."""
    import pyarrow.compute as pc

    counts = pc.value_counts(batch.column("status"))
    return {
        str(value): int(count)
        for value, count in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        )
        if value is not None
    }
