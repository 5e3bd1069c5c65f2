"""The batch-at-a-time paths (console, --dry-run) give exactly what the per-alert paths give.

(Batches of up to 128 alerts take the per-alert path anyway; ``small=False`` forces the other.)

The console lines, Discord payloads, ids and receipts of a whole batch are built a column at a
time (tradecli.channels.columns); every one of them is compared here with the per-alert render
of the same rows, over generated batches of hostile text and odd numbers, missing columns and
column types other than the wire's.
"""

from __future__ import annotations

import io
import re
from typing import Any

import orjson
import pyarrow as pa
import pytest
from alert_standins import discord_problems, slack_problems
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_alert_render import NASTY, signal

from tradecli.channels import Settings
from tradecli.channels import discord as discord_channel
from tradecli.channels import email as email_channel
from tradecli.channels import slack as slack_channel
from tradecli.channels.columns import Chunk, alert_ids, to_records
from tradecli.channels.console import Console
from tradecli.identity import alert_id
from tradecli.receipts import receipt_columns, receipts_batch, status_counts
from tradecli.records import FIELD_TYPES

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COLUMNS = (
    "type",
    "symbol",
    "timestamp",
    "strategy",
    "side",
    "signal_type",
    "confidence",
    "entry_price",
    "stop_loss",
    "target",
    "rr_ratio",
    "message",
    "alert_id",
)
texts = st.one_of(
    st.sampled_from([*NASTY, " padded ", "\u2028sep\u2029", "tab\there", "\x85next", "ß straße"]),
    st.text(max_size=60),
    st.none(),
)
numbers = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.5, 0.99999, 1.0, -1.0, 0.00001, 1e16, 123456.785, 1e300]),
    st.floats(min_value=0.0001, max_value=1e6),
)
times = st.one_of(
    st.none(),
    st.integers(-(2**62), 2**62),
    st.integers(1_763_649_000 * 10**9, 1_763_649_010 * 10**9),
)
rows = st.fixed_dictionaries(
    {
        "type": st.just("signal"),
        "symbol": st.one_of(st.sampled_from(["AAPL", "@everyone", "S1"]), texts),
        "timestamp": times,
        "strategy": st.one_of(st.sampled_from(["gap_and_go", "<b>x</b>"]), texts),
        "side": st.sampled_from(["long", "short", "LONG", " Short ", "sideways", "", None]),
        "signal_type": st.sampled_from(["long", "short", "gap_and_go_continuation", None]),
        "confidence": numbers,
        "entry_price": numbers,
        "stop_loss": numbers,
        "target": numbers,
        "rr_ratio": numbers,
        "message": st.one_of(texts, st.just("m" * 5000), st.just("🚀" * 2100)),
        "alert_id": st.one_of(st.none(), st.none(), st.sampled_from(["given-1", "", 'q"uote\\'])),
    }
)
batches = st.tuples(st.lists(rows, min_size=1, max_size=12), st.sets(st.sampled_from(COLUMNS[1:])))


def wire_batch(records: list[dict[str, Any]], drop: set[str] = frozenset()) -> pa.RecordBatch:  # type: ignore[assignment]
    """The rows as the wire's reader types them, without the ``drop`` columns."""
    names = [c for c in COLUMNS if c not in drop]
    schema = pa.schema([(name, FIELD_TYPES.get(name, pa.string())) for name in names])
    return pa.RecordBatch.from_pylist([{k: r.get(k) for k in names} for r in records], schema=schema)


def per_alert_console(console: Console, batch: pa.RecordBatch) -> list[str]:
    return [console.preview(console.render(r, alert_id(r))) for r in to_records(batch)]


def coloured() -> Console:
    console = Console(stream=io.StringIO())
    console._styles = {
        "time": ("\x1b[2m", "\x1b[0m"),
        "title": ("\x1b[1m", "\x1b[0m"),
        "symbol": ("\x1b[1m", "\x1b[0m"),
        "long": ("\x1b[1;32m", "\x1b[0m"),
        "short": ("\x1b[1;31m", "\x1b[0m"),
    }
    return console


