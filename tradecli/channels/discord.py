"""discord: a webhook POST with the design document's embed.

The embed is the one ``TradingAlertsBot.send_trading_alert`` drew: title ``🚨 {STRATEGY} ALERT``,
the message as description, fields Symbol, Entry, Stop, Target, Confidence and R/R Ratio, and the
event time as the embed timestamp; green for a long signal and red for a short one, by ``side``
(the design compared ``signal_type`` with 'long' and so was always red; grey when the side is not
known). The footer carries the alert id, so a message can be matched to its receipt.

Every Discord limit is kept by truncating (never by failing): title 256, description 4096, field
name 256, value 1024, footer 2048, all text in the embed 6000, counted in UTF-16 units after
trimming. ``allowed_mentions: {"parse": []}`` is always sent, and ``@everyone``, ``@here`` and
``<@id>`` in any text from the data are broken up as well, so a symbol or message pings no one.

The webhook URL comes from ``--to discord:URL``, ``DISCORD_WEBHOOK_URL`` or ``[alert.discord]
webhook_url``; its token is masked everywhere (``discord:https://discord.com/api/webhooks/123/***``).
Posts go to ``?wait=true`` so that 200 confirms the message was stored. Rate limits are read from
the ``X-RateLimit-*`` headers and 429's float ``retry_after``; a global 429 holds every Discord
channel. 401/403/404 (``50027`` invalid token, ``10015`` unknown webhook) stop the channel and are
never retried; 400 (``50035``) fails that alert only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from tradecli.channels import Outcome, Settings
from tradecli.channels import fields as f
from tradecli.channels.http import (
    HttpClient,
    PostChannel,
    Response,
    check_url,
    no_url,
    retry_after,
    target_url,
)
from tradecli.errors import UsageError

if TYPE_CHECKING:
    import pyarrow as pa

    from tradecli.channels.columns import Chunk

TARGET = "discord[:URL]"
ENV = "DISCORD_WEBHOOK_URL"

GREEN = 0x00FF00  # the design document's colours
RED = 0xFF0000
GREY = 0x95A5A6

LIMITS = {"title": 256, "description": 4096, "name": 256, "value": 1024, "footer": 2048, "total": 6000}
MAX_USERNAME = 80

_PATH = re.compile(r"^/api(?:/v\d+)?/webhooks/(\d+)/([^/]+)/?$")


def units(text: str) -> int:
    """Length as Discord (JavaScript) counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def clip(text: str, limit: int) -> str:
    """Trimmed text within ``limit`` UTF-16 units, cut with an ellipsis when too long."""
    text = text.strip()
    if 2 * len(text) <= limit or units(text) <= limit:  # a character is at most two units
        return text
    out = text[: max(limit - 1, 0)]
    while out and units(out) > limit - 1:
        out = out[:-1]
    return out.rstrip() + "…"


def embed_size(embed: dict[str, Any]) -> int:
    texts = [embed.get("title", ""), embed.get("description", ""), embed.get("footer", {}).get("text", "")]
    for item in embed.get("fields", []):
        texts += (item["name"], item["value"])
    if 2 * sum(map(len, texts)) <= LIMITS["total"]:  # far inside the limit: no need to count units
        return sum(map(len, texts))
    return sum(map(units, texts))


def payload(
    signal: dict[str, Any], alert_id: str, *, username: str | None = None, avatar_url: str | None = None
) -> dict[str, Any]:
    """The webhook body for one signal, within every Discord limit."""
    d = f.display(signal)
    no_mentions = f.no_mentions
    embed: dict[str, Any] = {
        "type": "rich",
        "title": clip(no_mentions(f"🚨 {d.strategy.upper()} ALERT"), LIMITS["title"]),
        "color": GREEN if d.side == "long" else RED if d.side == "short" else GREY,
        "fields": [
            {"name": name, "value": clip(no_mentions(value), LIMITS["value"]) or f.NA, "inline": True}
            for name, value in d.table()
        ],
        "footer": {"text": f"alert {alert_id}"},
    }
    if d.message:
        embed["description"] = clip(no_mentions(d.message), LIMITS["description"])
    if d.time:
        embed["timestamp"] = d.time
    over = embed_size(embed) - LIMITS["total"]
    if over > 0 and "description" in embed:
        keep = max(units(embed["description"]) - over, 1)
        embed["description"] = clip(embed["description"], keep)
        over = embed_size(embed) - LIMITS["total"]
    for item in sorted(embed["fields"], key=lambda x: -units(x["value"])) if over > 0 else ():
        if over <= 0:
            break
        keep = max(units(item["value"]) - over, 8)
        over -= units(item["value"]) - units(clip(item["value"], keep))
        item["value"] = clip(item["value"], keep)
    body: dict[str, Any] = {"embeds": [embed], "allowed_mentions": {"parse": []}}
    if username:
        body["username"] = clip(no_mentions(f.text(username)), MAX_USERNAME)
    if avatar_url:
        body["avatar_url"] = avatar_url
    return body


