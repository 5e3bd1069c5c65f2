"""trade alert as a real process against loopback Discord, Slack, webhook and SMTP stand-ins."""

from __future__ import annotations

import io
import itertools
import os
import select
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from email import message_from_string, policy
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from alert_standins import (
    ConnectProxy,
    DiscordStandIn,
    SlackStandIn,
    WebhookStandIn,
    dead_url,
    pings,
    smtp_server,
    tls_pair,
)
from conftest import arrow_table, child_env, invoke, ndjson_records, trade_argv

from tradecli.channels import Settings
from tradecli.channels import email as email_channel
from tradecli.stages.alert import alert_id

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

TS = 1_763_649_000_000_000_000
CANARY = "CANARY-5ecret-" + "q" * 30


def sig(i: int, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "signal",
        "symbol": f"S{i}",
        "timestamp": TS + i * 1_000_000_000,
        "strategy": "gap_and_go",
        "side": "long" if i % 2 else "short",
        "signal_type": "gap_and_go_continuation",
        "confidence": 0.8,
        "entry_price": 10.0 + i,
        "stop_loss": 9.0 + i,
        "target": 13.0 + i,
        "rr_ratio": 3.0,
        "message": f"Gap & Go: S{i} gapped 12.0% with 4.0x volume",
        "source": "sim",
    }
    base.update(overrides)
    return base


