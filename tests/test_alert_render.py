"""What each channel renders: the design document's layout, every service limit, no injection."""

from __future__ import annotations

import html
import io
import math
import re
from email import message_from_string, policy
from typing import Any

import orjson
import pytest
from alert_standins import discord_problems, pings, slack_problems
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradecli.channels import Settings, build, fields, parse_target
from tradecli.channels import discord as discord_channel
from tradecli.channels import email as email_channel
from tradecli.channels import slack as slack_channel
from tradecli.channels import webhook as webhook_channel
from tradecli.channels.console import Console
from tradecli.errors import UsageError

TS = 1_763_649_000_123_456_789  # 2025-11-20T14:30:00.123Z


def signal(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "signal",
        "symbol": "AAPL",
        "timestamp": TS,
        "strategy": "gap_and_go",
        "side": "long",
        "signal_type": "gap_and_go_continuation",
        "confidence": 0.75,
        "entry_price": 187.2,
        "stop_loss": 180.11,
        "target": 215.28,
        "rr_ratio": 3.96,
        "message": "Gap & Go: AAPL gapped 12.3% with 4.2x volume",
        "source": "sim",
    }
    base.update(overrides)
    return base


NASTY = [
    "@everyone",
    "@here look",
    "<@123456789012345678>",
    "<@&987654321>",
    "<!everyone> <!channel>",
    "<script>alert(1)</script>",
    "a & b < c > d \" e ' f",
    "\x1b[2J\x1b[31mred\x07",
    "line1\nline2\r\nline3",
    "\u202eevil\u202c",
    "🚀" * 3000,
    "x" * 10_000,
    "",
]
text_values = st.one_of(st.sampled_from(NASTY), st.text(max_size=300), st.none())
number_values = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0.0001, max_value=1e6),
    st.integers(-(10**6), 10**6),
)
signals = st.fixed_dictionaries(
    {
        "type": st.just("signal"),
        "symbol": text_values,
        "timestamp": st.one_of(st.none(), st.integers(31_536_000 * 10**9, 7_258_118_399 * 10**9)),
        "strategy": text_values,
        "side": st.sampled_from(["long", "short", "LONG", None, "sideways"]),
        "confidence": number_values,
        "entry_price": number_values,
        "stop_loss": number_values,
        "target": number_values,
        "message": text_values,
    },
    optional={"rr_ratio": number_values, "signal_type": st.sampled_from(["long", "short", "gap"])},
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# fields


def test_money_percent_and_rr_follow_the_design_document() -> None:
    assert fields.money(187.2) == "$187.20"
    assert fields.money(0.01234) == "$0.0123"
    assert fields.money(12345.678) == "$12,345.68"
    assert fields.money(None) == fields.money(float("nan")) == fields.money("12") == "n/a"
    assert fields.percent(0.75) == "75.0%"
    # the seed's R/R: |target - entry| / |entry - stop|, 0 when there is no risk
    assert fields.rr_text({"entry_price": 10.0, "stop_loss": 9.0, "target": 13.0}) == "3.0:1"
    assert fields.rr_text({"entry_price": 10.0, "stop_loss": 10.0, "target": 13.0}) == "0.0:1"
    assert fields.rr_text({"rr_ratio": 2.5, "entry_price": 10.0}) == "2.5:1"
    assert fields.rr_text({}) == "n/a"
    assert fields.iso_time(TS) == "2025-11-20T14:30:00.123Z"


def test_side_comes_from_side_not_signal_type() -> None:
    assert fields.side(signal(side="short", signal_type="long")) == "short"
    assert fields.side(signal(side=None, signal_type="short")) == "short"
    assert fields.side(signal(side=None, signal_type="gap_and_go_continuation")) is None


def test_text_removes_control_characters() -> None:
    assert fields.text("\x1b[2Jred\x07\u202e!") == "[2Jred!"
    assert fields.text("a\nb") == "a b"
    assert fields.block("a\nb\x1b") == "a\nb"


# ---------------------------------------------------------------------------------------------
# Discord


def test_discord_embed_is_the_design_documents() -> None:
    body = discord_channel.payload(signal(), "abc123")
    assert body["allowed_mentions"] == {"parse": []}
    (embed,) = body["embeds"]
    assert embed["title"] == "🚨 GAP_AND_GO ALERT"
    assert embed["description"] == "Gap & Go: AAPL gapped 12.3% with 4.2x volume"
    assert embed["timestamp"] == "2025-11-20T14:30:00.123Z"
    assert [(f["name"], f["value"]) for f in embed["fields"]] == [
        ("Symbol", "AAPL"),
        ("Entry", "$187.20"),
        ("Stop", "$180.11"),
        ("Target", "$215.28"),
        ("Confidence", "75.0%"),
        ("R/R Ratio", "4.0:1"),
    ]
    assert all(f["inline"] for f in embed["fields"])
    assert embed["footer"]["text"] == "alert abc123"


def test_discord_colour_follows_side_not_signal_type() -> None:
    # the seed compared signal_type with 'long', so every alert was red
    long = discord_channel.payload(signal(side="long", signal_type="gap_and_go_continuation"), "a")
    short = discord_channel.payload(signal(side="short", signal_type="long"), "b")
    unknown = discord_channel.payload(signal(side=None, signal_type="gap"), "c")
    assert long["embeds"][0]["color"] == 0x00FF00
    assert short["embeds"][0]["color"] == 0xFF0000
    assert unknown["embeds"][0]["color"] not in (0x00FF00, 0xFF0000)


def test_discord_truncates_to_every_limit() -> None:
    huge = signal(
        symbol="S" * 5000, strategy="x" * 1000, message="m" * 20_000, entry_price=1e300, confidence=1e300
    )
    body = discord_channel.payload(huge, "id")
    assert discord_problems(body) == {}
    embed = body["embeds"][0]
    assert embed["title"].endswith("…") and discord_channel.units(embed["title"]) <= 256
    assert discord_channel.embed_size(embed) <= 6000


def test_discord_counts_utf16_units() -> None:
    body = discord_channel.payload(signal(message="🚀" * 4000), "id")
    assert discord_channel.units(body["embeds"][0]["description"]) <= 4096
    assert discord_problems(body) == {}


@FAST
@given(signals)
def test_discord_payload_is_always_valid_and_pings_no_one(sig: dict[str, Any]) -> None:
    body = discord_channel.payload(sig, "0123456789abcdef0123")
    assert discord_problems(body) == {}, body
    assert not pings(body)
    orjson.dumps(body)


def test_discord_mentions_in_data_are_broken() -> None:
    body = discord_channel.payload(signal(symbol="@everyone", message="@here <@123> <@&456> @EVERYONE"), "i")
    texts = " ".join([body["embeds"][0]["description"], body["embeds"][0]["fields"][0]["value"]])
    assert (
        "@everyone" not in texts.lower()
        and "@here" not in texts
        and "<@1" not in texts
        and "<@&" not in texts
    )
    assert "@\u200beveryone" in texts


def test_discord_url_validation_and_masking() -> None:
    settings = Settings()
    url = "https://discord.com/api/webhooks/123/SECRET-token_value"
    channel = discord_channel.Discord(url, settings)
    assert channel.label == "discord:https://discord.com/api/webhooks/123/***"
    assert "SECRET-token_value" in channel.secrets
    assert channel.url.endswith("?wait=true")
    for bad in (
        "http://discord.com/api/webhooks/1/t",  # plain http off loopback
        "https://discord.com/channels/1/2",
        "ftp://x/api/webhooks/1/t",
        "not a url",
    ):
        with pytest.raises(UsageError) as err:
            discord_channel.Discord(bad, settings)
        assert "webhooks/1/t" not in str(err.value) and bad not in str(err.value)
    loopback = discord_channel.Discord("http://127.0.0.1:9/api/v10/webhooks/1/tok", settings)
    assert loopback.label == "discord:http://127.0.0.1:9/api/v10/webhooks/1/***"


# ---------------------------------------------------------------------------------------------
# Slack


def test_slack_blocks_carry_the_same_fields_and_a_text_fallback() -> None:
    body = slack_channel.payload(signal(), "abc")
    assert slack_problems(body) is None
    assert body["text"].startswith("🚨 GAP_AND_GO ALERT: AAPL long, entry $187.20")
    header, message, table, context = body["blocks"]
    assert header["text"]["text"] == "🟢 🚨 GAP_AND_GO ALERT"
    assert message["text"]["text"] == "Gap &amp; Go: AAPL gapped 12.3% with 4.2x volume"
    assert [f["text"].split("\n")[0] for f in table["fields"]] == [
        "*Symbol*",
        "*Entry*",
        "*Stop*",
        "*Target*",
        "*Confidence*",
        "*R/R Ratio*",
    ]
    assert "alert abc" in context["elements"][0]["text"]
    assert "2025-11-20T14:30:00.123Z" in context["elements"][0]["text"]
    short = slack_channel.payload(signal(side="short"), "abc")
    assert short["blocks"][0]["text"]["text"].startswith("🔴")


@FAST
@given(signals)
def test_slack_payload_is_always_valid_and_escaped(sig: dict[str, Any]) -> None:
    body = slack_channel.payload(sig, "id")
    assert slack_problems(body) is None, body
    mrkdwn = [body["text"]] + [
        t
        for b in body["blocks"]
        for t in ([b.get("text", {}).get("text", "")] if b["type"] == "section" else [])
        + [f["text"] for f in b.get("fields", [])]
    ]
    for text in mrkdwn:
        assert "<!" not in text and "<script" not in text and "@everyone" not in text.lower()


def test_slack_masks_the_secret_part() -> None:
    channel = slack_channel.Slack("https://hooks.slack.com/services/T0/B0/XYZsecret", Settings())
    assert channel.label == "slack:https://hooks.slack.com/services/T0/B0/***"
    assert "XYZsecret" in channel.secrets


# ---------------------------------------------------------------------------------------------
# e-mail


def mail_settings(**env: str) -> Settings:
    base = {
        "TRADE_SMTP_HOST": "smtp.example.com",
        "TRADE_SMTP_FROM": "alerts@example.com",
        "TRADE_SMTP_PASSWORD": "pw",
    }
    return Settings(env={**base, **env})


def parse_mail(text: str) -> Any:
    """A rendered message as a mail reader sees it (the standard library's parser, strictly)."""
    assert text.isascii()
    parsed = message_from_string(text, policy=policy.default.clone(raise_on_defect=True))
    assert not parsed.defects
    return parsed


def test_email_has_both_parts_and_escapes_every_value() -> None:
    evil = signal(
        symbol="<b>X</b>",
        strategy="gap&go<script>",
        message="<img src=x onerror=alert(1)> & \"quotes\" 'single'",
        side="short",
    )
    channel = email_channel.Email(["desk@example.com"], mail_settings())
    parsed = parse_mail(channel.render(evil, "id42"))
    assert parsed.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]
    assert parsed["Subject"] == "CRITICAL TRADING ALERT: <b>X</b>"
    assert parsed["Message-ID"] == "<alert-id42@example.com>"
    page = parsed.get_body(("html",)).get_content()
    assert "<b>X</b>" not in page and "<script>" not in page and "<img" not in page
    assert html.escape("<b>X</b>") in page and html.escape("gap&go<script>") in page
    assert html.escape("\"quotes\" 'single'") in page
    for label in ("Symbol", "Strategy", "Entry Price", "Stop Loss", "Target", "Confidence", "Time"):
        assert f"<b>{label}:</b>" in page
    # every data value sits in a cell, escaped: no tag other than the layout's own
    tags = set(re.findall(r"</?([a-zA-Z0-9]+)", page))
    assert tags <= {"html", "body", "h2", "table", "tr", "td", "b", "p", "br"}
    text = parsed.get_body(("plain",)).get_content()
    assert "Symbol: <b>X</b>" in text and "Side: short" in text


