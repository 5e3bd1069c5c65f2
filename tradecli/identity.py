"""An alert's stable id: the same signal gets the same id however often it is sent or replayed.

Light on purpose (hashlib only): ``tradecli.stages.alert`` imports it at start-up. The columnar
form for whole batches is :func:`tradecli.channels.columns.alert_ids`; both give the same ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

ID_FIELDS = (
    "strategy",
    "symbol",
    "timestamp",
    "side",
    "signal_type",
    "entry_price",
    "stop_loss",
    "target",
    "message",
)
ID_LENGTH = 20


def alert_id(signal: Mapping[str, Any]) -> str:
    """A stable id: the signal's own ``alert_id``, else a hash of the fields that make it this signal.

    The fields are those of ID_FIELDS as the record carries them (times as integer ns), so the same
    signal gets the same id however often it is sent, replayed or read back from the outbox.
    """
    given = signal.get("alert_id")
    if isinstance(given, str) and given:
        return given
    key = "\x1f".join(map(str, map(signal.get, ID_FIELDS)))
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:ID_LENGTH]