def lines(records: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    for name in ("state", "config", "data"):
        (tmp_path / name).mkdir()
    return tmp_path


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = child_env(
        XDG_STATE_HOME=str(home / "state"),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_DATA_HOME=str(home / "data"),
    )
    for name in list(env):
        if name.startswith(("DISCORD_", "SLACK_", "TRADE_SMTP", "TRADE_WEBHOOK", "TRADE_CONFIG")):
            del env[name]
    env.update(extra)
    return env


def run(
    home: Path, *args: str, input: bytes = b"", timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        trade_argv("alert", *args),
        input=input,
        capture_output=True,
        timeout=timeout,
        env=env_for(home, **env),
    )


def receipts(result: subprocess.CompletedProcess[bytes] | bytes) -> list[dict[str, Any]]:
    data = result if isinstance(result, bytes) else result.stdout
    return ndjson_records(data)


def no_canary(*blobs: bytes | str) -> None:
    for blob in blobs:
        text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
        assert CANARY not in text


def state_files(home: Path) -> Iterator[Path]:
    return (p for p in (home / "state").rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# Discord


def test_discord_delivers_in_order_with_429_and_5xx(home: Path) -> None:
    records = [sig(i) for i in range(8)]
    script = [("429", 0.4), "500", "502", "ok", ("429", 0.25)]
    with DiscordStandIn(script, token=CANARY) as discord:
        result = run(
            home,
            "--to",
            "discord",
            "--backoff",
            "50ms",
            input=lines(records),
            DISCORD_WEBHOOK_URL=discord.url,
        )
        requests = list(discord.requests)
    assert result.returncode == 0, result.stderr
    got = receipts(result)
    assert [r["status"] for r in got] == ["delivered"] * 8
    assert [r["symbol"] for r in got] == [f"S{i}" for i in range(8)]
    assert [r["attempts"] for r in got] == [4, 2, 1, 1, 1, 1, 1, 1]
    assert got[0]["channel"] == f"discord:{discord.base}/api/webhooks/{discord.webhook_id}/***"
    assert discord.ids() == [r["alert_id"] for r in got]
    # the 429 waits were honoured: no request sooner than retry_after after a 429
    waits = iter([0.4, 0.25])
    for before, after in itertools.pairwise(requests):
        if before.status == 429:
            assert after.at - before.at >= next(waits) * 0.98
    assert all(r.path.endswith("?wait=true") for r in requests)
    assert not any(pings(m) for _, m in discord.messages)
    no_canary(result.stdout, result.stderr)


def test_everyone_in_symbol_or_message_pings_no_one(home: Path) -> None:
    records = [sig(1, symbol="@EVERYONE", message="@everyone @here <@&1234> <@5678> buy now")]
    with DiscordStandIn() as discord:
        result = run(home, "--to", "discord", input=lines(records), DISCORD_WEBHOOK_URL=discord.url)
    assert result.returncode == 0, result.stderr
    ((_, body),) = discord.messages
    assert body["allowed_mentions"] == {"parse": []}
    assert not pings(body)


@pytest.mark.parametrize(
    ("step", "code", "exit_code"), [("404", "10015", 69), ("401", "50027", 77)], ids=["unknown", "token"]
)
def test_discord_permanent_error_stops_only_that_channel(
    home: Path, step: str, code: str, exit_code: int
) -> None:
    records = [sig(i) for i in range(5)]
    with DiscordStandIn([step]) as discord, WebhookStandIn() as hook:
        result = run(
            home,
            "--to",
            "discord",
            "--to",
            "webhook",
            input=lines(records),
            DISCORD_WEBHOOK_URL=discord.url,
            TRADE_WEBHOOK_URL=hook.url,
        )
        assert len(discord.requests) == 1  # never retried
        assert len(hook.accepted) == 5  # the other channel went on
    assert result.returncode == exit_code
    stderr = result.stderr.decode()
    assert stderr.count("this channel stops") == 1 and f"code {code}" in stderr
    got = receipts(result)
    discord_receipts = [r for r in got if r["channel"].startswith("discord")]
    assert [r["status"] for r in discord_receipts] == ["failed"] * 5
    assert [r["attempts"] for r in discord_receipts] == [1, 0, 0, 0, 0]
    assert {r["status"] for r in got if r["channel"].startswith("webhook")} == {"delivered"}


def test_invalid_payload_fails_that_alert_only(home: Path) -> None:
    with DiscordStandIn() as discord:
        discord.script = []
        real_answer = discord.answer

        def picky(request: Any, step: Any) -> Any:
            if b"S1" in request.body:
                return (
                    400,
                    {"Content-Type": "application/json"},
                    b'{"message":"Invalid Form Body","code":50035}',
                )
            return real_answer(request, step)

        discord.answer = picky  # type: ignore[method-assign]
        result = run(
            home, "--to", "discord", input=lines([sig(0), sig(1), sig(2)]), DISCORD_WEBHOOK_URL=discord.url
        )
    assert [r["status"] for r in receipts(result)] == ["delivered", "failed", "delivered"]
    assert "50035" in receipts(result)[1]["error"]
    assert result.returncode == 69


# ---------------------------------------------------------------------------------------------
# Slack, webhook


def test_slack_ok_429_and_dead_webhooks(home: Path) -> None:
    with SlackStandIn(["429"], secret=CANARY) as slack:
        result = run(home, "--to", "slack", input=lines([sig(0), sig(1)]), SLACK_WEBHOOK_URL=slack.url)
        times = [r.at for r in slack.requests]
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in receipts(result)] == ["delivered"] * 2
    assert times[1] - times[0] >= 0.98  # Retry-After: 1
    assert receipts(result)[0]["channel"] == f"slack:{slack.base}/services/T0000/B0000/***"
    no_canary(result.stdout, result.stderr)
    for step, exit_code, word in (("403", 77, "invalid_token"), ("404", 69, "channel_not_found")):
        with SlackStandIn([step]) as slack:
            result = run(home, "--to", "slack", input=lines([sig(0), sig(1)]), SLACK_WEBHOOK_URL=slack.url)
            assert len(slack.requests) == 1
        assert result.returncode == exit_code
        assert word in result.stderr.decode()
        assert [r["status"] for r in receipts(result)] == ["failed", "failed"]


def test_webhook_is_signed(home: Path) -> None:
    records = [sig(i, extra={"k": i}) for i in range(3)]
    with WebhookStandIn(secret=CANARY) as hook:
        result = run(
            home,
            "--to",
            "webhook",
            input=lines(records),
            TRADE_WEBHOOK_URL=hook.url,
            TRADE_WEBHOOK_SECRET=CANARY,
        )
        bodies = [b for _, b in hook.accepted]
        headers = hook.requests[0].headers
    assert result.returncode == 0, result.stderr
    assert [b["symbol"] for b in bodies] == ["S0", "S1", "S2"]
    assert bodies[0]["extra"] == {"k": 0} and bodies[0]["timestamp"] == TS
    assert headers["idempotency-key"] == bodies[0]["alert_id"] == receipts(result)[0]["alert_id"]
    no_canary(result.stdout, result.stderr)
    with WebhookStandIn(secret="the-other-secret") as hook:
        result = run(
            home,
            "--to",
            "webhook",
            input=lines(records),
            TRADE_WEBHOOK_URL=hook.url,
            TRADE_WEBHOOK_SECRET=CANARY,
        )
        assert hook.accepted == []
    assert result.returncode == 77
    assert [r["status"] for r in receipts(result)] == ["failed"] * 3


def test_https_verified_against_ca_file_and_through_a_proxy(home: Path, tmp_path: Path) -> None:
    context, ca_file = tls_pair(tmp_path)
    with WebhookStandIn(tls=context, secret=CANARY) as hook:
        env = {"TRADE_WEBHOOK_URL": hook.url, "TRADE_WEBHOOK_SECRET": CANARY}
        trusted = run(home, "--to", "webhook", "--ca-file", str(ca_file), input=lines([sig(0)]), **env)
        untrusted = run(home, "--to", "webhook", input=lines([sig(1)]), **env)
        with ConnectProxy() as proxy:
            proxied = run(
                home,
                "--to",
                "webhook",
                input=lines([sig(2)]),
                HTTPS_PROXY=f"http://user:{CANARY}@127.0.0.1:{proxy.port}",
                NO_PROXY="",
                TRADE_CA_FILE=str(ca_file),
                **env,
            )
            tunnels = list(proxy.tunnels)
            assert len(proxy.auth) == 1 and proxy.auth[0].startswith("Basic ")
        delivered = [b["symbol"] for _, b in hook.accepted]
    assert trusted.returncode == 0, trusted.stderr
    assert untrusted.returncode == 69 and "not trusted" in untrusted.stderr.decode()
    assert proxied.returncode == 0, proxied.stderr
    assert tunnels == [f"127.0.0.1:{hook.port}"]
    assert delivered == ["S0", "S2"]
    no_canary(trusted.stderr, untrusted.stderr, proxied.stderr, proxied.stdout)


# ---------------------------------------------------------------------------------------------
# e-mail


def smtp_env(server: Any, **extra: str) -> dict[str, str]:
    return {
        "TRADE_SMTP_HOST": server.host,
        "TRADE_SMTP_PORT": str(server.port),
        "TRADE_SMTP_USER": "alerts",
        "TRADE_SMTP_PASSWORD": "pw",
        "TRADE_SMTP_FROM": "alerts@example.com",
        **extra,
    }


def mail(home: Path, server: Any, to: str, records: list[dict[str, Any]], **env: str) -> Any:
    """``trade alert --to email:TO`` against the loopback server, trusting its CA."""
    return run(
        home,
        "--to",
        f"email:{to}",
        "--ca-file",
        str(server.ca_file),
        input=lines(records),
        **smtp_env(server, **env),
    )


@pytest.mark.parametrize("mode", ["starttls", "tls"])
def test_email_over_tls_with_auth(home: Path, tmp_path: Path, mode: str) -> None:
    records = [sig(0, symbol="<AAPL>", message="<script>x</script> & more"), sig(1), sig(2)]
    with smtp_server(tmp_path, mode) as server:
        security = "tls" if mode == "tls" else "starttls"
        result = mail(
            home, server, "desk@example.com,risk@example.com", records, TRADE_SMTP_SECURITY=security
        )
        box = server.mailbox
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in receipts(result)] == ["delivered"] * 3
    assert len(box.messages) == 3
    assert all(e["tls"] and e["authenticated"] for e in box.envelopes)
    assert len({e["peer"] for e in box.envelopes}) == 1  # one connection for the burst
    assert box.envelopes[0]["to"] == ["desk@example.com", "risk@example.com"]
    first = box.messages[0]
    assert first["Subject"] == "CRITICAL TRADING ALERT: <AAPL>"
    assert [p.get_content_type() for p in first.iter_parts()] == ["text/plain", "text/html"]
    page = first.get_body(("html",)).get_content()
    assert "&lt;AAPL&gt;" in page and "&lt;script&gt;x&lt;/script&gt; &amp; more" in page
    assert "<script>" not in page and "<AAPL>" not in page
    assert "Symbol: <AAPL>" in first.get_body(("plain",)).get_content()