def test_email_subject_template_and_header_injection() -> None:
    channel = email_channel.Email(["a@example.com"], mail_settings())
    msg = parse_mail(channel.render(signal(symbol="EVIL\r\nBcc: victim@example.com"), "i"))
    assert "\n" not in msg["Subject"] and "Bcc" not in msg
    custom = Settings(env=mail_settings().env, subject="{strategy}: {symbol} {confidence:.0%} {side}")
    assert (
        parse_mail(email_channel.Email(["a@x.com"], custom).render(signal(), "i"))["Subject"]
        == "gap_and_go: AAPL 75% long"
    )
    for bad in ("{symbol.__class__}", "{0}", "{symbol[0]}", "{"):
        with pytest.raises(UsageError):
            email_channel.Email(["a@x.com"], Settings(env=mail_settings().env, subject=bad))
    odd = Settings(env=mail_settings().env, subject="{symbol:.1%}")  # a spec that does not fit
    assert (
        parse_mail(email_channel.Email(["a@x.com"], odd).render(signal(), "i"))["Subject"]
        == "CRITICAL TRADING ALERT: AAPL"
    )


@pytest.mark.parametrize(
    "text",
    [*NASTY, "ÄPFEL 🚀", "a=_trade_b", "x " * 600, "=?utf-8?q?fake?=", "", "a" * 64, "id\r\nX-Inject: 1"],
)
@pytest.mark.parametrize("where", ["symbol", "message", "strategy", "alert_id"])
def test_email_is_valid_mime_whatever_the_data(text: str, where: str) -> None:
    """Parsed strictly, the message gives back exactly the bodies and headers it was built from;
    every line is ASCII and within RFC 5322's 998 characters."""
    channel = email_channel.Email(["desk@example.com", "Ops Desk <ops@example.com>"], mail_settings())
    values = signal(**({where: text} if where != "alert_id" else {}))
    alert = text if where == "alert_id" and text else "0123456789abcdef"
    rendered = channel.render(values, alert)
    assert max(len(line) for line in rendered.split("\n")) <= email_channel.LINE_MAX
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", rendered)  # no bare CR, no NUL, ...
    (boundary,) = re.findall(r'boundary="([^"]*)"', rendered)
    assert len(boundary) <= 70  # RFC 2046
    parsed = parse_mail(rendered)
    assert parsed["Subject"] == fields.text(f"CRITICAL TRADING ALERT: {fields.text(values['symbol'])}")
    assert parsed["X-Trade-Alert-Id"] == fields.text(alert)
    assert parsed["To"] == "desk@example.com, Ops Desk <ops@example.com>"
    assert parsed.get_body(("plain",)).get_content() == email_channel.text_body(values, alert)
    assert parsed.get_body(("html",)).get_content() == email_channel.html_body(values, alert)
    assert parsed["Message-ID"] == f"<alert-{email_channel.id_token(alert)}@example.com>"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]


