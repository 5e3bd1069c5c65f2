"""Loopback stand-ins for the services ``trade alert`` talks to, behaving as protocols.md says.

* :class:`DiscordStandIn`: ``POST /api/webhooks/{id}/{token}``; 204, or 200 with a message object
  under ``?wait=true``; validates the body and every embed limit (400 ``50035`` when one is
  broken), 401 ``50027`` for a wrong token, 404 ``10015`` for an unknown webhook, 429 with a float
  ``retry_after`` plus ``Retry-After`` and ``X-RateLimit-*`` headers, 5xx bursts, slow answers.
* :class:`SlackStandIn`: 200 ``ok``; 400 ``invalid_blocks``/``no_text``; 403 ``invalid_token``;
  404 ``channel_not_found``; 429 with ``Retry-After``.
* :class:`WebhookStandIn`: checks the HMAC-SHA256 signature (401 when it is wrong).
* :func:`smtp_server`: aiosmtpd on 127.0.0.1 with STARTTLS (587 style) or implicit TLS (465 style)
  from a trustme CA, AUTH required after TLS; or a plain server without STARTTLS.

Each stand-in answers from a ``script`` (one entry per request, then ``ok``) and records every
request with its arrival time.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import socket
import ssl
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

# ---------------------------------------------------------------------------------------------
# Payload validation (also used directly by unit tests)

DISCORD_LIMITS = {"title": 256, "description": 4096, "name": 256, "value": 1024, "footer": 2048}


def _u16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def discord_problems(body: Any) -> dict[str, Any]:
    """Discord's 50035 ``errors`` tree for a webhook body ({} when it is valid)."""
    errors: dict[str, Any] = {}
    if not isinstance(body, dict):
        return {"_errors": [{"code": "DICT_TYPE_CONVERT", "message": "Only dictionaries may be used"}]}
    embeds = body.get("embeds") or []
    if not body.get("content") and not embeds:
        return {"_errors": [{"code": "EMPTY", "message": "Cannot send an empty message"}]}
    if len(body.get("content") or "") > 2000:
        errors["content"] = {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}
    if len(embeds) > 10:
        errors["embeds"] = {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}
    total = 0
    for i, embed in enumerate(embeds):
        where: dict[str, Any] = {}
        for key in ("title", "description"):
            text = (embed.get(key) or "").strip()
            total += _u16(text)
            if _u16(text) > DISCORD_LIMITS[key]:
                where[key] = {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}
        footer = (embed.get("footer") or {}).get("text", "").strip()
        total += _u16(footer)
        if _u16(footer) > DISCORD_LIMITS["footer"]:
            where["footer"] = {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}
        fields = embed.get("fields") or []
        if len(fields) > 25:
            where["fields"] = {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}
        for j, item in enumerate(fields):
            name, value = item.get("name", "").strip(), item.get("value", "").strip()
            total += _u16(name) + _u16(value)
            if not name or not value:
                where[f"fields.{j}"] = {"_errors": [{"code": "BASE_TYPE_REQUIRED"}]}
            if _u16(name) > DISCORD_LIMITS["name"] or _u16(value) > DISCORD_LIMITS["value"]:
                where[f"fields.{j}"] = {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}
        if isinstance(embed.get("color"), int) and not 0 <= embed["color"] <= 0xFFFFFF:
            where["color"] = {"_errors": [{"code": "NUMBER_TYPE_MAX"}]}
        if where:
            errors.setdefault("embeds", {})[str(i)] = where
    if total > 6000:
        errors.setdefault("embeds", {})["_errors"] = [{"code": "MAX_EMBED_SIZE_EXCEEDED"}]
    return errors


def discord_texts(body: dict[str, Any]) -> list[str]:
    """Every text of a webhook body a mention could hide in."""
    out = [body.get("content") or "", body.get("username") or ""]
    for embed in body.get("embeds") or []:
        out += [
            embed.get("title") or "",
            embed.get("description") or "",
            (embed.get("footer") or {}).get("text", ""),
        ]
        for item in embed.get("fields") or []:
            out += [item.get("name", ""), item.get("value", "")]
    return out