def test_email_refused_message_and_hostile_alert_id_on_one_connection(home: Path, tmp_path: Path) -> None:
    records = [
        sig(0, alert_id="id with space\r\nX-Inject: 1"),
        sig(1, message="REFUSE-ME please"),
        sig(2, alert_id="abc\rdef\x00"),
    ]
    with smtp_server(tmp_path, "starttls", refuse=b"REFUSE-ME") as server:
        result = mail(home, server, "desk@example.com", records)
        box = server.mailbox
    assert [r["status"] for r in receipts(result)] == ["delivered", "failed", "delivered"], result.stderr
    assert "554" in receipts(result)[1]["error"]
    assert len({e["peer"] for e in box.envelopes}) == 1  # the refusal did not cost the connection
    for raw, message in zip(box.raw, box.messages, strict=True):
        assert (
            b"\r\n" in raw
            and b"\r" not in raw.replace(b"\r\n", b"")
            and b"\n" not in raw.replace(b"\r\n", b"")
        )
        assert b"\x00" not in raw and not message.defects and message["X-Inject"] is None
    text = box.messages[0].get_body(("plain",)).get_content()
    assert "Alert ID: id with space X-Inject: 1\r\n" in text


def test_email_addresses_that_are_not_ascii_and_line_breaks_in_them(home: Path) -> None:
    channel = email_channel.Email(
        ["jörg@bücher.de"], Settings(env={"TRADE_SMTP_FROM": "Bot <bot@example.com>"}, dry_run=True)
    )
    parsed = message_from_string(channel.render(sig(0), "id1"), policy=policy.SMTPUTF8)
    assert parsed["To"] == "jörg@bücher.de" and not parsed.defects
    bad = run(
        home,
        "--dry-run",
        "--to",
        "email:desk@example.com",
        input=lines([sig(0)]),
        TRADE_SMTP_FROM="a@example.com\r\nBcc: x@example.com",
    )
    assert bad.returncode == 2 and b"line break" in bad.stderr


