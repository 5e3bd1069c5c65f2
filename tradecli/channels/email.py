"""email: SMTP over TLS, always: STARTTLS on 587 or implicit TLS on 465, then AUTH.

There is no plaintext fallback: a server that does not offer STARTTLS is refused and the channel
stops with that reason. Certificates and host names are verified (``--ca-file`` to trust a private
CA; ``SSL_CERT_FILE`` also works). One connection is kept across a burst of alerts and closed when
the channel has been idle for a few seconds.

The message is the design document's: subject ``CRITICAL TRADING ALERT: {symbol}`` (``--subject``
or ``[alert.email] subject`` change it; ``{field}`` and ``{field:spec}`` name signal fields, and
nothing else is evaluated), an HTML table of Symbol, Strategy, Side, Entry Price, Stop Loss,
Target, Confidence, R/R Ratio and Time with the message below, every value HTML-escaped, and a
text/plain alternative with the same lines. ``Message-ID`` is derived from the alert id, so a
retried message has the same id.

Settings (environment first, then ``[alert.email]`` in the config file): ``TRADE_SMTP_HOST`` /
``host``, ``TRADE_SMTP_PORT`` / ``port`` (587), ``TRADE_SMTP_SECURITY`` / ``security``
(``starttls``, or ``tls`` for implicit TLS; the default is ``tls`` on port 465), ``TRADE_SMTP_USER``
/ ``user``, ``TRADE_SMTP_PASSWORD`` / ``password``, ``TRADE_SMTP_FROM`` / ``from``, and the
recipients from ``--to email:a@x.com,b@y.com``, ``TRADE_SMTP_TO`` or ``to``.

4xx replies and connection failures are retried; a refused login (535), refused sender or
recipients, or a missing STARTTLS stop the channel; a 5xx reply to the message itself fails that
alert only.
"""

from __future__ import annotations

import html
import smtplib
import ssl
import string
import time
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, ClassVar

from tradecli.channels import Channel, Outcome, Settings
from tradecli.channels import fields as f
from tradecli.channels.http import describe
from tradecli.errors import UsageError

TARGET = "email[:ADDRESS,...]"
DEFAULT_SUBJECT = "CRITICAL TRADING ALERT: {symbol}"


class _NoTLS(Exception):
    pass


class Template(string.Formatter):
    """``str.format`` restricted to plain field names: no attributes, no indexing, no positions."""

    def __init__(self, template: str) -> None:
        self.template = template
        try:
            parsed = list(self.parse(template))
        except ValueError as err:
            raise UsageError(f"--subject: {err}") from None
        for _, name, _, _ in parsed:
            if name is not None and not name.isidentifier():
                raise UsageError(
                    f"--subject: {{{name}}} is not a field name (use {{symbol}}, {{strategy}}, ...)"
                )

    def get_value(self, key: int | str, args: Any, kwargs: Any) -> Any:
        return kwargs.get(key, "") if isinstance(key, str) else ""

    def render(self, values: dict[str, Any]) -> str:
        try:
            return f.text(self.format(self.template, **values))
        except (ValueError, TypeError):  # a format spec that does not fit the value
            return f.text(DEFAULT_SUBJECT.format(symbol=values.get("symbol", "")))


def _rows(signal: dict[str, Any], alert_id: str) -> list[tuple[str, str]]:
    return [
        ("Symbol", f.text(signal.get("symbol")) or f.NA),
        ("Strategy", f.strategy(signal)),
        ("Side", f.side(signal) or f.NA),
        ("Entry Price", f.money(signal.get("entry_price"))),
        ("Stop Loss", f.money(signal.get("stop_loss"))),
        ("Target", f.money(signal.get("target"))),
        ("Confidence", f.percent(signal.get("confidence"))),
        ("R/R Ratio", f.rr_text(signal)),
        ("Time", f.iso_time(signal.get("timestamp")) or f.NA),
        ("Alert ID", alert_id),
    ]