def test_email_settings() -> None:
    assert email_channel.Email(["a@x.com"], mail_settings(TRADE_SMTP_PORT="465")).security == "tls"
    assert email_channel.Email(["a@x.com"], mail_settings()).port == 587
    with pytest.raises(UsageError, match="missing"):
        email_channel.Email([], mail_settings())
    with pytest.raises(UsageError):
        email_channel.Email(["a@x.com"], mail_settings(TRADE_SMTP_SECURITY="none"))
    channel = build("email:a@x.com, b@y.com", mail_settings())
    assert channel.label == "email:a@x.com,b@y.com"
    assert "pw" in channel.secrets


# ---------------------------------------------------------------------------------------------
# webhook, console, targets


def test_webhook_body_signature_and_mask() -> None:
    channel = webhook_channel.Webhook("https://user:pw@hooks.example.com/in/SeCrEt?k=1", "key", Settings())
    assert channel.label == "webhook:https://hooks.example.com/***"
    body = orjson.loads(channel.render(signal(extra_field=[1, 2]), "id9"))
    assert body["alert_id"] == "id9" and body["timestamp"] == TS and body["extra_field"] == [1, 2]
    sig = webhook_channel.sign(b"key", 1700000000, b"{}")
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", sig)


def test_console_line_is_readable_and_inert() -> None:
    out = io.StringIO()
    console = Console(stream=out, colour=False)
    line = console.render(signal(symbol="\x1b[31mAAPL", message="go\x1b]0;pwned\x07 now", side="short"), "i")
    assert "\x1b" not in line and "\x07" not in line
    assert line.startswith("🚨 ") and "GAP_AND_GO AAPL SHORT" in line.replace("[31m", "")
    assert "entry $187.20" in line and "R/R 4.0:1" in line and line.endswith("now\n")
    assert all(o.ok for o in console.send_many([(line, "a"), (line, "b")]))
    assert out.getvalue() == line * 2


