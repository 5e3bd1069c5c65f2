"""The whole pipeline as a trader runs it, as real processes: ingest | enrich | screen | alert, and store."""

from __future__ import annotations

import subprocess
from pathlib import Path

import duckdb
import pytest
from conftest import arrow_table, child_env, ndjson_records, sim_args, trade_argv

pytestmark = [pytest.mark.pipes, pytest.mark.slow]


def run_pipeline(
    tmp_path: Path, fmt: str, count: int = 30_000
) -> tuple[list[dict[str, object]], bytes, Path]:
    """ingest | enrich | tee (store) | screen | alert --dry-run; returns receipts, stderr, the store path."""
    env = child_env(TRADECLI_STATE_DIR=str(tmp_path / "state"))
    store = tmp_path / "ticks"
    stages = [
        trade_argv(*sim_args(count, "--format", fmt, "--quiet")),
        trade_argv("enrich", "--quiet"),
        ["tee", str(tmp_path / "enriched")],
        trade_argv("screen", "--quiet"),
        trade_argv("alert", "--dry-run", "--to", "console", "--to", "discord", "--format", "ndjson"),
    ]
    script = "set -o pipefail; " + " | ".join(" ".join(argv) for argv in stages)
    result = subprocess.run(["bash", "-c", script], capture_output=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    with open(tmp_path / "enriched", "rb") as enriched:
        stored = subprocess.run(
            trade_argv("store", str(store), "--quiet"),
            stdin=enriched,
            capture_output=True,
            env=env,
            timeout=120,
        )
    assert stored.returncode == 0, stored.stderr.decode()
    return ndjson_records(result.stdout), result.stderr, store


@pytest.mark.parametrize("fmt", ["arrow", "ndjson"])
def test_sim_to_alerts_finds_the_planted_gaps(tmp_path: Path, fmt: str) -> None:
    receipts, stderr, store = run_pipeline(tmp_path, fmt)
    gap_and_go = [r for r in receipts if r["strategy"] == "gap_and_go"]
    assert gap_and_go, "the simulator plants gaps; Gap & Go must find them"
    channels = {str(r["channel"]) for r in receipts}
    assert "console" in channels and any(c.startswith("discord") for c in channels)
    assert all(r["status"] == "dry-run" for r in receipts)
    discord = [r for r in receipts if str(r["channel"]).startswith("discord")]
    assert discord and all('"allowed_mentions":{"parse":[]}' in str(r["payload"]) for r in discord)
    assert b"Traceback" not in stderr
    # the enriched copy went into the store intact: DuckDB reads it, counts match the stream
    enriched = (tmp_path / "enriched").read_bytes()
    count = arrow_table(enriched).num_rows if fmt == "arrow" else len(ndjson_records(enriched))
    assert count == 30_000
    [(rows,)] = duckdb.sql(
        f"select count(*) from read_parquet('{store}/**/*.parquet', hive_partitioning=true, "
        "union_by_name=true)"
    ).fetchall()
    assert rows == count
    [(vwaps, smas)] = duckdb.sql(
        f"select count(vwap), count(sma_20) from read_parquet("
        f"'{store}/type=trade/**/*.parquet', hive_partitioning=true, union_by_name=true)"
    ).fetchall()
    assert vwaps > 0 and smas > 0  # the indicator columns were stored too


def test_replay_from_the_store_gives_the_same_signals(tmp_path: Path) -> None:
    """store query | screen finds what the live pipeline found: the store is a backtest."""
    receipts, _, store = run_pipeline(tmp_path, "arrow", count=20_000)
    live = sorted((r["strategy"], r["symbol"], r["signal_ts"]) for r in receipts if r["channel"] == "console")
    env = child_env(TRADECLI_STATE_DIR=str(tmp_path / "replay-state"))
    script = (
        f"{' '.join(trade_argv('store', 'query', str(store), '--quiet'))}"
        f" | {' '.join(trade_argv('screen', '--quiet', '--format', 'ndjson'))}"
    )
    replay = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + script], capture_output=True, env=env, timeout=300
    )
    assert replay.returncode == 0, replay.stderr.decode()
    signals = ndjson_records(replay.stdout)
    replayed = sorted((s["strategy"], s["symbol"], s["timestamp"]) for s in signals)
    assert replayed == live