def html_body(signal: dict[str, Any], alert_id: str) -> str:
    """The design document's HTML table, every value escaped."""
    e = html.escape
    rows = "\n".join(
        f"      <tr><td><b>{e(name)}:</b></td><td>{e(value)}</td></tr>"
        for name, value in _rows(signal, alert_id)
    )
    message = e(f.block(signal.get("message"))).replace("\n", "<br>\n")
    return (
        "<html>\n  <body>\n"
        '    <h2 style="color: red;">CRITICAL TRADING ALERT</h2>\n'
        '    <table border="1" style="border-collapse: collapse;">\n'
        f"{rows}\n"
        "    </table>\n"
        f"    <p><b>Message:</b> {message}</p>\n"
        "  </body>\n</html>\n"
    )


def text_body(signal: dict[str, Any], alert_id: str) -> str:
    lines = ["CRITICAL TRADING ALERT", ""]
    lines += [f"{name}: {value}" for name, value in _rows(signal, alert_id)]
    message = f.block(signal.get("message"))
    if message:
        lines += ["", f"Message: {message}"]
    return "\n".join(lines) + "\n"


def _addresses(value: Any) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return [str(a).strip() for a in items if str(a).strip()]


class Email(Channel):
    kind: ClassVar[str] = "email"

    def __init__(self, recipients: list[str], settings: Settings) -> None:
        get = settings.setting
        self.host = str(get("email", "host", "TRADE_SMTP_HOST") or "")
        security = str(get("email", "security", "TRADE_SMTP_SECURITY") or "").lower() or None
        port_text = get("email", "port", "TRADE_SMTP_PORT")
        try:
            self.port = int(port_text) if port_text else (465 if security == "tls" else 587)
        except ValueError:
            raise UsageError(f"TRADE_SMTP_PORT / [alert.email] port: {port_text!r} is not a port") from None
        self.security = security or ("tls" if self.port == 465 else "starttls")
        if self.security not in ("starttls", "tls"):
            raise UsageError("SMTP security must be 'starttls' (port 587) or 'tls' (implicit TLS, port 465)")
        self.user = get("email", "user", "TRADE_SMTP_USER")
        self.password = get("email", "password", "TRADE_SMTP_PASSWORD")
        self.sender = str(get("email", "from", "TRADE_SMTP_FROM") or self.user or "")
        self.recipients = recipients
        self.timeout = settings.timeout
        self.ca_file = settings.ca_file
        subject = settings.subject or settings.table("email").get("subject") or DEFAULT_SUBJECT
        self.subject = Template(str(subject))
        identity = f"{self.host}:{self.port}:{self.security}:{self.user}:{self.sender}:{','.join(recipients)}"
        label = "email:" + (",".join(recipients) or "(no recipients)")
        super().__init__(label, identity, [str(self.password or "")])
        if not settings.dry_run:
            missing = [
                name
                for name, value in (
                    ("host (TRADE_SMTP_HOST)", self.host),
                    ("from (TRADE_SMTP_FROM)", self.sender),
                    ("recipients (--to email:ADDRESS or TRADE_SMTP_TO)", recipients),
                )
                if not value
            ]
            if missing:
                raise UsageError(f"--to email: missing {', '.join(missing)}; see [alert.email] in the README")
        self._smtp: smtplib.SMTP | None = None
        self._used = 0.0

    def render(self, signal: dict[str, Any], alert_id: str) -> EmailMessage:
        msg = EmailMessage()
        values = {k: v for k, v in signal.items() if isinstance(k, str)}
        values.update(
            {k: f.text(v) for k, v in values.items() if isinstance(v, str)},
            alert_id=alert_id,
            side=f.side(signal),
        )
        msg["Subject"] = self.subject.render(values)
        msg["From"] = self.sender or "trade@localhost"
        msg["To"] = ", ".join(self.recipients) or "undisclosed-recipients:;"
        msg["Date"] = formatdate(usegmt=True)
        domain = (self.sender.rpartition("@")[2] or "localhost").strip("<> ")
        msg["Message-ID"] = f"<alert-{alert_id}@{domain}>"
        msg["X-Trade-Alert-Id"] = alert_id
        msg.set_content(text_body(signal, alert_id))
        msg.add_alternative(html_body(signal, alert_id), subtype="html")
        return msg

    def preview(self, rendered: EmailMessage) -> str:
        return rendered.as_string()

    def _open(self) -> smtplib.SMTP:
        context = ssl.create_default_context(cafile=self.ca_file)
        smtp: smtplib.SMTP
        if self.security == "tls":
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            try:
                smtp.ehlo()
                if not smtp.has_extn("starttls"):
                    raise _NoTLS
                smtp.starttls(context=context)
                smtp.ehlo()
            except BaseException:
                smtp.close()
                raise
        try:
            if self.user:
                smtp.login(str(self.user), str(self.password or ""))
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _send_once(self, msg: EmailMessage) -> dict[str, Any]:
        if self._smtp is not None and time.monotonic() - self._used > 30:
            try:
                self._smtp.noop()
            except (smtplib.SMTPException, OSError):
                self.close()
        if self._smtp is None:
            self._smtp = self._open()
        self._used = time.monotonic()
        return self._smtp.send_message(msg)

    def send(self, rendered: EmailMessage, alert_id: str) -> Outcome:
        where = f"{self.host}:{self.port}"
        for again in (False, True):
            reused = self._smtp is not None
            try:
                refused = self._send_once(rendered)
            except smtplib.SMTPServerDisconnected:
                self.close()
                if reused and not again:
                    continue  # the server dropped the idle connection: once more on a new one
                return Outcome(False, f"{where} closed the connection", retry=True, maybe_sent=reused)
            except Exception as exc:  # every failure becomes an outcome; nothing escapes a worker
                self.close()
                return self.failure(exc, where, reused)
            if refused:
                return Outcome(True, note=f"refused by the server: {', '.join(sorted(refused))}")
            return Outcome(True)
        return Outcome(False, f"{where} closed the connection", retry=True)

    def failure(self, exc: Exception, where: str, reused: bool) -> Outcome:
        if isinstance(exc, _NoTLS):
            return Outcome(
                False,
                f"SMTP server {where} does not offer STARTTLS; refusing to send in plain text",
                stop_channel=True,
            )
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            return Outcome(
                False, f"SMTP login refused by {where} ({_reply(exc)})", stop_channel=True, auth=True
            )
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return Outcome(False, f"SMTP server {where}: {exc}", stop_channel=True)
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            refused = ", ".join(f"{a} ({c})" for a, (c, _) in sorted(exc.recipients.items()))
            return Outcome(False, f"all recipients refused by {where}: {refused}", stop_channel=True)
        if isinstance(exc, smtplib.SMTPResponseException):
            transient = 400 <= exc.smtp_code < 500
            if isinstance(exc, smtplib.SMTPDataError) and not transient:
                return Outcome(False, f"message refused by {where} ({_reply(exc)})")
            return Outcome(
                False, f"{where} replied {_reply(exc)}", retry=transient, stop_channel=not transient
            )
        if isinstance(exc, ssl.SSLCertVerificationError):
            return Outcome(False, describe(exc, self.host, self.timeout, False), stop_channel=True)
        if isinstance(exc, OSError):
            if self.ca_file and isinstance(exc, FileNotFoundError):
                return Outcome(False, f"cannot read --ca-file {self.ca_file}", stop_channel=True)
            sent = isinstance(exc, TimeoutError) and reused
            return Outcome(False, describe(exc, self.host, self.timeout, sent), retry=True, maybe_sent=sent)
        return Outcome(False, f"SMTP error with {where}: {type(exc).__name__}", retry=True)

    def idle(self) -> None:
        self.close()

    def close(self) -> None:
        if self._smtp is not None:
            smtp, self._smtp = self._smtp, None
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()


def _reply(exc: smtplib.SMTPResponseException) -> str:
    message = (
        exc.smtp_error.decode("utf-8", "replace")
        if isinstance(exc.smtp_error, bytes)
        else str(exc.smtp_error)
    )
    return f"{exc.smtp_code} {f.text(message)[:160]}"


def from_target(arg: str | None, settings: Settings) -> Email:
    recipients = _addresses(arg) if arg else _addresses(settings.setting("email", "to", "TRADE_SMTP_TO"))
    return Email(recipients, settings)
