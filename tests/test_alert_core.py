"""The alert core in-process: selection, ids, the outbox journal, queues, backoff, the engine."""

from __future__ import annotations

import itertools
import os
import random
import stat
import statistics
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from alert_standins import DiscordStandIn, SlackStandIn, WebhookStandIn, dead_url

from tradecli.delivery import Item, SpoolQueue, backoff
from tradecli.outbox import Entry, Outbox, replay
from tradecli.records import normalise
from tradecli.stages.alert import AlertOptions, alert, alert_id, receipts_batch, select, to_records

TS = 1_763_649_000_000_000_000


def sig(i: int, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "signal",
        "symbol": f"S{i}",
        "timestamp": TS + i * 1_000_000_000,
        "strategy": "gap_and_go" if i % 2 else "vwap_reclaim",
        "side": "long" if i % 3 else "short",
        "confidence": 0.5 + (i % 5) / 10,
        "entry_price": 10.0 + i,
        "stop_loss": 9.0 + i,
        "target": 13.0 + i,
        "message": f"signal {i}",
    }
    base.update(overrides)
    return base


def batch(records: list[dict[str, Any]]) -> pa.RecordBatch:
    names = list(dict.fromkeys(k for r in records for k in r))
    raw = pa.record_batch([pa.array([r.get(n) for r in records]) for n in names], names=names)
    good, bad = normalise(raw)
    assert not bad
    return good


# ---------------------------------------------------------------------------------------------
# selection and ids


def test_select_passes_only_signals_that_meet_the_filters() -> None:
    records = [sig(i) for i in range(20)]
    records.insert(3, {"type": "trade", "symbol": "AAPL", "timestamp": TS, "price": 1.0, "volume": 5})
    records.insert(7, {"type": "quote", "symbol": "AAPL", "timestamp": TS, "bid": 1.0, "ask": 1.1})
    b = batch(records)
    every = select(b)
    assert every.skipped == 2 and every.filtered == 0 and every.signals.num_rows == 20
    chosen = select(b, min_confidence=0.7, strategies=["GAP_AND_GO"], symbols=["s1", "S3", "S5", "S6"])
    kept = to_records(chosen.signals)
    expected = [
        r["symbol"]
        for r in records
        if r["type"] == "signal"
        and r["confidence"] >= 0.7
        and r["strategy"] == "gap_and_go"
        and r["symbol"] in {"S1", "S3", "S5", "S6"}
    ]
    assert [r["symbol"] for r in kept] == expected
    assert chosen.filtered == 20 - len(expected)


def test_select_without_confidence_or_symbol() -> None:
    b = batch([{"type": "signal", "symbol": "A", "timestamp": TS}, {"type": "signal", "timestamp": TS}])
    chosen = select(b, min_confidence=0.1)
    assert chosen.signals.num_rows == 0 and chosen.filtered == 1 and len(chosen.missing_symbol) == 1


def test_to_records_keeps_ns_and_nulls() -> None:
    rows = to_records(batch([sig(1), sig(2, target=None, extra=[1, 2])]))
    assert rows[0]["timestamp"] == TS + 1_000_000_000 and isinstance(rows[0]["timestamp"], int)
    assert rows[1]["target"] is None and rows[1]["extra"] == [1, 2] and rows[0]["symbol"] == "S1"


def test_alert_ids_are_stable_and_distinct() -> None:
    records = [sig(i) for i in range(50)]
    ids = [alert_id(r) for r in to_records(batch(records))]
    assert len(set(ids)) == 50
    assert ids == [alert_id(r) for r in records]  # the same through the wire and back
    assert alert_id(sig(1, confidence=0.1, source="x")) == alert_id(sig(1))  # not part of the identity
    assert alert_id(sig(1, message="other")) != alert_id(sig(1))
    assert alert_id(sig(1, alert_id="given-id")) == "given-id"


def test_receipts_batch_types() -> None:
    rec = {
        "type": "alert",
        "timestamp": TS,
        "alert_id": "a",
        "channel": "console",
        "status": "delivered",
        "attempts": 1,
        "latency_ms": 1.5,
        "error": None,
        "symbol": "S1",
        "strategy": "x",
        "signal_ts": TS,
    }
    b = receipts_batch([rec, {**rec, "payload": "{}", "error": "boom"}])
    assert b.schema.field("timestamp").type == pa.timestamp("ns", tz="UTC")
    assert b.schema.field("attempts").type == pa.int64()
    assert b.column("payload").to_pylist() == [None, "{}"]