def test_email_trusts_ssl_cert_file_too(home: Path, tmp_path: Path) -> None:
    with smtp_server(tmp_path, "starttls") as server:
        result = run(
            home,
            "--to",
            "email:desk@example.com",
            input=lines([sig(0)]),
            SSL_CERT_FILE=str(server.ca_file),
            **smtp_env(server),
        )
        assert len(server.mailbox.messages) == 1
    assert result.returncode == 0, result.stderr


def test_email_never_falls_back_to_plaintext(home: Path, tmp_path: Path) -> None:
    with smtp_server(tmp_path, "plain") as server:
        result = run(
            home,
            "--to",
            "email:desk@example.com",
            "--ca-file",
            str(server.ca_file),
            input=lines([sig(0), sig(1)]),
            **smtp_env(server, TRADE_SMTP_PASSWORD=CANARY),
        )
        assert server.mailbox.messages == []
    assert result.returncode == 69
    assert "does not offer STARTTLS; refusing to send in plain text" in result.stderr.decode()
    assert [r["status"] for r in receipts(result)] == ["failed", "failed"]
    no_canary(result.stdout, result.stderr)


def test_email_bad_password_and_untrusted_certificate(home: Path, tmp_path: Path) -> None:
    with smtp_server(tmp_path, "starttls") as server:
        bad = run(
            home,
            "--to",
            "email:desk@example.com",
            "--ca-file",
            str(server.ca_file),
            input=lines([sig(0)]),
            **smtp_env(server, TRADE_SMTP_PASSWORD=CANARY),
        )
        untrusted = run(home, "--to", "email:desk@example.com", input=lines([sig(0)]), **smtp_env(server))
        assert server.mailbox.messages == []
    assert bad.returncode == 77 and "SMTP login refused" in bad.stderr.decode()
    no_canary(bad.stdout, bad.stderr)
    assert untrusted.returncode == 69 and "not trusted" in untrusted.stderr.decode()


# ---------------------------------------------------------------------------------------------
# the outbox: retries run out, stops, kills