FIELD_NAMES = ("Symbol", "Entry", "Stop", "Target", "Confidence", "R/R Ratio")


def _json(text: str) -> str:
    return orjson.dumps(text).decode()


def payload_column(chunk: Chunk, *, username: str | None = None, avatar_url: str | None = None) -> pa.Array:
    """:func:`payload` of every signal of a batch as JSON text, built a column at a time.

    Each piece of JSON (a field's value, the title, the description) is made once per distinct
    value with the same helpers :func:`payload` uses, and Arrow joins the pieces. Where the whole
    embed would pass Discord's 6,000-unit total, :func:`payload` itself trims that alert.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from tradecli.channels.columns import Distinct, strings_of

    no_mentions = f.no_mentions
    rows = chunk.rows
    size = np.full(rows, sum(map(len, FIELD_NAMES)), dtype=np.int64)  # units in the embed

    def field(name: str) -> Callable[[str], tuple[str, int]]:
        def piece(value: str) -> tuple[str, int]:
            text = clip(no_mentions(value), LIMITS["value"]) or f.NA
            return f'{{"name":"{name}","value":{_json(text)},"inline":true}}', units(text)

        return piece

    def spread(distinct: Distinct, make: Callable[[Any], tuple[str, int]]) -> pa.Array:
        nonlocal size
        made = [make(v) for v in distinct.values]
        size = size + np.array([m[1] for m in made], dtype=np.int64)[distinct.indices.to_numpy()]
        return pa.array([m[0] for m in made], pa.string()).take(distinct.indices)

    def title(value: Any) -> tuple[str, int]:
        text = clip(no_mentions(f"🚨 {(f.text(value) or 'signal').upper()} ALERT"), LIMITS["title"])
        return _json(text), units(text)

    def description(value: Any) -> tuple[str, int]:
        message = f.block(value)
        if not message:
            return "", 0
        text = clip(no_mentions(message), LIMITS["description"])
        return ',"description":' + _json(text), units(text)

    colours = {"long": str(GREEN), "short": str(RED), None: str(GREY)}
    rr = chunk.rr()
    rr_distinct = Distinct(strings_of(rr[0], rr[1], lambda x: f.NA if x is None else f"{x:.1f}:1"), rows)
    fields = [
        spread(chunk.distinct("symbol"), lambda v: field("Symbol")(f.text(v) or f.NA)),
        spread(chunk.distinct("entry_price"), lambda v: field("Entry")(f.money(v))),
        spread(chunk.distinct("stop_loss"), lambda v: field("Stop")(f.money(v))),
        spread(chunk.distinct("target"), lambda v: field("Target")(f.money(v))),
        spread(chunk.distinct("confidence"), lambda v: field("Confidence")(f.percent(v))),
        spread(rr_distinct, lambda v: field("R/R Ratio")(v)),
    ]
    if chunk.ids_given:
        footers = [_json(f"alert {i}") for i in chunk.ids]
        size += np.array([units(f"alert {i}") for i in chunk.ids], dtype=np.int64)
        footer = pa.array(footers, pa.string())
    else:  # hex ids: nothing to escape
        footer = pc.binary_join_element_wise('"alert ', pa.array(chunk.ids, pa.string()), '"', "")
        size += len("alert ") + len(chunk.ids[0]) if rows else 0
    stamps = chunk.iso_times()
    stamp = pc.binary_join_element_wise(',"timestamp":"', stamps, '"', "").fill_null("")
    tail: dict[str, Any] = {"allowed_mentions": {"parse": []}}
    if username:
        tail["username"] = clip(no_mentions(f.text(username)), MAX_USERNAME)
    if avatar_url:
        tail["avatar_url"] = avatar_url
    pieces = [
        '{"embeds":[{"type":"rich","title":',
        spread(chunk.distinct("strategy"), title),
        ',"color":',
        Distinct(chunk.side(), rows).strings(lambda side: colours.get(side, str(GREY))),
        ',"fields":[',
        fields[0],
        ",",
        fields[1],
        ",",
        fields[2],
        ",",
        fields[3],
        ",",
        fields[4],
        ",",
        fields[5],
        '],"footer":{"text":',
        footer,
        "}",
        spread(chunk.distinct("message"), description),
        stamp,
        "}]," + orjson.dumps(tail).decode()[1:],
    ]
    out = pc.binary_join_element_wise(*pieces, "")
    over = np.flatnonzero(size > LIMITS["total"])
    if len(over):  # the total is over Discord's limit: trim these alert by alert
        texts = out.to_pylist()
        records = chunk.records
        for row in over.tolist():
            body = payload(records[row], chunk.ids[row], username=username, avatar_url=avatar_url)
            texts[row] = orjson.dumps(body).decode()
        out = pa.array(texts, pa.string())
    return out


def mask(url: str) -> str:
    """The URL with its token replaced by ``***``."""
    parts = urlsplit(url)
    match = _PATH.match(parts.path)
    path = f"{parts.path[: match.start(2)]}***" if match else "/***"
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], path, "", ""))


class Discord(PostChannel):
    kind: ClassVar[str] = "discord"
    global_hold: ClassVar[list[float]] = [0.0]  # a global 429 holds every Discord webhook we use

    def __init__(self, url: str, settings: Settings) -> None:
        parts = check_url(url, "--to discord", https_only=True)
        match = _PATH.match(parts.path)
        if not match:
            raise UsageError("--to discord: not a Discord webhook URL (expected .../api/webhooks/ID/TOKEN)")
        token = match.group(2)
        super().__init__(f"discord:{mask(url)}", url, [url, token])
        query = dict(parse_qsl(parts.query))
        query["wait"] = "true"
        self.url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
        table = settings.table("discord")
        self.username = table.get("username")
        self.avatar_url = table.get("avatar_url")
        self.client = HttpClient(self.url, timeout=settings.timeout, ca_file=settings.ca_file)
        self.secrets += self.client.secrets

    def render(self, signal: dict[str, Any], alert_id: str) -> bytes:
        return orjson.dumps(payload(signal, alert_id, username=self.username, avatar_url=self.avatar_url))

    def preview(self, rendered: bytes) -> str:
        return rendered.decode()

    def preview_column(self, chunk: Chunk) -> pa.Array:
        if chunk.small:
            return super().preview_column(chunk)
        return payload_column(chunk, username=self.username, avatar_url=self.avatar_url)

    def ready_at(self) -> float:
        return max(self._not_before, self.global_hold[0])

    def outcome(self, answer: Response) -> Outcome:
        status = answer.status
        if 200 <= status < 300:
            wait = None
            if answer.headers.get("x-ratelimit-remaining") == "0":
                wait = retry_after({"retry-after": answer.headers.get("x-ratelimit-reset-after", "")})
            return Outcome(True, wait_after=wait)
        body = answer.json()
        body = body if isinstance(body, dict) else {}
        message = f"HTTP {status}"
        if isinstance(body.get("message"), str):
            message += f" {f.text(body['message'])[:120]}"
        if body.get("code"):
            message += f" (code {body['code']})"
        if status == 429:
            wait = retry_after(answer.headers, body.get("retry_after"))
            is_global = bool(body.get("global")) or answer.headers.get("x-ratelimit-global") == "true"
            if is_global and wait:
                self.global_hold[0] = max(self.global_hold[0], time.monotonic() + wait)
            return Outcome(False, message, retry=True, retry_after=wait, wait_global=is_global)
        if status >= 500 or status == 408:
            return Outcome(False, message, retry=True, retry_after=retry_after(answer.headers))
        if status in (401, 403, 404):
            return Outcome(False, message, stop_channel=True, auth=status in (401, 403))
        return Outcome(False, message)  # 400 Invalid Form Body, 413: this alert only


def from_target(arg: str | None, settings: Settings) -> Discord:
    url = target_url(arg, settings, "discord", "webhook_url", ENV)
    if not url:
        if settings.dry_run:  # a preview needs no webhook
            preview = Discord("https://discord.com/api/webhooks/0/none", settings)
            preview.label = "discord"
            return preview
        raise no_url("discord", "webhook_url", ENV)
    return Discord(url, settings)
