"""slack: an incoming-webhook POST with Block Kit blocks and a plain ``text`` fallback.

Blocks: a header (``🚨 GAP_AND_GO ALERT`` with 🟢 for long, 🔴 for short), the message, the
design document's fields (Symbol, Entry, Stop, Target, Confidence, R/R Ratio) as section fields,
and a context line with the event time and the alert id. ``text`` carries the same in one line for
notifications. Slack's limits are kept by truncating: header 150, section text 3000, field 2000.
Text from data is escaped for mrkdwn (``&``, ``<``, ``>``), so ``<!everyone>`` or a link in a
message is shown, not acted on, and ``@channel``/``@here``/``@everyone`` are broken up.

The webhook URL comes from ``--to slack:URL``, ``SLACK_WEBHOOK_URL`` or ``[alert.slack]
webhook_url``, and is shown with its secret part masked (``slack:https://hooks.slack.com/services/
T0/B0/***``). Sends are paced to one per second per webhook, as Slack asks; 429 waits for its
``Retry-After``. ``invalid_token``, ``no_service``, ``channel_not_found``, ``channel_is_archived``
and any 403/404/410 stop the channel; ``invalid_payload``/``invalid_blocks`` fail that alert only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

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

TARGET = "slack[:URL]"
ENV = "SLACK_WEBHOOK_URL"

HEADER_MAX = 150
SECTION_MAX = 3000
FIELD_MAX = 2000
TEXT_MAX = 3000
DEAD = {
    "invalid_token",
    "no_service",
    "no_service_id",
    "no_team",
    "team_disabled",
    "no_active_hooks",
    "channel_not_found",
    "channel_is_archived",
    "action_prohibited",
    "posting_to_general_channel_denied",
    "user_not_found",
}
AUTH = {"invalid_token", "action_prohibited", "no_service", "team_disabled"}
_MENTION = re.compile(r"@(everyone|here|channel)", re.IGNORECASE)


def escape(value: str) -> str:
    """mrkdwn escaping of data, and mention words broken up."""
    value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MENTION.sub("@\u200b\\1", value)


def clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def clip_escaped(raw: str, limit: int) -> str:
    """Escape, then cut without splitting an ``&amp;`` entity."""
    out = escape(raw)
    if len(out) <= limit:
        return out
    out = out[: limit - 1]
    amp = out.rfind("&")
    if amp >= 0 and ";" not in out[amp:]:
        out = out[:amp]
    return out.rstrip() + "…"


def payload(signal: dict[str, Any], alert_id: str) -> dict[str, Any]:
    """The webhook body for one signal, within Slack's Block Kit limits."""
    side = f.side(signal)
    dot = {"long": "🟢 ", "short": "🔴 "}.get(side or "", "")
    header = clip(dot + _MENTION.sub("@\u200b\\1", f.title(signal)), HEADER_MAX)
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": header}}]
    message = f.block(signal.get("message"))
    if message:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": clip_escaped(message, SECTION_MAX)}}
        )
    blocks.append(
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*{name}*\n" + clip_escaped(value, FIELD_MAX - len(name) - 3)}
                for name, value in f.table(signal)
            ],
        }
    )
    context = []
    stamp = f.iso_time(signal.get("timestamp"))
    ns = signal.get("timestamp")
    if stamp and isinstance(ns, int):
        context.append(f"<!date^{ns // 1_000_000_000}^{{date_short_pretty}} {{time_secs}}|{stamp}>")
    if side:
        context.append(side)
    context.append(f"alert {alert_id}")
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]})
    text = clip_escaped(f"{f.title(signal)}: {f.summary_line(signal)}", TEXT_MAX)
    return {"text": text, "blocks": blocks}


DOTS = {"long": "🟢 ", "short": "🔴 "}


def _json(text: str) -> str:
    return orjson.dumps(text).decode()