@SETTINGS
@given(batches)
def test_ids_and_console_lines_match_the_per_alert_path(case: tuple[list[dict[str, Any]], set[str]]) -> None:
    records, drop = case
    batch = wire_batch(records, drop)
    ids, given_any = alert_ids(batch)
    assert ids == [alert_id(r) for r in to_records(batch)]
    assert given_any == any(isinstance(r.get("alert_id"), str) and r["alert_id"] for r in to_records(batch))
    small = Chunk(batch)  # a few rows: ids alert by alert
    assert small.small and (small.ids, small.ids_given) == (ids, given_any)
    assert Chunk(batch, small=False).rows == len(records)
    for console in (Console(stream=io.StringIO(), colour=False), coloured()):
        assert console.preview_column(Chunk(batch, small=False)).to_pylist() == per_alert_console(
            console, batch
        )


def both_paths(channel: Any, batch: pa.RecordBatch) -> tuple[list[str], list[str]]:
    """The channel's previews rendered a column at a time, and alert by alert."""
    per_alert = [
        channel.preview(channel.render(r, i))
        for r, i in zip(to_records(batch), alert_ids(batch)[0], strict=True)
    ]
    return channel.preview_column(Chunk(batch, small=False)).to_pylist(), per_alert


@SETTINGS
@given(batches, st.sampled_from([None, "Desk @everyone", "x" * 200]))
def test_discord_payloads_match_the_per_alert_path(
    case: tuple[list[dict[str, Any]], set[str]], username: str | None
) -> None:
    records, drop = case
    batch = wire_batch(records, drop)
    channel = discord_channel.from_target(None, Settings(dry_run=True))
    channel.username, channel.avatar_url = username, "https://example.com/a.png" if username else None
    got, expected = both_paths(channel, batch)
    assert got == expected
    for text in got:
        assert not discord_problems(orjson.loads(text))


@SETTINGS
@given(batches)
def test_slack_payloads_match_the_per_alert_path(case: tuple[list[dict[str, Any]], set[str]]) -> None:
    records, drop = case
    batch = wire_batch(records, drop)
    channel = slack_channel.from_target(None, Settings(dry_run=True))
    got, expected = both_paths(channel, batch)
    assert got == expected
    for text in got:
        assert slack_problems(orjson.loads(text)) is None


def undated(text: str) -> str:
    return re.sub(r"^Date: .*$", "Date: -", text, count=1, flags=re.MULTILINE)


@SETTINGS
@given(
    batches,
    st.sampled_from(
        [
            None,  # the default, CRITICAL TRADING ALERT: {symbol}
            "{strategy}: {symbol} {confidence:.0%} {side}",
            "{nowhere} {symbol!r} {timestamp}",
            "{message}",
            "{symbol:.1%}",  # a spec that does not fit: the default subject
            "{confidence:d} {side}",  # the same, with a field the default does not name
            "{alert_id}",  # unique per alert: rendered alert by alert
        ]
    ),
)
def test_email_messages_match_the_per_alert_path(
    case: tuple[list[dict[str, Any]], set[str]], subject: str | None
) -> None:
    records, drop = case
    batch = wire_batch(records, drop)
    channel = email_channel.Email(["desk@example.com"], Settings(dry_run=True, subject=subject))
    got, expected = both_paths(channel, batch)
    assert [undated(text) for text in got] == [undated(text) for text in expected]


SAMPLE = [
    signal(),
    signal(symbol="@everyone", side="short", message="a\nb <@1>", entry_price=0.01234, rr_ratio=None),
    signal(timestamp=None, confidence=None, strategy=None, side=None, signal_type="long"),
    signal(message="m" * 7000, symbol="🚀" * 600),
    # over Discord's 6,000-unit total until trimmed: the per-alert payload() trims this one
    signal(message="m" * 7000, symbol="🚀" * 600, strategy="s" * 300, entry_price=1e300, target=-1e300),
]


def test_a_slack_text_over_its_limit_is_cut_as_the_per_alert_path_does() -> None:
    chunk = Chunk(wire_batch(SAMPLE), small=False)
    got = [orjson.loads(t) for t in slack_channel.payload_column(chunk).to_pylist()]
    assert len(got[-1]["text"]) <= slack_channel.TEXT_MAX and got[-1]["text"].endswith("…")
    assert all(slack_problems(body) is None for body in got)


