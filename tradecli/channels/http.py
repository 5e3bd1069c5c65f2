"""A small keep-alive HTTP client for the webhook channels, with errors that never show the URL.

Webhook URLs are bearer credentials (the token is in the path), and the usual clients put the URL
into their exception text. Here every failure becomes an :class:`HttpFailure` whose message names
only the host, and whether the request may have reached the server before it failed (a timeout
waiting for the answer), which is what decides "possible duplicate" upstream.

One connection per channel, reused across a burst; a reused connection the server had closed is
retried once on a fresh one before anything was answered. HTTPS goes through ``HTTPS_PROXY``
(honouring ``NO_PROXY``) with a CONNECT tunnel; certificates are always verified, against
``--ca-file`` when given, else the system's store (``SSL_CERT_FILE`` works as usual).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import socket
import ssl
from abc import abstractmethod
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from tradecli import __version__
from tradecli.channels import Channel, Outcome, Settings
from tradecli.errors import UsageError

USER_AGENT = f"tradecli/{__version__}"


class HttpFailure(Exception):
    """A request that got no HTTP answer. ``str()`` holds no URL."""

    def __init__(self, message: str, *, maybe_sent: bool = False, permanent: bool = False) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent
        self.permanent = permanent  # e.g. an untrusted certificate: retrying will not help


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        import orjson

        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None

    def text(self, limit: int = 200) -> str:
        return self.body[:limit].decode("utf-8", errors="replace").strip()


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str, *, https_only: bool) -> SplitResult:
    """Parse a webhook URL; refuse anything but https (http only to loopback unless allowed).

    Messages name ``what`` (``--to discord``), never the URL: it is a secret.
    """
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise UsageError(f"{what}: the URL is not valid") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{what}: the URL must start with https://")
    if parts.scheme == "http" and https_only and not is_loopback(parts.hostname):
        raise UsageError(f"{what}: the URL must use https:// (plain http only to localhost)")
    return parts


def retry_after(headers: dict[str, str], body_value: Any = None) -> float | None:
    """Seconds to wait from a 429/503: the body's float ``retry_after`` (Discord), else the header."""
    if isinstance(body_value, int | float) and not isinstance(body_value, bool) and body_value >= 0:
        return float(body_value)
    for name in ("retry-after", "x-ratelimit-reset-after"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            from datetime import UTC, datetime

            when = parsedate_to_datetime(value)
            return max(0.0, (when - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            pass
    return None


def _proxy_for(parts: SplitResult) -> SplitResult | None:
    if parts.scheme != "https":
        return None
    import urllib.request

    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get("https")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    found = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    return found if found.hostname else None


def describe(exc: BaseException, host: str, timeout: float, sent: bool) -> str:
    """A short, URL-free account of a failed request."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate of {host} not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error with {host} ({exc.reason or 'handshake failed'})"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer from {host} within {timeout:g} s" if sent else f"connecting to {host} timed out"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection to {host} refused"
    if isinstance(exc, http.client.RemoteDisconnected):
        return f"{host} closed the connection without answering"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return f"{host} reset the connection"
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP answer from {host} ({type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{host}: {exc.strerror}"
    return f"{host}: {type(exc).__name__}"


class HttpClient:
    """POSTs to one URL over one kept-alive connection. Not thread-safe: one per channel worker."""

    def __init__(self, url: str, *, timeout: float = 10.0, ca_file: str | None = None) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.https = parts.scheme == "https"
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.timeout = timeout
        self.ca_file = ca_file
        self._auth = None
        if parts.username is not None:
            raw = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._auth = "Basic " + base64.b64encode(raw.encode()).decode()
        self._proxy = _proxy_for(parts)
        # what must never be shown: the URL's own password and the proxy's
        self.secrets = [x for x in (parts.password, self._proxy.password if self._proxy else None) if x]
        self._conn: http.client.HTTPConnection | None = None
        self._context: ssl.SSLContext | None = None

    def _tls(self) -> ssl.SSLContext:
        if self._context is None:
            try:
                self._context = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as err:
                raise HttpFailure(
                    f"cannot load --ca-file {self.ca_file}: {getattr(err, 'strerror', None) or err}",
                    permanent=True,
                ) from None
        return self._context

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._proxy is not None:
            proxy = self._proxy
            conn = http.client.HTTPSConnection(
                proxy.hostname or "", proxy.port or 8080, timeout=self.timeout, context=self._tls()
            )
            headers = {}
            if proxy.username is not None:
                raw = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
                headers["Proxy-Authorization"] = "Basic " + base64.b64encode(raw.encode()).decode()
            conn.set_tunnel(self.host, self.port, headers=headers)
        elif self.https:
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=self._tls()
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return conn

    def post(self, body: bytes, headers: dict[str, str]) -> Response:
        """One POST; raises :class:`HttpFailure` when no HTTP answer came."""
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
        if self._auth:
            headers["Authorization"] = self._auth
        for fresh in (False, True):
            reused = self._conn is not None
            conn = self._conn or self._connect()
            self._conn = conn
            sent = False
            try:
                conn.request("POST", self.path, body=body, headers=headers)
                sent = True
                answer = conn.getresponse()
                data = answer.read()
            except HttpFailure:
                self.close()
                raise
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                stale = isinstance(
                    exc, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError
                )
                if reused and stale and not fresh:
                    continue  # the server had closed the idle connection: once more on a new one
                permanent = isinstance(exc, ssl.SSLCertVerificationError)
                raise HttpFailure(
                    describe(exc, self.host, self.timeout, sent),
                    maybe_sent=sent and not permanent,
                    permanent=permanent,
                ) from None
            if answer.will_close:
                self.close()
            return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, data)
        raise HttpFailure(f"{self.host} closed the connection without answering", maybe_sent=True)

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(OSError):
                conn.close()


class PostChannel(Channel):
    """A channel that POSTs each rendered alert to one URL; a subclass reads the answer."""

    client: HttpClient

    def headers(self, rendered: bytes, alert_id: str) -> dict[str, str]:
        return {}

    def send(self, rendered: bytes, alert_id: str) -> Outcome:
        try:
            answer = self.client.post(rendered, self.headers(rendered, alert_id))
        except HttpFailure as failure:  # no answer at all: try again, unless trying cannot help
            return Outcome(
                False,
                str(failure),
                retry=not failure.permanent,
                stop_channel=failure.permanent,
                maybe_sent=failure.maybe_sent,
            )
        return self.outcome(answer)

    @abstractmethod
    def outcome(self, answer: Response) -> Outcome:
        """What the server's answer means for this alert and this channel."""

    def close(self) -> None:
        self.client.close()


def target_url(
    arg: str | None, settings: Settings, kind: str, key: str, env: str, *, warn: bool = True
) -> str | None:
    """``--to KIND:URL``, else the environment, else ``[alert.KIND] key``; None when none has one.

    A URL on the command line is a credential anyone on the machine can read in ``ps``: say so.
    """
    if not arg:
        value = settings.setting(kind, key, env)
        return str(value) if value else None
    if warn and not settings.dry_run:
        settings.warn(
            f"the {kind} URL on the command line is visible to other users (ps); "
            f"prefer {env} or [alert.{kind}] {key} in the config file"
        )
    return arg


def no_url(kind: str, key: str, env: str, noun: str = "webhook URL") -> UsageError:
    where = f"[alert.{kind}] of the config file"
    return UsageError(f"--to {kind}: no {noun}; give --to {kind}:URL, set {env}, or {key} in {where}")
