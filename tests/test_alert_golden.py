"""Golden files: what ``trade alert --dry-run`` renders for each channel, by file name (jc style).

``tests/golden/alert/<case>.in.ndjson`` goes in; ``<case>.out.ndjson`` holds the receipts without
their run-dependent fields (``timestamp``, ``latency_ms``). Rewrite them with
``TRADE_UPDATE_GOLDEN=1 pytest tests/test_alert_golden.py`` and review the diff.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from conftest import ROOT, invoke, ndjson_records

GOLDEN = ROOT / "tests" / "golden" / "alert"
CASES = sorted(p.name.removesuffix(".in.ndjson") for p in GOLDEN.glob("*.in.ndjson"))
CHANNELS = ["console", "discord", "slack", "webhook"]


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The console shows local time: pin it."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, utc: None, tmp_state: Path) -> None:
    args = ["alert", "--dry-run", "--quiet", *(x for c in CHANNELS for x in ("--to", c))]
    result = invoke(args, input=(GOLDEN / f"{case}.in.ndjson").read_bytes())
    assert result.exit_code == 0, result.stderr
    got = [
        {k: v for k, v in r.items() if k not in ("timestamp", "latency_ms")}
        for r in ndjson_records(result.stdout_bytes)
    ]
    rendered = b"".join(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) + b"\n" for r in got)
    expected = GOLDEN / f"{case}.out.ndjson"
    if os.environ.get("TRADE_UPDATE_GOLDEN"):
        expected.write_bytes(rendered)
    assert rendered == expected.read_bytes()