def test_queued_alerts_are_sent_first_by_the_next_run(home: Path) -> None:
    with DiscordStandIn() as gone:
        url, port = gone.url, gone.port
    first = run(
        home,
        "--to",
        "discord",
        "--retries",
        "1",
        "--backoff",
        "20ms",
        input=lines([sig(0), sig(1)]),
        DISCORD_WEBHOOK_URL=url,
    )
    assert first.returncode == 69
    assert [r["status"] for r in receipts(first)] == ["queued", "queued"]
    assert "--flush-outbox" in first.stderr.decode()
    with DiscordStandIn(port=port) as discord:
        second = run(home, "--to", "discord", input=lines([sig(2)]), DISCORD_WEBHOOK_URL=url)
        assert [m["embeds"][0]["fields"][0]["value"] for _, m in discord.messages] == ["S0", "S1", "S2"]
    assert second.returncode == 0, second.stderr
    assert "left by an earlier run" in second.stderr.decode()
    with DiscordStandIn(port=port) as discord:  # the same signals again: already delivered
        third = run(home, "--to", "discord", input=lines([sig(0), sig(1), sig(2)]), DISCORD_WEBHOOK_URL=url)
        assert discord.requests == []
    assert third.returncode == 0 and receipts(third) == []
    assert "not sent again" in third.stderr.decode()


def test_flush_outbox_does_not_read_stdin(home: Path) -> None:
    with DiscordStandIn() as gone:
        url, port = gone.url, gone.port
    run(home, "--to", "discord", "--retries", "0", input=lines([sig(0)]), DISCORD_WEBHOOK_URL=url)
    with DiscordStandIn(port=port) as discord:
        proc = subprocess.Popen(
            trade_argv("alert", "--to", "discord", "--flush-outbox"),
            stdin=subprocess.PIPE,  # left open: --flush-outbox must not wait for it
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env_for(home, DISCORD_WEBHOOK_URL=url),
        )
        out, err = proc.communicate(timeout=30)
        assert len(discord.messages) == 1
    assert proc.returncode == 0, err
    assert [r["status"] for r in receipts(out)] == ["delivered"]


def start_burst(
    home: Path, discord: DiscordStandIn, records: list[dict[str, Any]]
) -> subprocess.Popen[bytes]:
    data = home / "burst.ndjson"
    data.write_bytes(lines(records))
    with open(data, "rb") as stdin:
        return subprocess.Popen(
            trade_argv("alert", "--to", "discord"),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env_for(home, DISCORD_WEBHOOK_URL=discord.url),
        )