def test_an_embed_over_the_total_is_trimmed_as_the_per_alert_path_does() -> None:
    chunk = Chunk(wire_batch(SAMPLE), small=False)
    got = [orjson.loads(t) for t in discord_channel.payload_column(chunk).to_pylist()]
    assert discord_channel.embed_size(got[-1]["embeds"][0]) <= 6000
    assert len(got[-1]["embeds"][0]["description"]) < 4096  # cut further to fit the total


@pytest.mark.parametrize(
    "types",
    [
        {},  # the wire's types
        {"timestamp": pa.timestamp("ms", tz="UTC"), "symbol": pa.string()},
        {"timestamp": pa.int64(), "strategy": pa.dictionary(pa.int32(), pa.string())},
        {"timestamp": pa.timestamp("us"), "message": pa.large_string(), "side": pa.large_string()},
        {"timestamp": pa.float64(), "confidence": pa.float32()},
        {"timestamp": pa.uint64(), "symbol": pa.dictionary(pa.int8(), pa.string())},
    ],
    ids=["wire", "ms-and-plain-symbol", "int-time", "us-large-strings", "float-time", "uint64-time"],
)
def test_other_column_types_render_as_the_per_alert_path(types: dict[str, pa.DataType]) -> None:
    records = [{**r, "timestamp": r["timestamp"] // 1_000_000 if r["timestamp"] else None} for r in SAMPLE]
    if types.get("timestamp") == pa.float64():
        records = [{**r, "timestamp": float(r["timestamp"]) if r["timestamp"] else None} for r in records]
    names = [c for c in COLUMNS if c != "alert_id"]
    schema = pa.schema([(n, types.get(n, FIELD_TYPES[n])) for n in names])
    batch = pa.RecordBatch.from_pylist([{k: r.get(k) for k in names} for r in records], schema=schema)
    chunk = Chunk(batch, small=False)
    assert chunk.ids == [alert_id(r) for r in to_records(batch)]
    for console in (Console(stream=io.StringIO(), colour=False), coloured()):
        assert console.preview_column(chunk).to_pylist() == per_alert_console(console, batch)
    for channel in (
        discord_channel.from_target(None, Settings(dry_run=True)),
        slack_channel.from_target(None, Settings(dry_run=True)),
    ):
        expected = [
            channel.preview(channel.render(r, i)) for r, i in zip(to_records(batch), chunk.ids, strict=True)
        ]
        assert channel.preview_column(chunk).to_pylist() == expected


def test_receipt_columns_match_receipt_dicts() -> None:
    batch = wire_batch([*SAMPLE, {**signal(), "symbol": None, "timestamp": None, "strategy": None}])
    chunk = Chunk(batch, small=False)
    payload = pa.array([f"p{i}" for i in range(chunk.rows)], pa.string())
    got = receipt_columns(chunk, "console", "dry-run", attempts=0, latency_ms=0.0, payload=payload)
    dicts = [
        {
            "type": "alert",
            "timestamp": 1,
            "alert_id": i,
            "channel": "console",
            "status": "dry-run",
            "attempts": 0,
            "latency_ms": 0.0,
            "error": None,
            "symbol": r.get("symbol"),
            "strategy": r.get("strategy"),
            "signal_ts": r.get("timestamp"),
            "payload": f"p{n}",
        }
        for n, (r, i) in enumerate(zip(to_records(batch), chunk.ids, strict=True))
    ]
    expected = receipts_batch(dicts)
    assert got.schema == expected.schema
    assert to_records(got.drop_columns(["timestamp"])) == to_records(expected.drop_columns(["timestamp"]))
    assert status_counts(got) == {"dry-run": chunk.rows}
    failed = receipt_columns(chunk, "console", "failed", attempts=1, latency_ms=1.5, error="cannot write")
    assert failed.column("error").to_pylist() == ["cannot write"] * chunk.rows
    assert "payload" not in failed.schema.names


def test_console_sends_a_batch_in_one_write() -> None:
    stream = io.StringIO()
    console = Console(stream=stream, colour=False)
    batch = wire_batch(SAMPLE)
    outcomes = console.send_column(Chunk(batch, small=False))
    assert all(o.ok for o in outcomes) and len(outcomes) == len(SAMPLE)
    assert stream.getvalue() == "".join(console.render(r, alert_id(r)) for r in to_records(batch))