def pings(body: dict[str, Any]) -> bool:
    """Would Discord notify anyone for this body? (allowed_mentions and the raw mention syntax)."""
    allowed = body.get("allowed_mentions")
    if not (
        isinstance(allowed, dict)
        and allowed.get("parse") == []
        and not allowed.get("users")
        and not allowed.get("roles")
    ):
        return True
    texts = " ".join(discord_texts(body))
    return "@everyone" in texts or "@here" in texts or re.search(r"<@[!&]?\d+>", texts) is not None


def slack_problems(body: Any) -> str | None:
    """The Slack error code for a webhook body, or None when it is valid."""
    if not isinstance(body, dict):
        return "invalid_payload"
    blocks = body.get("blocks")
    if not body.get("text") and not blocks:
        return "no_text"
    if blocks is None:
        return None
    if not isinstance(blocks, list) or len(blocks) > 50:
        return "invalid_blocks"
    for block in blocks:
        kind = block.get("type")
        if kind == "header":
            text = block.get("text", {})
            if text.get("type") != "plain_text" or not 0 < len(text.get("text", "")) <= 150:
                return "invalid_blocks"
        elif kind == "section":
            if "text" in block and not 0 < len(block["text"].get("text", "")) <= 3000:
                return "invalid_blocks"
            fields = block.get("fields", [])
            if len(fields) > 10 or any(not 0 < len(f.get("text", "")) <= 2000 for f in fields):
                return "invalid_blocks"
            if "text" not in block and not fields:
                return "invalid_blocks"
        elif kind == "context":
            elements = block.get("elements", [])
            if not 0 < len(elements) <= 10:
                return "invalid_blocks"
        else:
            return "invalid_blocks"
    return None


# ---------------------------------------------------------------------------------------------
# HTTP stand-ins


@dataclass
class Request:
    at: float  # time.monotonic() when it arrived
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-answer (killed, timed out) is part of the tests


class _TLSServer(_Server):
    """The same server speaking HTTPS (trustme certificate)."""

    context: ssl.SSLContext

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        return self.context.wrap_socket(sock, server_side=True), address