def payload_column(chunk: Chunk) -> pa.Array:
    """:func:`payload` of every signal of a batch as JSON text, built a column at a time.

    Every piece is made once per distinct value (or pair of values) with the helpers
    :func:`payload` uses. The fallback ``text`` is escaped piece by piece, which gives the same
    as escaping the whole line since no piece starts with a word a mention could continue;
    where the line is too long and must be cut, :func:`payload` itself renders that alert.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from tradecli.channels.columns import Distinct, combine, strings_of

    rows = chunk.rows
    side = Distinct(chunk.side(), rows)
    length = np.zeros(rows, dtype=np.int64)  # of the escaped fallback text

    def spread(distinct: Distinct, make: Callable[[Any], str], counted: bool = False) -> pa.Array:
        nonlocal length
        made = [make(v) for v in distinct.values]
        if counted:
            length = length + np.array([len(m) for m in made], dtype=np.int64)[distinct.indices.to_numpy()]
        return pa.array(made, pa.string()).take(distinct.indices)

    def field(name: str, show: Callable[[Any], str]) -> Callable[[Any], str]:
        def piece(value: Any) -> str:
            text = f"*{name}*\n" + clip_escaped(show(value), FIELD_MAX - len(name) - 3)
            return '{"type":"mrkdwn","text":' + _json(text) + "}"

        return piece

    def numbers(label: str, show: Callable[[Any], str]) -> Callable[[Any], str]:
        def piece(value: Any) -> str:
            text = show(value)
            return "" if text == f.NA else escape(f", {label} {text}")

        return piece

    def rr(x: Any) -> str:
        return f.NA if x is None else f"{x:.1f}:1"

    def header(pair: tuple[Any, Any]) -> str:
        strategy, which = pair
        title = f.title({"strategy": strategy})
        text = clip(DOTS.get(which or "", "") + _MENTION.sub("@\u200b\\1", title), HEADER_MAX)
        return '{"type":"header","text":{"type":"plain_text","text":' + _json(text) + "}}"

    def section(value: Any) -> str:
        message = f.block(value)
        if not message:
            return ""
        text = clip_escaped(message, SECTION_MAX)
        return ',{"type":"section","text":{"type":"mrkdwn","text":' + _json(text) + "}}"

    def symbol(value: Any) -> str:
        return f.text(value) or f.NA

    rr_values = Distinct(strings_of(*chunk.rr(), rr), rows)  # type: ignore[arg-type]
    seconds, _, _ = chunk.times()  # type: ignore[misc]
    stamps = chunk.iso_times()
    dated = pc.binary_join_element_wise(
        "<!date^",
        strings_of(seconds, np.asarray(stamps.is_valid()), lambda s: "" if s is None else str(s)),
        "^{date_short_pretty} {time_secs}|",
        stamps,
        "> · ",
        "",
    ).fill_null("")
    sided = side.strings(lambda which: f"{which} · " if which else "")
    context = pc.binary_join_element_wise(dated, sided, "alert ", pa.array(chunk.ids, pa.string()), "")
    if chunk.ids_given:
        context_json = pa.array([_json(t) for t in context.to_pylist()], pa.string())
    else:  # nothing in it to escape
        context_json = pc.binary_join_element_wise('"', context, '"', "")
    text = pc.binary_join_element_wise(
        spread(chunk.distinct("strategy"), lambda v: escape(f.title({"strategy": v}) + ": "), True),
        spread(chunk.distinct("symbol"), lambda v: escape(symbol(v)), True),
        spread(side, lambda which: f" {which}" if which else "", True),
        spread(chunk.distinct("entry_price"), numbers("entry", f.money), True),
        spread(chunk.distinct("stop_loss"), numbers("stop", f.money), True),
        spread(chunk.distinct("target"), numbers("target", f.money), True),
        spread(chunk.distinct("confidence"), numbers("confidence", f.percent), True),
        spread(rr_values, numbers("R/R", lambda x: x), True),
        spread(chunk.distinct("message"), lambda v: escape(f" - {m}") if (m := f.text(v)) else "", True),
        "",
    )
    pieces = [
        '{"text":',
        pa.array([_json(t) for t in text.to_pylist()], pa.string()),
        ',"blocks":[',
        spread(combine(chunk.distinct("strategy"), side), header),
        spread(chunk.distinct("message"), section),
        ',{"type":"section","fields":[',
        spread(chunk.distinct("symbol"), field("Symbol", symbol)),
        ",",
        spread(chunk.distinct("entry_price"), field("Entry", f.money)),
        ",",
        spread(chunk.distinct("stop_loss"), field("Stop", f.money)),
        ",",
        spread(chunk.distinct("target"), field("Target", f.money)),
        ",",
        spread(chunk.distinct("confidence"), field("Confidence", f.percent)),
        ",",
        spread(rr_values, field("R/R Ratio", lambda x: x)),
        ']},{"type":"context","elements":[{"type":"mrkdwn","text":',
        context_json,
        "}]}]}",
    ]
    out = pc.binary_join_element_wise(*pieces, "")
    over = np.flatnonzero(length > TEXT_MAX)
    if len(over):  # the fallback text must be cut: these alert by alert
        texts = out.to_pylist()
        records = chunk.records
        for row in over.tolist():
            texts[row] = orjson.dumps(payload(records[row], chunk.ids[row])).decode()
        out = pa.array(texts, pa.string())
    return out


def mask(url: str) -> str:
    parts = urlsplit(url)
    head, _, _ = parts.path.rstrip("/").rpartition("/")
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], f"{head}/***", "", ""))


class Slack(PostChannel):
    kind: ClassVar[str] = "slack"
    min_interval: ClassVar[float] = 1.0

    def __init__(self, url: str, settings: Settings) -> None:
        parts = check_url(url, "--to slack", https_only=True)
        secret = parts.path.rstrip("/").rpartition("/")[2]
        if not secret:
            raise UsageError("--to slack: not a Slack webhook URL (expected https://hooks.slack.com/...)")
        super().__init__(f"slack:{mask(url)}", url, [url, secret])
        self.client = HttpClient(url, timeout=settings.timeout, ca_file=settings.ca_file)
        self.secrets += self.client.secrets

    def render(self, signal: dict[str, Any], alert_id: str) -> bytes:
        return orjson.dumps(payload(signal, alert_id))

    def preview(self, rendered: bytes) -> str:
        return rendered.decode()

    def preview_column(self, chunk: Chunk) -> pa.Array:
        if chunk.small or chunk.times() is None:
            return super().preview_column(chunk)
        return payload_column(chunk)

    def outcome(self, answer: Response) -> Outcome:
        status = answer.status
        if 200 <= status < 300:
            return Outcome(True)
        code = f.text(answer.text(80))
        message = f"HTTP {status}" + (f" {code}" if code else "")
        if status == 429:
            return Outcome(False, message, retry=True, retry_after=retry_after(answer.headers))
        if status >= 500 or status == 408:
            return Outcome(False, message, retry=True, retry_after=retry_after(answer.headers))
        if code in DEAD or status in (401, 403, 404, 410):
            return Outcome(False, message, stop_channel=True, auth=code in AUTH or status in (401, 403))
        return Outcome(False, message)  # invalid_payload, invalid_blocks, no_text: this alert only


def from_target(arg: str | None, settings: Settings) -> Slack:
    url = target_url(arg, settings, "slack", "webhook_url", ENV)
    if not url:
        if settings.dry_run:  # a preview needs no webhook
            preview = Slack("https://hooks.slack.com/services/none", settings)
            preview.label = "slack"
            return preview
        raise no_url("slack", "webhook_url", ENV)
    return Slack(url, settings)
