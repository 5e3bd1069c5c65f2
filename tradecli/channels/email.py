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

The MIME text is written here rather than by the standard library's ``email`` package, which
takes over a millisecond a message (``--dry-run`` renders tens of thousands a second): a part
is sent as 7bit where it is ASCII with lines of at most 998 characters, else base64; headers
that are not short ASCII are RFC 2047 encoded; From and To are formatted once, by the standard
library. A batch of alerts is rendered a column at a time (:meth:`Email.preview_column`), with
the same text.

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

import base64
import hashlib
import html
import re
import smtplib
import ssl
import string
import time
from email import policy as email_policy
from email.header import Header
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, parseaddr
from typing import TYPE_CHECKING, Any, ClassVar

from tradecli.channels import Channel, Outcome, Settings
from tradecli.channels import fields as f
from tradecli.channels.http import describe
from tradecli.errors import UsageError

if TYPE_CHECKING:
    import pyarrow as pa

    from tradecli.channels.columns import Chunk

TARGET = "email[:ADDRESS,...]"
DEFAULT_SUBJECT = "CRITICAL TRADING ALERT: {symbol}"
LINE_MAX = 998  # RFC 5322 2.1.1: a line of a message, without its CRLF
BOUNDARY = "=_trade_"  # "=_" is never in base64 text, nor in a part sent as 7bit (checked)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # a 7bit part holds none of these
_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,40}")  # with BOUNDARY, within RFC 2046's 70 characters
TITLE = "CRITICAL TRADING ALERT"
LABELS = (
    "Symbol",
    "Strategy",
    "Side",
    "Entry Price",
    "Stop Loss",
    "Target",
    "Confidence",
    "R/R Ratio",
    "Time",
)


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


def _values(signal: dict[str, Any]) -> tuple[list[str], str]:
    """The table's values in the order of LABELS, and the message (it may hold line breaks)."""
    d = f.display(signal)
    values = [
        d.symbol,
        d.strategy,
        d.side or f.NA,
        d.entry,
        d.stop,
        d.target,
        d.confidence,
        d.rr,
        d.time or f.NA,
    ]
    return values, d.message


# The bodies are the same template in both paths: the row path fills it with strings, the column
# path with Arrow string columns (pyarrow joins them); a piece is either a constant or a value.
_TEXT_HEAD = f"{TITLE}\n\n"
_HTML_HEAD = (
    "<html>\n  <body>\n"
    f'    <h2 style="color: red;">{TITLE}</h2>\n'
    '    <table border="1" style="border-collapse: collapse;">\n'
)
_HTML_TAIL = "  </body>\n</html>\n"


def _text_pieces(values: list[Any], alert_id: Any, message: Any) -> list[Any]:
    pieces: list[Any] = [_TEXT_HEAD]
    for label, value in zip(LABELS, values, strict=True):
        pieces += [f"{label}: ", value, "\n"]
    return [*pieces, "Alert ID: ", alert_id, "\n", message]


def _html_pieces(values: list[Any], alert_id: Any, message: Any) -> list[Any]:
    pieces: list[Any] = [_HTML_HEAD]
    for label, value in zip(LABELS, values, strict=True):
        pieces += [f"      <tr><td><b>{html.escape(label)}:</b></td><td>", value, "</td></tr>\n"]
    pieces += ["      <tr><td><b>Alert ID:</b></td><td>", alert_id, "</td></tr>\n    </table>\n"]
    return [*pieces, "    <p><b>Message:</b> ", message, "</p>\n", _HTML_TAIL]


def _text_message(message: str) -> str:
    return f"\nMessage: {message}\n" if message else ""


def _html_message(message: str) -> str:
    return html.escape(message).replace("\n", "<br>\n")


def html_body(signal: dict[str, Any], alert_id: str) -> str:
    """The design document's HTML table, every value escaped."""
    values, message = _values(signal)
    escaped = [html.escape(v) for v in values]
    return "".join(_html_pieces(escaped, html.escape(f.text(alert_id)), _html_message(message)))


def text_body(signal: dict[str, Any], alert_id: str) -> str:
    values, message = _values(signal)
    return "".join(_text_pieces(values, f.text(alert_id), _text_message(message)))


def _seven_bit(body: str) -> bool:
    """Whether a part can go as it is: ASCII, short lines, and no boundary inside."""
    if not body.isascii() or "=_" in body or _CONTROL.search(body):
        return False
    return len(body) <= LINE_MAX or max(map(len, body.split("\n"))) <= LINE_MAX


def _part_header(subtype: str, encoding: str) -> str:
    return f'Content-Type: text/{subtype}; charset="utf-8"\nContent-Transfer-Encoding: {encoding}\n\n'


def mime_part(subtype: str, body: str) -> str:
    """One text part of the message: 7bit where it can be, else base64 (lines of 76)."""
    if _seven_bit(body):
        return _part_header(subtype, "7bit") + body
    return (
        _part_header(subtype, "base64") + base64.encodebytes(body.encode("utf-8", "surrogatepass")).decode()
    )