# ---------------------------------------------------------------------------------------------
# backoff and queues


def test_backoff_grows_to_a_cap_with_jitter() -> None:
    rng = random.Random(7)
    delays = [[backoff(n, 0.5, rng=rng) for n in range(1, 10)] for _ in range(200)]
    for n in range(9):
        column = [d[n] for d in delays]
        ceiling = min(30.0, 0.5 * 2**n)
        assert all(ceiling / 2 <= x <= ceiling for x in column)
        assert len(set(column)) > 100  # jittered, not all equal
    means = [statistics.mean(d[n] for d in delays) for n in range(6)]  # below the 30 s cap
    assert means == sorted(means)
    assert max(max(d) for d in delays) <= 30.0


def test_spool_queue_keeps_order_beyond_memory(tmp_path: Path) -> None:
    queue = SpoolQueue(tmp_path / "q.spill", cap=10)
    for i in range(55):
        queue.put(Item(f"id{i}", {"n": i}, float(i)))
    assert len(queue) == 55
    got = [queue.get() for _ in range(30)]
    for i in range(55, 70):
        queue.put(Item(f"id{i}", {"n": i}, float(i)))
    got += queue.drain()
    assert [g.alert_id for g in got if g] == [f"id{i}" for i in range(70)]
    assert stat.S_IMODE(os.stat(tmp_path / "q.spill").st_mode) == 0o600
    queue.close()
    assert not (tmp_path / "q.spill").exists()


# ---------------------------------------------------------------------------------------------
# the outbox journal


def test_outbox_journal_survives_and_is_adopted(tmp_path: Path) -> None:
    first = Outbox(tmp_path)
    first.open()
    assert first.path is not None
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.dir.stat().st_mode) == 0o700
    first.add([Entry(f"a{i}", "discord-1", "discord:x/***", sig(i)) for i in range(5)])
    first.attempt("a0", "discord-1")
    first.done("a0", "discord-1", True)
    first.attempt("a1", "discord-1")  # in flight when the process died
    first.done("a2", "discord-1", False)  # failed for good: not kept
    # a second run while the first still holds its lock adopts nothing
    second = Outbox(tmp_path)
    second.open()
    assert second.backlog == {}
    second.close()
    # the first "dies" without closing: its lock goes with its file descriptor
    assert first._fd is not None
    os.close(first._fd)
    first._fd = None
    third = Outbox(tmp_path)
    third.open()
    pending = third.backlog["discord-1"]
    assert [e.alert_id for e in pending] == ["a1", "a3", "a4"]
    assert [e.tried for e in pending] == [True, False, False]
    assert pending[1].signal == sig(3)
    assert third.was_delivered("a0", "discord-1") and not third.was_delivered("a1", "discord-1")
    assert [p.name for p in third.dir.glob("journal-*.ndjson")] == [third.path.name]  # type: ignore[union-attr]
    third.close()


