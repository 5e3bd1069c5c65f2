"""Shared helpers: run `trade` as a real process, or its Typer app in-process, and read records."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tradecli.__main__ import _WithoutPandas

# Tests run the stages in-process as the `trade` command runs them: without pandas (pyarrow then
# refuses to turn ns timestamps into Python objects, which a test must see).
if "pandas" not in sys.modules:
    sys.meta_path.insert(0, _WithoutPandas)  # type: ignore[arg-type]

import orjson
import pyarrow as pa
import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
SESSION_DATE = "2026-11-20"  # a Friday: fixed so simulated output is reproducible


def trade_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tradecli", *args]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child stage: unbuffered output hidden, so flush bugs show (see notes)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "TRADE_FORMAT")}
    env.update(extra)
    return env


def run_trade(
    *args: str, input: bytes | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        trade_argv(*args), input=input, capture_output=True, timeout=timeout, env=env or child_env()
    )


def invoke(args: Sequence[str], input: bytes | str | None = None, env: dict[str, str] | None = None) -> Any:
    """Run the app in-process (fast); stdout and stderr come back separately."""
    from tradecli.cli import app

    return CliRunner().invoke(app, list(args), input=input, env=env, catch_exceptions=False)


def ndjson_records(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def arrow_table(data: bytes) -> pa.Table:
    """Every Arrow IPC stream in ``data`` (a writer may start a new one when its schema changes)."""
    source = io.BytesIO(data)
    tables = []
    while source.tell() < len(data):
        reader = pa.ipc.open_stream(source)
        tables.append(reader.read_all())
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def sim_args(count: int, *extra: str, seed: int = 7) -> list[str]:
    return ["ingest", "--seed", str(seed), "--date", SESSION_DATE, "--count", str(count), *extra]


def write_lines(path: Path, lines: Iterable[bytes | str]) -> Path:
    path.write_bytes(b"".join((line.encode() if isinstance(line, str) else line) + b"\n" for line in lines))
    return path


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/*/*.out.ndjson")


@pytest.fixture
def tmp_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep state and data directories inside the test's temporary directory."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path