class StandIn(ABC):
    """A loopback HTTP server answering POSTs from a script; records every request."""

    def __init__(
        self,
        script: list[Any] | None = None,
        delay: float = 0.0,
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.script = list(script or [])
        self.delay = delay
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                request = Request(
                    time.monotonic(), self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                with owner.lock:
                    owner.requests.append(request)
                    step = owner.script.pop(0) if owner.script else "ok"
                status, headers, payload = owner.answer(request, step)
                request.status = status
                if status == 0:  # hang up without answering
                    self.close_connection = True
                    return
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        if tls is not None:
            self.server = _TLSServer(("127.0.0.1", port), Handler)
            self.server.context = tls
        else:
            self.server = _Server(("127.0.0.1", port), Handler)
        self.scheme = "https" if tls is not None else "http"
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @abstractmethod
    def answer(self, request: Request, step: Any) -> tuple[int, dict[str, str], bytes]:
        """The status, headers and body for a request; ``step`` is the scripted behaviour."""

    def pause(self, step: Any) -> None:
        if isinstance(step, tuple) and step[0] == "slow":
            time.sleep(step[1])
        elif self.delay:
            time.sleep(self.delay)

    def __enter__(self) -> StandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


class DiscordStandIn(StandIn):
    """Discord's webhook endpoint as protocols.md section 5 describes it."""

    def __init__(
        self,
        script: list[Any] | None = None,
        *,
        webhook_id: str = "123456789012345678",
        token: str = "tok-" + "x" * 60,
        delay: float = 0.0,
        bucket: tuple[int, float] | None = None,
        port: int = 0,
    ) -> None:
        super().__init__(script, delay, port)
        self.webhook_id = webhook_id
        self.token = token
        self.bucket = bucket  # (requests, seconds): X-RateLimit-* headers and a 429 when exceeded
        self.window: list[float] = []
        self.messages: list[tuple[float, dict[str, Any]]] = []  # accepted, with arrival time
        self.violations = 0  # requests sent while the bucket said to wait

    @property
    def url(self) -> str:
        return f"{self.base}/api/webhooks/{self.webhook_id}/{self.token}"

    def ids(self) -> list[str]:
        """Alert ids of the accepted messages, in arrival order (from the embed footer)."""
        return [m["embeds"][0]["footer"]["text"].removeprefix("alert ") for _, m in self.messages]

    def answer(self, request: Request, step: Any) -> tuple[int, dict[str, str], bytes]:
        def error(status: int, code: int, message: str, **extra: Any) -> tuple[int, dict[str, str], bytes]:
            body = {"message": message, "code": code, **extra}
            return status, {"Content-Type": "application/json"}, json.dumps(body).encode()

        parts = urlsplit(request.path)
        segments = parts.path.strip("/").split("/")
        if len(segments) != 4 or segments[:2] != ["api", "webhooks"] or segments[2] != self.webhook_id:
            return error(404, 10015, "Unknown Webhook")
        if segments[3] != self.token:
            return error(401, 50027, "Invalid Webhook Token")
        if step == "hang":
            time.sleep(30)
            return 0, {}, b""
        self.pause(step)
        if step == "404":
            return error(404, 10015, "Unknown Webhook")
        if step == "401":
            return error(401, 50027, "Invalid Webhook Token")
        if isinstance(step, tuple) and step[0] == "429":
            wait = step[1]
            headers = {
                "Content-Type": "application/json",
                "Retry-After": str(max(1, round(wait))),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset-After": f"{wait:.3f}",
                "X-RateLimit-Scope": "user",
            }
            body = {"message": "You are being rate limited.", "retry_after": wait, "global": False}
            return 429, headers, json.dumps(body).encode()
        if isinstance(step, str) and step.startswith("5"):
            return int(step), {"Content-Type": "text/plain"}, b"upstream error"
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return error(400, 50035, "Invalid Form Body")
        try:
            body = request.json()
        except ValueError:
            return error(400, 50109, "The request body contains invalid JSON.")
        problems = discord_problems(body)
        if problems:
            return error(400, 50035, "Invalid Form Body", errors=problems)
        headers = {}
        now = time.monotonic()
        if self.bucket is not None:
            limit, per = self.bucket
            self.window = [t for t in self.window if now - t < per]
            if len(self.window) >= limit:
                self.violations += 1
                wait = per - (now - self.window[0])
                return (
                    429,
                    {"Retry-After": str(max(1, round(wait)))},
                    json.dumps(
                        {
                            "message": "You are being rate limited.",
                            "retry_after": round(wait, 3),
                            "global": False,
                        }
                    ).encode(),
                )
            self.window.append(now)
            remaining = limit - len(self.window)
            reset_after = per - (now - self.window[0])
            headers = {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                "X-RateLimit-Bucket": "abcd",
            }
        with self.lock:
            self.messages.append((request.at, body))
        if parse_qs(parts.query).get("wait") == ["true"]:
            message = {
                "id": str(10**17 + len(self.messages)),
                "channel_id": "1",
                "embeds": body.get("embeds", []),
            }
            return 200, {"Content-Type": "application/json", **headers}, json.dumps(message).encode()
        return 204, headers, b""


class SlackStandIn(StandIn):
    """Slack's incoming webhook endpoint as protocols.md section 6 describes it."""

    def __init__(
        self, script: list[Any] | None = None, *, secret: str = "S" * 24, delay: float = 0.0
    ) -> None:
        super().__init__(script, delay)
        self.secret = secret
        self.messages: list[tuple[float, dict[str, Any]]] = []

    @property
    def url(self) -> str:
        return f"{self.base}/services/T0000/B0000/{self.secret}"

    def answer(self, request: Request, step: Any) -> tuple[int, dict[str, str], bytes]:
        def plain(status: int, text: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
            return status, {"Content-Type": "text/plain", **headers}, text.encode()

        if not request.path.startswith("/services/") or not request.path.endswith("/" + self.secret):
            return plain(403, "invalid_token")
        self.pause(step)
        if step == "429":
            return 429, {"Retry-After": "1"}, b""
        if step == "404":
            return plain(404, "channel_not_found")
        if step == "403":
            return plain(403, "invalid_token")
        if step == "500":
            return plain(500, "rollup_error")
        try:
            body = request.json()
        except ValueError:
            return plain(400, "invalid_payload")
        problem = slack_problems(body)
        if problem:
            return plain(400, problem)
        with self.lock:
            self.messages.append((request.at, body))
        return plain(200, "ok")


class WebhookStandIn(StandIn):
    """A generic receiver that checks the HMAC-SHA256 signature when it has a secret."""

    def __init__(
        self,
        script: list[Any] | None = None,
        *,
        secret: str | None = None,
        delay: float = 0.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(script, delay, tls=tls)
        self.secret = secret
        self.accepted: list[tuple[float, dict[str, Any]]] = []

    @property
    def url(self) -> str:
        return f"{self.base}/hooks/alerts"

    def answer(self, request: Request, step: Any) -> tuple[int, dict[str, str], bytes]:
        if self.secret is not None:
            stamp = request.headers.get("x-trade-timestamp", "")
            given = request.headers.get("x-trade-signature", "")
            expected = (
                "sha256="
                + hmac.new(
                    self.secret.encode(), f"{stamp}.".encode() + request.body, hashlib.sha256
                ).hexdigest()
            )
            if (
                not stamp.isdigit()
                or abs(time.time() - int(stamp)) > 300
                or not hmac.compare_digest(expected, given)
            ):
                return 401, {}, b"bad signature"
        self.pause(step)
        if isinstance(step, str) and step.isdigit():
            return int(step), {"Retry-After": "0"} if step == "429" else {}, b""
        with self.lock:
            self.accepted.append((request.at, request.json()))
        return 200, {"Content-Type": "application/json"}, b'{"ok":true}'


def dead_url(path: str = "/api/webhooks/1/token") -> str:
    """A loopback URL where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


# ---------------------------------------------------------------------------------------------
# SMTP


@dataclass
class Mailbox:
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[dict[str, Any]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)  # the DATA as it came over the wire


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SMTPServer:
    host: str
    port: int
    ca_file: Path
    mailbox: Mailbox


@contextmanager
def smtp_server(
    tmp: Path,
    mode: str = "starttls",
    user: str = "alerts",
    password: str = "pw",
    reply: str = "250 OK",
    refuse: bytes | None = None,
) -> Iterator[SMTPServer]:
    """aiosmtpd on 127.0.0.1: ``starttls`` (587 style), ``tls`` (465 style) or ``plain`` (no TLS).

    A message whose DATA holds ``refuse`` is answered 554 (refused, the session goes on)."""
    import trustme
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = tmp / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    mailbox = Mailbox()

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            tls = server.transport.get_extra_info("ssl_object") is not None
            mailbox.envelopes.append(
                {
                    "from": envelope.mail_from,
                    "to": list(envelope.rcpt_tos),
                    "tls": tls,
                    "authenticated": bool(session.authenticated),
                    "peer": session.peer,  # one per connection
                }
            )
            mailbox.messages.append(message_from_bytes(envelope.content, policy=policy.default))  # type: ignore[arg-type]
            mailbox.raw.append(bytes(envelope.original_content or envelope.content))
            if refuse is not None and refuse in envelope.content:
                return "554 5.6.0 Message refused"
            return reply

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = (
            isinstance(data, LoginPassword)
            and data.login == user.encode()
            and data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535

    port = free_port()
    kwargs: dict[str, Any] = {"authenticator": authenticate, "auth_required": True}
    if mode == "starttls":
        kwargs.update(tls_context=server_ctx, require_starttls=True)
    elif mode == "tls":
        kwargs.update(ssl_context=server_ctx, auth_require_tls=False)  # TLS from the first byte
    else:
        kwargs.update(auth_require_tls=False)
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    try:
        yield SMTPServer("127.0.0.1", port, ca_file, mailbox)
    finally:
        controller.stop()


def tls_pair(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 from a fresh trustme CA, and the CA's PEM file."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = tmp / "http-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context, ca_file


class ConnectProxy:
    """An HTTP CONNECT proxy on loopback that records the tunnels it opened."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self.auth: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        request = head.split(b"\r\n")[0].decode()
        method, target, _ = request.split(" ", 2)
        for line in head.split(b"\r\n")[1:]:
            if line.lower().startswith(b"proxy-authorization:"):
                self.auth.append(line.split(b":", 1)[1].strip().decode())
        if method != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            client.close()
            return
        self.tunnels.append(target)
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (src, dst):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)

    def __enter__(self) -> ConnectProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.listener.close()