def test_outbox_compaction_keeps_pending_and_recent(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    box.open()
    box.add([Entry(f"a{i}", "k", "l", {"n": i}) for i in range(100)])
    for i in range(0, 100, 2):
        box.done(f"a{i}", "k", True)
    box.close()
    assert box.path is not None
    lines = [orjson.loads(x) for x in box.path.read_bytes().splitlines()]
    assert [x["id"] for x in lines if x["op"] == "add"] == [f"a{i}" for i in range(1, 100, 2)]
    assert {x["id"] for x in lines if x["op"] == "sent"} == {f"a{i}" for i in range(0, 100, 2)}
    state = replay(iter(box.path.read_bytes().splitlines(keepends=True)))
    assert len(state.pending) == 50


def test_outbox_tolerates_a_torn_line(tmp_path: Path) -> None:
    (tmp_path / "outbox").mkdir(mode=0o700)
    journal = tmp_path / "outbox" / "journal-1-1.ndjson"
    good = orjson.dumps({"op": "add", "id": "x", "ch": "k", "label": "l", "signal": {"symbol": "A"}})
    journal.write_bytes(good + b"\n" + b'{"op":"add","id":"y","ch":"k","sig')
    warnings: list[str] = []
    box = Outbox(tmp_path, warnings.append)
    box.open()
    assert [e.alert_id for e in box.backlog["k"]] == ["x"]
    assert warnings and "torn" in warnings[0]
    box.close()


def test_outbox_holds_no_secret(tmp_path: Path) -> None:
    canary = "CANARY-" + "z" * 40
    with DiscordStandIn(token=canary, script=["503"] * 10) as discord:
        opts = AlertOptions(to=[f"discord:{discord.url}"], retries=0, backoff=0.01, timeout=2)
        receipts = receipts_of(alert([batch([sig(1)])], opts, state_dir=tmp_path))
    assert [r["status"] for r in receipts] == ["queued"]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes()
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


# ---------------------------------------------------------------------------------------------
# the engine, in-process against loopback stand-ins


def receipts_of(batches: Any) -> list[dict[str, Any]]:
    return [r for b in batches for r in to_records(b)]


def test_library_alert_delivers_in_order_to_every_channel(tmp_path: Path) -> None:
    records = [sig(i) for i in range(12)]
    with DiscordStandIn() as discord, WebhookStandIn() as hook:
        opts = AlertOptions(to=[f"discord:{discord.url}", f"webhook:{hook.url}"])
        receipts = receipts_of(alert([batch(records[:5]), batch(records[5:])], opts, state_dir=tmp_path))
        ids = [alert_id(r) for r in records]
        assert discord.ids() == ids
        assert [a["alert_id"] for _, a in hook.accepted] == ids
    assert len(receipts) == 24 and {r["status"] for r in receipts} == {"delivered"}
    assert all(r["attempts"] == 1 and r["latency_ms"] >= 0 for r in receipts)


def test_dead_channel_does_not_delay_a_live_one(tmp_path: Path) -> None:
    records = [sig(i) for i in range(5)]
    with DiscordStandIn(script=["hang"] * 5) as discord, WebhookStandIn() as hook:
        opts = AlertOptions(to=[f"discord:{discord.url}", f"webhook:{hook.url}"], retries=0, timeout=3)
        started = time.monotonic()
        receipts = receipts_of(alert([batch(records)], opts, state_dir=tmp_path))
        assert len(hook.accepted) == 5
        # every webhook delivery happened while Discord was still hanging on the first alert
        assert max(at for at, _ in hook.accepted) - started < 2.5
    by_channel = {r["channel"].split(":")[0]: r for r in receipts}
    assert by_channel["webhook"]["status"] == "delivered"
    statuses = [r["status"] for r in receipts if r["channel"].startswith("discord")]
    assert statuses == ["queued"] * 5  # the first timed out, the rest waited in the outbox


def test_refused_connection_is_queued_then_sent_by_the_next_run(tmp_path: Path) -> None:
    records = [sig(i) for i in range(4)]
    with DiscordStandIn() as gone:
        url, port = gone.url, gone.port
    opts = AlertOptions(to=[f"discord:{url}"], retries=1, backoff=0.01, timeout=1)
    first = receipts_of(alert([batch(records)], opts, state_dir=tmp_path))
    assert [r["status"] for r in first] == ["queued"] * 4
    assert "refused" in first[0]["error"] and first[0]["attempts"] == 2
    assert first[1]["attempts"] == 0  # the channel was down: straight to the outbox
    with DiscordStandIn(port=port) as discord:
        again = receipts_of(alert([], opts, state_dir=tmp_path))
        assert discord.ids() == [alert_id(r) for r in records]
    assert [r["status"] for r in again] == ["delivered"] * 4
    # a refused connection proves nothing was sent: no false "possible duplicate"
    assert not any(r["error"] for r in again), again
    with DiscordStandIn(port=port) as discord:  # nothing left: nothing sent twice
        assert receipts_of(alert([], opts, state_dir=tmp_path)) == []
        assert discord.requests == []


def test_timeout_after_sending_is_a_possible_duplicate(tmp_path: Path) -> None:
    warnings: list[str] = []
    with DiscordStandIn([("slow", 1.5)]) as discord:
        opts = AlertOptions(to=[f"discord:{discord.url}"], timeout=0.5, backoff=0.01)
        (receipt,) = receipts_of(alert([batch([sig(1)])], opts, state_dir=tmp_path, warn=warnings.append))
        time.sleep(1.2)  # the slow answer's message lands after the client gave up on it
        assert len(discord.messages) == 2  # the service got it twice: that is what was flagged
    assert receipt["status"] == "delivered" and receipt["attempts"] == 2
    assert "possibly a duplicate" in receipt["error"]
    assert any("may have been delivered twice" in w for w in warnings)


def test_a_channel_that_raises_fails_that_alert_only(tmp_path: Path) -> None:
    from tradecli.channels.webhook import Webhook

    with WebhookStandIn() as hook:
        original = Webhook.send
        calls = []

        def flaky(self: Webhook, rendered: bytes, alert_id: str) -> Any:
            calls.append(alert_id)
            if len(calls) == 1:
                raise RuntimeError("bug")
            return original(self, rendered, alert_id)

        Webhook.send = flaky  # type: ignore[method-assign]
        try:
            opts = AlertOptions(to=[f"webhook:{hook.url}"])
            got = receipts_of(alert([batch([sig(1), sig(2)])], opts, state_dir=tmp_path))
        finally:
            Webhook.send = original  # type: ignore[method-assign]
    assert [r["status"] for r in got] == ["failed", "delivered"]
    assert got[0]["error"] == "RuntimeError: bug"


def test_a_channel_back_within_the_run_gets_its_queued_alerts_in_order(tmp_path: Path) -> None:
    def slowly() -> Any:
        yield batch([sig(i) for i in range(3)])
        time.sleep(1.5)  # the channel comes back while the input is still open
        yield batch([sig(3)])

    with DiscordStandIn(["503", "503", "503"]) as discord:
        opts = AlertOptions(to=[f"discord:{discord.url}"], retries=1, backoff=0.05)
        got = receipts_of(alert(slowly(), opts, state_dir=tmp_path))
        symbols = [m["embeds"][0]["fields"][0]["value"] for _, m in discord.messages]
    assert symbols == ["S0", "S1", "S2", "S3"]
    assert [(r["symbol"], r["status"]) for r in got] == [
        ("S0", "queued"),
        ("S1", "queued"),
        ("S2", "queued"),
        ("S0", "delivered"),
        ("S1", "delivered"),
        ("S2", "delivered"),
        ("S3", "delivered"),
    ]
    assert [r["attempts"] for r in got] == [2, 0, 0, 1, 1, 1, 1]  # the tries behind each receipt


def test_a_very_long_retry_after_queues_instead_of_holding_the_run(tmp_path: Path) -> None:
    with DiscordStandIn([("429", 3600.0)]) as discord:
        opts = AlertOptions(to=[f"discord:{discord.url}"])
        started = time.monotonic()
        got = receipts_of(alert([batch([sig(1), sig(2)])], opts, state_dir=tmp_path))
        assert time.monotonic() - started < 10
        assert len(discord.requests) == 1
    assert [r["status"] for r in got] == ["queued", "queued"]
    assert "asked to wait 3600 s" in got[0]["error"]


def test_slack_is_paced_to_one_a_second(tmp_path: Path) -> None:
    with SlackStandIn() as slack:
        opts = AlertOptions(to=[f"slack:{slack.url}"])
        receipts = receipts_of(alert([batch([sig(i) for i in range(3)])], opts, state_dir=tmp_path))
        times = [at for at, _ in slack.messages]
    assert [r["status"] for r in receipts] == ["delivered"] * 3
    assert all(b - a >= 0.95 for a, b in itertools.pairwise(times))


def test_discord_rate_limit_headers_are_honoured(tmp_path: Path) -> None:
    with DiscordStandIn(bucket=(2, 0.6)) as discord:
        opts = AlertOptions(to=[f"discord:{discord.url}"])
        receipts = receipts_of(alert([batch([sig(i) for i in range(6)])], opts, state_dir=tmp_path))
        assert discord.violations == 0  # it waited for the bucket instead of hitting 429
        assert len(discord.messages) == 6
    assert {r["status"] for r in receipts} == {"delivered"}


def test_dry_run_sends_nothing_and_touches_no_state(tmp_path: Path) -> None:
    opts = AlertOptions(to=[f"discord:{dead_url()}", "slack", "webhook", "console"], dry_run=True)
    receipts = receipts_of(alert([batch([sig(1), sig(2)])], opts, state_dir=tmp_path / "state"))
    assert len(receipts) == 8 and {r["status"] for r in receipts} == {"dry-run"}
    assert all(r["payload"] and r["attempts"] == 0 for r in receipts)
    discord_payload = orjson.loads(receipts[0]["payload"])
    assert discord_payload["embeds"][0]["fields"][0]["value"] == "S1"
    assert not (tmp_path / "state").exists()