def wait_for(condition: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.slow
def test_sigterm_mid_burst_loses_nothing_and_sends_nothing_twice(home: Path) -> None:
    records = [sig(i) for i in range(20)]
    expected = [alert_id(r) for r in records]
    with DiscordStandIn(delay=0.15) as discord:
        proc = start_burst(home, discord, records)
        wait_for(lambda: len(discord.requests) >= 5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        sent_first = discord.ids()
        second = run(home, "--to", "discord", DISCORD_WEBHOOK_URL=discord.url)
        every = discord.ids()
    assert proc.returncode == 143, err
    assert b"Traceback" not in err
    first = receipts(out)
    delivered = [r["alert_id"] for r in first if r["status"] == "delivered"]
    queued = [r["alert_id"] for r in first if r["status"] == "queued"]
    assert delivered == sent_first == expected[: len(delivered)] and len(delivered) >= 5
    assert sorted(delivered + queued) == sorted(expected)  # a receipt for every alert
    assert second.returncode == 0, second.stderr
    assert [r["alert_id"] for r in receipts(second)] == expected[len(delivered) :]
    assert every == expected  # each exactly once, in order


@pytest.mark.slow
def test_sigkill_mid_burst_next_run_delivers_the_rest(home: Path) -> None:
    records = [sig(i) for i in range(20)]
    expected = [alert_id(r) for r in records]
    with DiscordStandIn(delay=0.15) as discord:
        proc = start_burst(home, discord, records)
        wait_for(lambda: len(discord.requests) >= 6)
        proc.kill()
        out, _ = proc.communicate(timeout=20)
        time.sleep(0.3)  # a request in flight when the process died still lands
        second = run(home, "--to", "discord", DISCORD_WEBHOOK_URL=discord.url)
        every = discord.ids()
    assert proc.returncode == -signal.SIGKILL
    assert second.returncode == 0, second.stderr
    confirmed = {r["alert_id"] for r in receipts(out) if r["status"] == "delivered"}
    resent = {r["alert_id"] for r in receipts(second)}
    assert confirmed and not confirmed & resent  # nothing with a delivered receipt went out again
    assert set(every) == set(expected)  # nothing lost
    assert list(dict.fromkeys(every)) == expected  # order per channel kept
    twice = [i for i in set(every) if every.count(i) > 1]
    assert len(twice) <= 1  # at most the one in flight, and it is said
    if twice:
        assert "may have been delivered twice" in second.stderr.decode()
        assert "possibly a duplicate" in next(
            r["error"] for r in receipts(second) if r["alert_id"] == twice[0]
        )


# ---------------------------------------------------------------------------------------------
# console, dry run, formats, input


def test_console_is_the_default_and_stdout_stays_receipts(home: Path) -> None:
    mixed = [
        sig(0),
        {"type": "trade", "symbol": "X", "timestamp": TS, "price": 1.0, "volume": 1},
        sig(1, confidence=0.2),
    ]
    result = run(home, input=lines(mixed))
    assert result.returncode == 0
    got = receipts(result)
    assert [(r["channel"], r["status"], r["attempts"]) for r in got] == [("console", "delivered", 1)] * 2
    stderr = result.stderr.decode().splitlines()
    assert stderr[0].startswith("🚨 ") and "GAP_AND_GO S0 SHORT" in stderr[0]
    assert "1 skipped" in stderr[-1] and "2 delivered" in stderr[-1]
    filtered = run(home, "--min-confidence", "0.5", "--symbols", "s0,S9", input=lines(mixed))
    assert [r["symbol"] for r in receipts(filtered)] == ["S0"]
    assert "1 filtered" in filtered.stderr.decode()
    assert not list(state_files(home))  # the console needs no outbox


def test_dry_run_renders_payloads_and_sends_nothing(home: Path) -> None:
    with DiscordStandIn() as discord:
        result = run(
            home,
            "--dry-run",
            "--to",
            "discord",
            "--to",
            "email",
            "--strategies",
            "GAP_AND_GO",
            input=lines([sig(0)]),
            DISCORD_WEBHOOK_URL=discord.url,
        )
        assert discord.requests == []
    assert result.returncode == 0, result.stderr
    d, e = receipts(result)
    assert d["status"] == e["status"] == "dry-run"
    assert orjson.loads(d["payload"])["allowed_mentions"] == {"parse": []}
    assert "Subject: CRITICAL TRADING ALERT: S0" in e["payload"]
    assert not list(state_files(home))


def test_arrow_in_arrow_out(home: Path) -> None:
    from tradecli.records import normalise

    raw = pa.Table.from_pylist([sig(0), sig(1)]).to_batches()[0]
    good, _ = normalise(raw)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, good.schema) as writer:
        writer.write_batch(good)
    result = run(home, "--quiet", input=sink.getvalue())
    assert result.returncode == 0, result.stderr
    table = arrow_table(result.stdout)
    assert table.column("status").to_pylist() == ["delivered", "delivered"]
    assert table.schema.field("signal_ts").type == pa.timestamp("ns", tz="UTC")


@pytest.mark.pipes
def test_pipeline_ingest_to_alert_over_arrow(home: Path) -> None:
    source = home / "signals.ndjson"
    source.write_bytes(lines([sig(i) for i in range(5)]))
    with WebhookStandIn() as hook:
        env = env_for(home, TRADE_WEBHOOK_URL=hook.url)
        ingest = subprocess.Popen(
            trade_argv("ingest", "--source", "file", str(source), "--format", "arrow", "--quiet"),
            stdout=subprocess.PIPE,
            env=env,
        )
        alert = subprocess.Popen(
            trade_argv("alert", "--to", "webhook", "--to", "console"),
            stdin=ingest.stdout,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert ingest.stdout is not None
        ingest.stdout.close()
        out, err = alert.communicate(timeout=60)
        ingest.wait(timeout=10)
        bodies = [b for _, b in hook.accepted]
    assert ingest.returncode == 0 and alert.returncode == 0, err
    assert out[:4] == b"\xff\xff\xff\xff"  # Arrow in, Arrow out
    table = arrow_table(out)
    assert sorted(table.column("channel").to_pylist()) == ["console"] * 5 + [f"webhook:{hook.base}/***"] * 5
    assert set(table.column("status").to_pylist()) == {"delivered"}
    assert [b["symbol"] for b in bodies] == [f"S{i}" for i in range(5)]
    assert isinstance(bodies[0]["recv_ts"], int)  # unknown and extra fields pass through


def test_bad_records_are_reported_and_the_stream_goes_on(home: Path) -> None:
    data = lines([sig(0)]) + b"not json\n" + lines([{"type": "signal", "timestamp": TS}, sig(1)])
    result = run(home, input=data)
    assert result.returncode == 0
    assert [r["symbol"] for r in receipts(result)] == ["S0", "S1"]
    stderr = result.stderr.decode()
    assert "line 2:" in stderr and "field 'symbol' is missing" in stderr and "2 rejected" in stderr


def test_strict_and_a_closed_pipe(home: Path) -> None:
    strict = run(home, "--strict", input=lines([sig(0)]) + b"{bad\n" + lines([sig(1)]))
    assert strict.returncode == 65
    assert [r["symbol"] for r in receipts(strict)] == ["S0"]
    command = " ".join(trade_argv("alert", "--dry-run", "--to", "discord"))
    shell = f"{command} | head -n 1; echo ${{PIPESTATUS[0]}} >&2"
    data = lines([sig(i) for i in range(2000)])
    result = subprocess.run(
        ["bash", "-c", shell], input=data, capture_output=True, env=env_for(home), timeout=60
    )
    assert len(result.stdout.splitlines()) == 1
    assert result.stderr.decode().strip() == "141"


def test_receipts_flow_before_the_input_ends(home: Path) -> None:
    with WebhookStandIn() as hook:
        proc = subprocess.Popen(
            trade_argv("alert", "--to", "webhook", "--to", "console"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env_for(home, TRADE_WEBHOOK_URL=hook.url),
        )
        assert proc.stdin is not None and proc.stdout is not None
        pending = b""
        try:
            for i in range(3):
                proc.stdin.write(lines([sig(i)]))
                proc.stdin.flush()
                deadline = time.monotonic() + 15
                while pending.count(b"\n") < 2:
                    assert time.monotonic() < deadline, "no receipt before EOF"
                    ready, _, _ = select.select([proc.stdout], [], [], 0.2)
                    if ready:
                        pending += os.read(proc.stdout.fileno(), 65536)
                got = [orjson.loads(x) for x in pending.splitlines()]
                pending = b""
                assert {r["channel"].split(":")[0] for r in got} == {"webhook", "console"}
                assert {r["symbol"] for r in got} == {f"S{i}"}
        finally:
            proc.stdin.close()
            proc.wait(timeout=15)
    assert proc.returncode == 0


# ---------------------------------------------------------------------------------------------
# configuration and secrets


def test_config_file_targets_and_permission_warning(home: Path) -> None:
    with DiscordStandIn(token=CANARY) as discord, WebhookStandIn(secret=CANARY) as hook:
        config = home / "config" / "tradecli" / "config.toml"
        config.parent.mkdir(parents=True)
        config.write_text(
            '[alert]\nto = ["discord", "webhook"]\nmin_confidence = 0.5\n'
            f'[alert.discord]\nwebhook_url = "{discord.url}"\nusername = "Desk"\n'
            f'[alert.webhook]\nurl = "{hook.url}"\nsecret = "{CANARY}"\n'
        )
        config.chmod(0o644)
        result = run(home, input=lines([sig(0), sig(1, confidence=0.1)]))
        assert len(discord.messages) == 1 and len(hook.accepted) == 1
        assert discord.messages[0][1]["username"] == "Desk"
        config.chmod(0o600)
        quiet = run(home, input=lines([sig(2)]))
    assert result.returncode == 0, result.stderr
    assert "holds secrets and is readable by others" in result.stderr.decode()
    assert "readable by others" not in quiet.stderr.decode()
    no_canary(result.stdout, result.stderr, quiet.stdout, quiet.stderr)


def test_argv_secret_warns_and_never_shows(home: Path) -> None:
    with DiscordStandIn(["401"], token=CANARY) as discord:
        result = run(home, "--to", f"discord:{discord.url}", "--log-format", "json", input=lines([sig(0)]))
    assert result.returncode == 77
    assert "visible to other users (ps)" in result.stderr.decode()
    no_canary(result.stdout, result.stderr)


def test_canary_never_appears_anywhere(home: Path, tmp_path: Path) -> None:
    """Every secret kind planted at once, every failure mode: nothing leaks, the outbox is private."""
    hang_token = CANARY + "h"
    with (
        DiscordStandIn(["hang"] * 9, token=hang_token) as hanging,
        SlackStandIn(["500"] * 20, secret=CANARY) as slack,
        smtp_server(tmp_path, "starttls") as server,
    ):
        env = {
            "DISCORD_WEBHOOK_URL": hanging.url,
            "SLACK_WEBHOOK_URL": slack.url,
            "TRADE_WEBHOOK_URL": dead_url(f"/hooks/{CANARY}?token={CANARY}"),
            "TRADE_WEBHOOK_SECRET": CANARY,
            **smtp_env(server, TRADE_SMTP_PASSWORD=CANARY),
        }
        targets = ["--to", "discord", "--to", "slack", "--to", "webhook", "--to", "email:x@example.com"]
        results = [
            run(
                home,
                *targets,
                "--retries",
                "1",
                "--backoff",
                "10ms",
                "--timeout",
                "1s",
                "--ca-file",
                str(server.ca_file),
                input=lines([sig(0), sig(1)]),
                **env,
            ),
            run(home, *targets, "--debug", "--timeout", "1s", "--retries", "0", input=lines([sig(2)]), **env),
            run(home, *targets, "--dry-run", input=lines([sig(3)]), **env),
            run(home, "--help", **env),
            run(
                home,
                *targets,
                "--log-format",
                "json",
                "--retries",
                "0",
                "--timeout",
                "1s",
                input=b"garbage\n",
                **env,
            ),
        ]
    for result in results:
        no_canary(result.stdout, result.stderr)
    assert results[0].returncode in (69, 77)
    statuses = {r["channel"].split(":")[0]: r["status"] for r in receipts(results[0])}
    assert statuses == {"discord": "queued", "slack": "queued", "webhook": "queued", "email": "failed"}
    files = list(state_files(home))
    assert files
    for path in files:
        no_canary(path.read_bytes())
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    for directory in (
        home / "state" / "tradecli" / "alert",
        home / "state" / "tradecli" / "alert" / "outbox",
    ):
        assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0


def test_usage_errors(home: Path) -> None:
    missing = run(home, "--to", "discord", input=lines([sig(0)]))
    assert missing.returncode == 2
    assert (
        missing.stderr.decode()
        .strip()
        .splitlines()[0]
        .startswith("trade alert: error: --to discord: no webhook URL")
    )
    unknown = run(home, "--to", "pager", input=b"")
    assert unknown.returncode == 2 and "unknown channel 'pager'" in unknown.stderr.decode()
    plain = run(home, "--to", "slack:http://hooks.slack.com/services/T/B/x", input=b"")
    assert plain.returncode == 2 and "https" in plain.stderr.decode()
    both = invoke(["alert", "--dry-run", "--flush-outbox"])
    assert both.exit_code == 2
    assert invoke(["alert", "--timeout", "soon"]).exit_code == 2


def test_help_lists_every_option() -> None:
    out = invoke(["alert", "--help"]).stdout
    for option in (
        "--to",
        "--min-confidence",
        "--strategies",
        "--symbols",
        "--dry-run",
        "--flush-outbox",
        "--retries",
        "--backoff",
        "--timeout",
        "--subject",
        "--ca-file",
        "--state-dir",
    ):
        assert option in out
    assert "Example:" in out
    _ = os.environ  # the help shows no environment value
