"""webhook: the signal as JSON, POSTed to any URL, signed with HMAC-SHA256 when a secret is set.

The body is the signal record as it came in (every field, times as integer ns) plus ``alert_id``.
Headers: ``X-Trade-Alert-Id`` and ``Idempotency-Key`` (both the alert id, the same on every retry
so a receiver can drop duplicates), and with a shared secret ``X-Trade-Timestamp`` (Unix seconds)
and ``X-Trade-Signature: sha256=<hex>``, the HMAC-SHA256 of ``"{timestamp}.{body}"`` keyed with
the secret. A receiver checks it with::

    expected = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest("sha256=" + expected, signature) and abs(time.time() - timestamp) < 300

URL from ``--to webhook:URL``, ``TRADE_WEBHOOK_URL`` or ``[alert.webhook] url``; secret from
``TRADE_WEBHOOK_SECRET`` or ``[alert.webhook] secret``. The URL's path and query may carry a token,
so only its scheme and host are shown (``webhook:https://hooks.example.com/***``). Plain http is
allowed (with a warning unless the host is loopback). Any 2xx is delivered; 408, 425, 429 and 5xx
are retried (``Retry-After`` honoured); 401/403/404/410 and redirects stop the channel; other 4xx
fail that alert only.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import orjson

from tradecli.channels import Outcome, Settings
from tradecli.channels.http import (
    HttpClient,
    PostChannel,
    Response,
    check_url,
    is_loopback,
    no_url,
    retry_after,
    target_url,
)

TARGET = "webhook[:URL]"
ENV = "TRADE_WEBHOOK_URL"
SECRET_ENV = "TRADE_WEBHOOK_SECRET"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def mask(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, "/***" if (parts.path.strip("/") or parts.query) else "", "", ""))


def body(signal: dict[str, Any], alert_id: str) -> bytes:
    return orjson.dumps({**signal, "alert_id": alert_id}, option=orjson.OPT_SERIALIZE_NUMPY)


class Webhook(PostChannel):
    kind: ClassVar[str] = "webhook"

    def __init__(self, url: str, secret: str | None, settings: Settings) -> None:
        parts = check_url(url, "--to webhook", https_only=False)
        if parts.scheme == "http" and not is_loopback(parts.hostname) and not settings.dry_run:
            settings.warn(f"--to webhook: alerts to {parts.hostname} go over plain http, unencrypted")
        super().__init__(f"webhook:{mask(url)}", url, [url, parts.password or "", secret or ""])
        self.secret = secret.encode() if secret else None
        self.client = HttpClient(url, timeout=settings.timeout, ca_file=settings.ca_file)
        self.secrets += self.client.secrets

    def render(self, signal: dict[str, Any], alert_id: str) -> bytes:
        return body(signal, alert_id)

    def preview(self, rendered: bytes) -> str:
        return rendered.decode()

    def headers(self, rendered: bytes, alert_id: str) -> dict[str, str]:
        headers = {"X-Trade-Alert-Id": alert_id, "Idempotency-Key": alert_id}
        if self.secret is not None:
            now = int(time.time())
            headers["X-Trade-Timestamp"] = str(now)
            headers["X-Trade-Signature"] = sign(self.secret, now, rendered)
        return headers

    def outcome(self, answer: Response) -> Outcome:
        status = answer.status
        if 200 <= status < 300:
            return Outcome(True)
        message = f"HTTP {status}"
        if status in (408, 425, 429) or status >= 500:
            return Outcome(False, message, retry=True, retry_after=retry_after(answer.headers))
        if 300 <= status < 400:
            return Outcome(False, f"{message} redirect (not followed; fix the URL)", stop_channel=True)
        if status in (401, 403, 404, 410):
            return Outcome(False, message, stop_channel=True, auth=status in (401, 403))
        return Outcome(False, message)


def from_target(arg: str | None, settings: Settings) -> Webhook:
    secretive = bool(
        arg and (urlsplit(arg).path.strip("/") or urlsplit(arg).query)
    )  # a bare host is no secret
    url = target_url(arg, settings, "webhook", "url", ENV, warn=secretive)
    secret = settings.setting("webhook", "secret", SECRET_ENV)
    if not url:
        if settings.dry_run:  # a preview needs no URL
            preview = Webhook("https://localhost/none", None, settings)
            preview.label = "webhook"
            return preview
        raise no_url("webhook", "url", ENV, noun="URL")
    return Webhook(url, str(secret) if secret else None, settings)