def test_console_colours_by_side_on_a_colour_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    console = Console(stream=io.StringIO())
    long, short = console.render(signal(side="long"), "a"), console.render(signal(side="short"), "b")
    assert "\x1b[1;32mLONG\x1b[0m" in long and "\x1b[1;31mSHORT\x1b[0m" in short
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR")
    plain = Console(stream=io.StringIO()).render(signal(side="long"), "a")
    assert "\x1b" not in plain and " LONG  entry $187.20" in plain


def test_parse_target() -> None:
    assert parse_target("discord:https://x/api/webhooks/1/t") == ("discord", "https://x/api/webhooks/1/t")
    assert parse_target(" Slack ") == ("slack", None)
    with pytest.raises(UsageError, match="unknown channel"):
        parse_target("pager:123")


@pytest.mark.parametrize("kind", ["discord", "slack", "webhook", "email"])
def test_dry_run_needs_no_target(kind: str) -> None:
    channel = build(kind, Settings(dry_run=True))
    assert channel.label == kind or channel.label.startswith("email:")
    assert channel.preview(channel.render(signal(), "i"))


def test_money_never_raises_on_odd_values() -> None:
    for value in (True, "x", [], {}, math.inf, -math.inf, -5.0, 10**30):
        fields.money(value)
        fields.percent(value)


def test_secrets_are_masked_and_a_short_one_only_where_it_stands_alone() -> None:
    from tradecli.log import Log

    log = Log("alert", stream=io.StringIO())
    for secret in ("s3cr3t-token-value", "e", "pw"):
        log.add_secret(secret)
    assert log.mask("https://h/x/s3cr3t-token-value?q=1") == "https://h/x/***?q=1"
    assert log.mask("connection to 127.0.0.1 refused") == "connection to 127.0.0.1 refused"
    assert log.mask("login alerts:pw@host, password pw") == "login alerts:***@host, password ***"
    assert log.mask("e") == "***"