def header_text(name: str, value: str) -> str:
    """A header's value as it goes on the wire: short ASCII as it is, else RFC 2047 words, folded."""
    plain = value.isascii() and value.isprintable() and "=?" not in value  # "=?" would read as a word
    if plain and len(name) + 2 + len(value) <= 78:
        return value
    return Header(value, "utf-8", header_name=name).encode()


def id_token(alert_id: str) -> str:
    """The alert id where it is a plain token (hex ids always are), else a hash of it: the id
    part of Message-ID, and the multipart boundary's tail."""
    if _TOKEN.fullmatch(alert_id):
        return alert_id
    return hashlib.sha256(alert_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


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
        for what, value in (("from (TRADE_SMTP_FROM)", self.sender), ("recipients", ",".join(recipients))):
            if not value.isprintable():
                raise UsageError(f"--to email: {what} holds a line break or control character")
        self._smtp: smtplib.SMTP | None = None
        self._used = 0.0
        self._address_lines: str | None = None
        self._domain = (self.sender.rpartition("@")[2] or "localhost").strip("<> ")
        if not _TOKEN.fullmatch(self._domain):
            self._domain = "localhost"
        self._envelope_from = parseaddr(self.sender)[1] or "trade@localhost"
        self._envelope_to = [address for _, address in getaddresses(recipients) if address]

    def render(self, signal: dict[str, Any], alert_id: str) -> str:
        """The whole message as text with ``\\n`` line ends (ASCII unless an address is not);
        :meth:`send` sends it as it is."""
        values = {k: v for k, v in signal.items() if isinstance(k, str)}
        values.update(
            {k: f.text(v) for k, v in values.items() if isinstance(v, str)},
            alert_id=alert_id,
            side=f.side(signal),
        )
        token = id_token(alert_id)
        return "".join(
            [
                "Subject: ",
                header_text("Subject", self.subject.render(values)),
                self._addressing,
                formatdate(usegmt=True),
                f"\nMessage-ID: <alert-{token}@{self._domain}>\nX-Trade-Alert-Id: ",
                header_text("X-Trade-Alert-Id", f.text(alert_id)),
                *self._framing(token),
                mime_part("plain", text_body(signal, alert_id)),
                f"\n--{BOUNDARY}{token}\n",
                mime_part("html", html_body(signal, alert_id)),
                f"\n--{BOUNDARY}{token}--\n",
            ]
        )

    def preview(self, rendered: str) -> str:
        return rendered

    @staticmethod
    def _framing(token: str) -> list[str]:
        boundary = BOUNDARY + token
        return [
            "\nMIME-Version: 1.0\n",
            f'Content-Type: multipart/alternative; boundary="{boundary}"\n\n--{boundary}\n',
        ]

    @property
    def _addressing(self) -> str:
        """The From and To header lines, formatted once by the standard library, up to Date's value."""
        if self._address_lines is None:
            international = not (self.sender.isascii() and all(r.isascii() for r in self.recipients))
            # an address that is not ASCII cannot be RFC 2047 encoded; it goes as UTF-8 (SMTPUTF8)
            msg = EmailMessage(policy=email_policy.SMTPUTF8 if international else email_policy.default)
            msg["From"] = self.sender or "trade@localhost"
            msg["To"] = ", ".join(self.recipients) or "undisclosed-recipients:;"
            self._address_lines = "\n" + msg.as_string().rstrip("\n") + "\nDate: "
        return self._address_lines

    def preview_column(self, chunk: Chunk) -> pa.Array:
        """:meth:`render` of every alert of a batch (one Date for the batch), built a column at a time."""
        fields = self._subject_fields()
        if chunk.small or fields is None:
            return super().preview_column(chunk)
        import pyarrow as pa
        import pyarrow.compute as pc

        e = html.escape
        side = chunk.side().fill_null(f.NA)
        rr = chunk.rr_strings(lambda x: f.NA if x is None else f"{x:.1f}:1")
        stamps = chunk.iso_times().fill_null(f.NA)
        numbers = [
            chunk.distinct("entry_price").strings(f.money),
            chunk.distinct("stop_loss").strings(f.money),
            chunk.distinct("target").strings(f.money),
            chunk.distinct("confidence").strings(f.percent),
            rr,
            stamps,
        ]  # digits, signs and "$,.:%-TZ/na": the same text in HTML
        symbol, strategy = chunk.distinct("symbol"), chunk.distinct("strategy")
        text_values = [
            symbol.strings(lambda v: f.text(v) or f.NA),
            strategy.strings(lambda v: f.text(v) or "signal"),
            side,
            *numbers,
        ]
        html_values = [
            symbol.strings(lambda v: e(f.text(v) or f.NA)),
            strategy.strings(lambda v: e(f.text(v) or "signal")),
            side,
            *numbers,
        ]
        ids = pa.array([f.text(i) for i in chunk.ids] if chunk.ids_given else chunk.ids, pa.string())
        html_ids = pa.array([e(f.text(i)) for i in chunk.ids], pa.string()) if chunk.ids_given else ids
        messages = chunk.distinct("message")
        text = pc.binary_join_element_wise(
            *_text_pieces(text_values, ids, messages.strings(lambda v: _text_message(f.block(v)))), ""
        )
        page = pc.binary_join_element_wise(
            *_html_pieces(html_values, html_ids, messages.strings(lambda v: _html_message(f.block(v)))), ""
        )
        tokens = [id_token(i) for i in chunk.ids] if chunk.ids_given else chunk.ids
        boundaries = pa.array([BOUNDARY + t for t in tokens], pa.string())
        alert_ids = (
            pa.array([header_text("X-Trade-Alert-Id", f.text(i)) for i in chunk.ids], pa.string())
            if chunk.ids_given
            else ids
        )
        return pc.binary_join_element_wise(
            "Subject: ",
            self._subject_column(chunk, fields),
            self._addressing,
            formatdate(usegmt=True),
            "\nMessage-ID: <alert-",
            pa.array(tokens, pa.string()),
            f"@{self._domain}>\nX-Trade-Alert-Id: ",
            alert_ids,
            '\nMIME-Version: 1.0\nContent-Type: multipart/alternative; boundary="',
            boundaries,
            '"\n\n--',
            boundaries,
            "\n",
            _parts_column("plain", text),
            "\n--",
            boundaries,
            "\n",
            _parts_column("html", page),
            "\n--",
            boundaries,
            "--\n",
            "",
        )

    def _subject_fields(self) -> list[str] | None:
        """The fields the subject names, when a batch can render it per distinct value of them
        (not when it names the alert id, unique per alert, or nests fields in a format spec)."""
        names = []
        for _, name, spec, _ in self.subject.parse(self.subject.template):
            if name is None:
                continue
            if name == "alert_id" or (spec and "{" in spec):
                return None
            names.append(name)
        # a spec that does not fit falls back to the default subject, which names the symbol
        return names if "symbol" in names else [*names, "symbol"]

    def _subject_column(self, chunk: Chunk, names: list[str]) -> pa.Array:
        """The encoded subject of each alert, rendered once per distinct combination of its fields."""
        import pyarrow as pa

        from tradecli.channels.columns import Distinct, combine

        parts = [Distinct(chunk.side(), chunk.rows) if n == "side" else chunk.distinct(n) for n in names]
        present = [n == "side" or chunk.column(n) is not None for n in names]
        combos = combine(*parts) if parts else None
        if combos is None:
            subject = header_text("Subject", self.subject.render({}))
            return pa.array([subject] * chunk.rows, pa.string())
        rendered = []
        for combo in combos.values:
            values = {
                n: (f.text(v) if isinstance(v, str) else v)
                for n, v, p in zip(names, combo, present, strict=True)
                if p
            }
            rendered.append(header_text("Subject", self.subject.render(values)))
        return pa.array(rendered, pa.string()).take(combos.indices)

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

    def _send_once(self, msg: str) -> dict[str, Any]:
        if self._smtp is not None and time.monotonic() - self._used > 30:
            try:
                self._smtp.noop()
            except (smtplib.SMTPException, OSError):
                self.close()
        if self._smtp is None:
            self._smtp = self._open()
        self._used = time.monotonic()
        envelope = [self._envelope_from, *self._envelope_to]
        options = ["SMTPUTF8"] if not all(a.isascii() for a in envelope) else []
        data = msg.replace("\n", "\r\n").encode("utf-8")  # sendmail leaves bytes as they are
        return self._smtp.sendmail(self._envelope_from, self._envelope_to, data, mail_options=options)

    def send(self, rendered: str, alert_id: str) -> Outcome:
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
                if not _connection_still_good(exc):
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


def _parts_column(subtype: str, bodies: pa.Array) -> pa.Array:
    """:func:`mime_part` of each body: the header joined by Arrow where the body goes as 7bit
    (the usual case), Python for the rest."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    odd = pc.or_(pc.match_substring(bodies, "=_"), pc.match_substring_regex(bodies, _CONTROL.pattern))
    plain = pc.and_(pc.string_is_ascii(bodies), pc.invert(odd)).to_numpy(zero_copy_only=False)
    long = (pc.binary_length(bodies).to_numpy(zero_copy_only=False) > LINE_MAX) & plain
    for at in np.flatnonzero(long).tolist():  # a long body may still have short lines
        plain[at] = _seven_bit(bodies[at].as_py())
    out = pc.binary_join_element_wise(_part_header(subtype, "7bit"), bodies, "")
    rest = np.flatnonzero(~plain)
    if not rest.size:
        return out
    encoded = out.to_pylist()
    for row in rest.tolist():
        encoded[row] = mime_part(subtype, bodies[row].as_py())
    return pa.array(encoded, pa.string())


def _connection_still_good(exc: Exception) -> bool:
    """A refusal of this message (sender, recipients or data, not 421) leaves the session open:
    smtplib has reset it, so the next alert of the burst uses the same connection."""
    refusal = (smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused)
    return isinstance(exc, refusal) and getattr(exc, "smtp_code", 0) != 421


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
