"""Alert channels: one module per channel, each named on :data:`CHANNELS`.

A channel module defines ``TARGET`` (how ``--to`` spells it, for help and errors) and
``from_target(arg, settings) -> Channel``: ``arg`` is what followed ``kind:`` in ``--to`` (or None),
and ``settings`` carries the environment, the config file's ``[alert]`` table and the options every
channel shares. A :class:`Channel` renders a signal into its payload and sends it, and says what
happened as an :class:`Outcome`; retries, pacing, the outbox and receipts are the delivery
engine's business (:mod:`tradecli.delivery`), so a channel stays a small, testable module.
The console and ``--dry-run`` settle a whole batch at once (:meth:`Channel.send_column`,
:meth:`Channel.preview_column`); a channel may build those a column at a time, with the same text
as its one-alert render.

Adding a channel: write ``tradecli/channels/<kind>.py`` and add ``<kind>`` here.
"""

from __future__ import annotations

import hashlib
import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tradecli.errors import UsageError

if TYPE_CHECKING:
    import pyarrow as pa

    from tradecli.channels.columns import Chunk

CHANNELS: tuple[str, ...] = ("console", "discord", "slack", "email", "webhook")


@dataclass
class Settings:
    """What every channel of one ``trade alert`` run may read."""

    env: Mapping[str, str] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)  # the config file's [alert] table
    timeout: float = 10.0
    ca_file: str | None = None
    subject: str | None = None
    warn: Callable[[str], None] = lambda message: None
    dry_run: bool = False

    def table(self, kind: str) -> Mapping[str, Any]:
        """The channel's own sub-table (``[alert.discord]``), or {}."""
        value = self.config.get(kind, {})
        if not isinstance(value, Mapping):
            raise UsageError(f"config file: [alert.{kind}] must be a table")
        return value

    def setting(self, kind: str, key: str, env: str | None = None) -> Any:
        """Environment first, then ``[alert.<kind>] key``; None when neither has it."""
        if env and self.env.get(env):
            return self.env[env]
        return self.table(kind).get(key)


@dataclass
class Outcome:
    """What one attempt to send came to."""

    ok: bool
    error: str | None = None
    retry: bool = False  # transient (timeout, 5xx, 429): try the same alert again later
    stop_channel: bool = False  # permanent for the channel (bad token, unknown webhook)
    auth: bool = False  # the permanent failure is about credentials (exit status 77)
    retry_after: float | None = None  # the server said how long to wait
    wait_after: float | None = None  # delivered, but the rate-limit bucket is empty for this long
    wait_global: bool = False  # the wait applies to every channel of this kind (Discord global limit)
    maybe_sent: bool = False  # failed after the request went out: the channel may have it anyway
    note: str | None = None  # a remark for a successful delivery


class Channel(ABC):
    """One delivery target: a webhook URL, a mail relay and its recipients, the console."""

    kind: ClassVar[str] = ""
    inline: ClassVar[bool] = False  # rendered in the reading thread; no outbox, no retries
    min_interval: ClassVar[float] = 0.0  # pacing between two sends, in seconds

    def __init__(self, label: str, identity: str, secrets: list[str] | None = None) -> None:
        self.label = label  # shown in receipts and messages: any secret already masked
        self.key = fingerprint(self.kind, identity)  # which channel an outbox entry belongs to
        self.secrets = [s for s in (secrets or []) if s]
        self._not_before = 0.0

    @abstractmethod
    def render(self, signal: dict[str, Any], alert_id: str) -> Any:
        """The payload for one alert (what :meth:`send` takes)."""

    @abstractmethod
    def preview(self, rendered: Any) -> str:
        """The rendered payload as text, for ``--dry-run``."""

    @abstractmethod
    def send(self, rendered: Any, alert_id: str) -> Outcome:
        """Deliver a rendered payload once; never raises for a delivery problem."""

    def send_many(self, items: list[tuple[Any, str]]) -> list[Outcome]:
        """Deliver several rendered payloads (``(rendered, alert_id)``); inline channels batch them."""
        return [self.send(rendered, alert_id) for rendered, alert_id in items]

    def preview_column(self, chunk: Chunk) -> pa.Array:
        """:meth:`preview` of every alert of a batch, as a string array (``--dry-run``).

        Alert by alert here; a channel may render a whole batch at once, with the same text.
        """
        import pyarrow as pa

        previews = [self.preview(self.render(s, i)) for s, i in zip(chunk.records, chunk.ids, strict=True)]
        return pa.array(previews, pa.string())

    def send_column(self, chunk: Chunk) -> list[Outcome]:
        """Deliver every alert of a batch (inline channels): one outcome per alert."""
        return self.send_many([(self.render(s, i), i) for s, i in zip(chunk.records, chunk.ids, strict=True)])

    def ready_at(self) -> float:
        """The monotonic time the next send may start (pacing and rate-limit buckets)."""
        return self._not_before

    def hold(self, seconds: float) -> None:
        """No send before ``seconds`` from now."""
        self._not_before = max(self._not_before, time.monotonic() + seconds)

    def idle(self) -> None:  # noqa: B027 - optional: most channels keep nothing open
        """Nothing to send for a while: a channel may close connections it keeps."""

    def close(self) -> None:  # noqa: B027 - optional: most channels keep nothing open
        """Release connections."""


def fingerprint(kind: str, identity: str) -> str:
    """A short stable id for a channel's full target (secrets included), that reveals none of it."""
    return kind + "-" + hashlib.sha256(f"{kind}\0{identity}".encode()).hexdigest()[:16]


def parse_target(spec: str) -> tuple[str, str | None]:
    """``discord:https://...`` -> ("discord", "https://..."); ``slack`` -> ("slack", None)."""
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in CHANNELS:
        raise UsageError(f"unknown channel {kind!r} in --to; use one of {', '.join(CHANNELS)}")
    return kind, (arg.strip() or None) if sep else None


def build(spec: str, settings: Settings) -> Channel:
    """The channel a ``--to`` value names, configured from it, the environment and the config."""
    kind, arg = parse_target(spec)
    module = importlib.import_module(f"tradecli.channels.{kind}")
    channel: Channel = module.from_target(arg, settings)
    return channel
