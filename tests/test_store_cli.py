"""trade store from the command line: options, output, errors, docs (in-process and real processes)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from conftest import ROOT, arrow_table, invoke, ndjson_records, run_trade, sim_args
from store_helpers import OPEN_NS, dataset_files, read_dataset

NS = 10**9

CORPUS = [
    {
        "type": "trade",
        "symbol": "AAPL",
        "timestamp": OPEN_NS + 3,
        "price": 230.5,
        "volume": 100,
        "source": "file",
        "conditions": [12, 37],
        "trade_id": "t1",
        "note": "X",
    },
    {
        "type": "quote",
        "symbol": "aapl",
        "timestamp": OPEN_NS + 1,
        "bid": 230.4,
        "ask": 230.6,
        "bid_size": 3,
        "ask_size": 0,
        "source": "file",
    },
    {
        "type": "trade",
        "symbol": "TSLA",
        "timestamp": "2026-11-20T14:30:00.000000002Z",
        "price": 250,
        "volume": 5,
        "source": "file",
    },
    {
        "type": "signal",
        "symbol": "GME",
        "timestamp": OPEN_NS + 4,
        "strategy": "gap_and_go",
        "side": "long",
        "confidence": 0.9,
        "message": "Gap & Go: GME gapped 12.0%",
        "extra": {"a": [1, 2]},
    },
    {
        "type": "bar",
        "symbol": "AAPL",
        "timestamp": OPEN_NS,
        "open": 1,
        "high": 2,
        "low": 0.5,
        "close": 1.5,
        "volume": 10,
        "end_ts": OPEN_NS + 60 * NS,
    },
    {
        "type": "trade",
        "symbol": "AAPL",
        "timestamp": OPEN_NS + 86_400 * NS,
        "price": 231.0,
        "volume": 7,
        "source": "file",
    },
]


def corpus_bytes(lines: list[dict[str, object]] | None = None) -> bytes:
    return b"".join(orjson.dumps(x) + b"\n" for x in (lines or CORPUS))


def test_store_help_documents_the_bare_form_and_every_subcommand() -> None:
    out = invoke(["store", "--help"]).stdout
    assert "Usage: trade store [OPTIONS] [PATH]" in out
    for sub in ("query", "stats", "compact", "prune"):
        assert re.search(rf"^\s+{sub}\s+\S", out, re.M), sub


@pytest.mark.parametrize("sub", ["query", "stats", "compact", "prune"])
def test_every_subcommand_option_is_in_its_man_page(sub: str) -> None:
    page = (ROOT / "man" / f"trade-store-{sub}.1").read_text()
    help_text = invoke(["store", sub, "--help"]).stdout
    assert "Example:" in help_text
    for option in re.findall(r"(--[a-z][a-z0-9-]+)", help_text):
        assert option.replace("-", "\\-") in page, f"{option} is missing from trade-store-{sub}.1"
    assert f"trade store {sub}" in (ROOT / "README.md").read_text()


def test_write_then_query_round_trip_in_ndjson(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    result = invoke(["store", store], input=corpus_bytes())
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert re.search(r"6 in, 0 out, 0 rejected, 6 stored, \d+ files", result.stderr)
    back = invoke(["store", "query", store])
    assert back.exit_code == 0, back.stderr
    got = ndjson_records(back.stdout_bytes)
    assert [r["timestamp"] for r in got] == sorted(r["timestamp"] for r in got)
    expected = ndjson_records(
        invoke(["ingest", "--source", "file", "-", "-q"], input=corpus_bytes()).stdout_bytes
    )
    for record in expected:
        record.pop("recv_ts")

    def key(r: dict[str, object]) -> bytes:
        return orjson.dumps(r, option=orjson.OPT_SORT_KEYS)

    assert sorted(got, key=key) == sorted(expected, key=key)


def test_query_in_arrow_keeps_types(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    invoke(["store", store, "--format", "arrow"], input=corpus_bytes())
    table = arrow_table(invoke(["store", "query", store, "--format", "arrow"]).stdout_bytes)
    assert table.schema.field("timestamp").type == pa.timestamp("ns", tz="UTC")
    assert table.schema.field("symbol").type == pa.dictionary(pa.int32(), pa.string())
    assert table.schema.field("conditions").type == pa.list_(pa.int64())
    assert table.schema.field("end_ts").type == pa.timestamp("ns", tz="UTC")
    assert table.num_rows == len(CORPUS)


def test_query_options(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    invoke(["store", store], input=corpus_bytes())

    def q(*args: str) -> list[dict[str, object]]:
        result = invoke(["store", "query", store, *args, "-q"])
        assert result.exit_code == 0, result.stderr
        return ndjson_records(result.stdout_bytes)

    assert {r["type"] for r in q("--type", "trades,bar")} == {"trade", "bar"}
    assert {r["symbol"] for r in q("--symbols", "aapl")} == {"AAPL"}
    assert len(q("--date", "2026-11-21")) == 1
    assert len(q("--date", "2026-11-20..2026-11-21")) == 6
    assert len(q("--from", "2026-11-20T09:30:00.000000002", "--to", "2026-11-20T09:30:00.000000004")) == 2
    assert len(q("--from", "2026-11-20T14:30Z", "--to", "2026-11-20")) == 5  # a date alone: through that day
    assert q("--columns", "symbol,price", "--type", "trade", "--date", "2026-11-21") == [
        {"symbol": "AAPL", "price": 231.0}
    ]
    assert [r["symbol"] for r in q("--where", 'price >= 231 or symbol == "GME"')] == ["TSLA", "GME", "AAPL"]
    assert q("--where", "confidence > 0.5", "--columns", "strategy") == [{"strategy": "gap_and_go"}]


def test_query_usage_errors_exit_2(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    invoke(["store", store], input=corpus_bytes())
    for args, text in [
        (["--where", "nope > 1"], "unknown column 'nope'"),
        (["--where", "__import__('os')"], "only abs(), isnull(), notnull() and ts() may be called"),
        (["--where", "price >"], "syntax error"),
        (["--columns", "price,nope"], "unknown column 'nope'"),
        (["--from", "soon"], "not a time"),
        (["--date", "2026-13-01"], "not a date"),
        (["--speed", "0"], "greater than 0"),
        (["--type", "a/b"], "not a record type"),
    ]:
        result = invoke(["store", "query", store, *args])
        assert result.exit_code == 2, (args, result.stderr)
        assert text in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_write_usage_errors(tmp_path: Path) -> None:
    for args, hint in [
        (["--fsync", "sometimes"], "--fsync"),
        (["--fsync", "interval:0s"], "--fsync"),
        (["--roll-interval", "0s"], "--roll-interval"),
        (["--roll-rows", "0"], "--roll-rows"),
    ]:
        result = invoke(["store", str(tmp_path), *args], input=b"")
        assert result.exit_code == 2, args
        assert hint in result.stderr


@pytest.mark.parametrize(
    "sub",
    [[], ["query", "--format", "arrow"], ["query"], ["stats"], ["compact"], ["prune", "--dry-run"]],
)
def test_every_store_command_sets_its_process_defaults_unless_the_user_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sub: list[str]
) -> None:
    """Arrow's jemalloc pool where pyarrow has one, except for a replay to NDJSON."""
    try:
        pa.jemalloc_memory_pool()
        pool = "jemalloc"
    except NotImplementedError:
        pool = "system"
    if sub == ["query"]:
        pool = "system"  # as it was
    store = str(tmp_path / "s")
    before = pa.default_memory_pool()
    try:
        pa.set_memory_pool(pa.system_memory_pool())
        monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
        assert invoke(["store", *sub, store, "-q"], input=b"").exit_code == 0
        assert pa.default_memory_pool().backend_name == pool
        pa.set_memory_pool(pa.system_memory_pool())
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "system")
        assert invoke(["store", *sub, store, "-q"], input=b"").exit_code == 0
        assert pa.default_memory_pool().backend_name == "system"
    finally:
        pa.set_memory_pool(before)


def test_bad_records_are_reported_and_the_rest_stored(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    errors = tmp_path / "errors.ndjson"
    lines = [
        orjson.dumps({"type": "trade", "symbol": "X", "timestamp": OPEN_NS, "price": 1.0, "lot": 4}),
        b"not json",
        orjson.dumps({"type": "trade", "symbol": "X", "timestamp": OPEN_NS + 1, "price": -3}),
        orjson.dumps({"type": "trade", "symbol": "X", "timestamp": OPEN_NS + 2, "price": 1.0, "lot": "many"}),
        orjson.dumps({"type": "../escape", "symbol": "X", "timestamp": OPEN_NS + 3}),
        orjson.dumps({"type": "trade", "symbol": "X", "timestamp": OPEN_NS + 4, "price": 2.0}),
    ]
    result = invoke(["store", store, "--errors", str(errors)], input=b"\n".join(lines) + b"\n")
    assert result.exit_code == 0
    assert "line 2: not valid JSON" in result.stderr
    assert "field 'lot' is \"many\", expected int64" in result.stderr
    assert "expected a record type" in result.stderr
    assert "6 in, 0 out, 4 rejected, 2 stored" in result.stderr
    kept = [orjson.loads(x) for x in errors.read_bytes().splitlines()]
    assert len(kept) == 4
    (lot,) = [k for k in kept if k["field"] == "lot"]
    assert lot["record"]["lot"] == "many" and lot["record"]["timestamp"] == OPEN_NS + 2
    assert read_dataset(tmp_path / "s").num_rows == 2
    strict = invoke(["store", str(tmp_path / "t"), "--strict"], input=b"\n".join(lines) + b"\n")
    assert strict.exit_code == 65
    assert read_dataset(tmp_path / "t").num_rows == 1  # what came before the bad line is kept


def test_receipts_name_each_published_file(tmp_path: Path) -> None:
    store = tmp_path / "s"
    result = invoke(["store", str(store), "--receipts"], input=corpus_bytes())
    receipts = ndjson_records(result.stdout_bytes)
    assert len(receipts) == len(dataset_files(store))
    for r in receipts:
        assert r["type"] == "receipt"
        assert Path(str(r["path"])).exists()
        assert r["bytes"] == Path(str(r["path"])).stat().st_size
    assert sum(int(r["rows"]) for r in receipts) == len(CORPUS)  # type: ignore[call-overload]
    arrow = invoke(["store", str(tmp_path / "t"), "--receipts", "--format", "arrow"], input=corpus_bytes())
    table = arrow_table(arrow.stdout_bytes)
    assert table.schema.field("first_ts").type == pa.timestamp("ns", tz="UTC")
    assert table.num_rows == len(receipts)


def test_default_path_and_environment(tmp_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert invoke(["store"], input=corpus_bytes()).exit_code == 0
    assert read_dataset(tmp_state / "data" / "tradecli" / "store").num_rows == len(CORPUS)
    monkeypatch.setenv("TRADE_STORE", str(tmp_state / "env"))
    assert invoke(["store"], input=corpus_bytes()).exit_code == 0
    assert read_dataset(tmp_state / "env").num_rows == len(CORPUS)
    monkeypatch.delenv("TRADE_STORE")
    config = tmp_state / "config" / "tradecli" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[store]\npath = "{tmp_state / "configured"}"\n')
    assert invoke(["store"], input=corpus_bytes()).exit_code == 0
    assert read_dataset(tmp_state / "configured").num_rows == len(CORPUS)
    assert invoke(["store", "write", str(tmp_state / "query")], input=corpus_bytes()).exit_code == 0
    assert read_dataset(tmp_state / "query").num_rows == len(CORPUS)


def test_stats_table_and_json(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    invoke(["store", store], input=corpus_bytes())
    table = invoke(["store", "stats", store])
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:6] == ["TYPE", "DATE", "FILES", "SMALL", "ROWS", "BYTES"]
    assert any(line.split()[:2] == ["trade", "2026-11-20"] for line in lines)
    assert "newest record: 2026-11-21 09:30:00.000 New York" in table.stdout
    report = json.loads(invoke(["store", "stats", store, "--format", "json"]).stdout)
    assert report["total"]["rows"] == len(CORPUS)
    assert report["types"]["trade"]["rows"] == 3
    assert report["newest_ts"] == OPEN_NS + 86_400 * NS
    assert report["newest_age_seconds"] > 0
    assert {(p["type"], p["date"]) for p in report["partitions"]} == {
        ("trade", "2026-11-20"),
        ("trade", "2026-11-21"),
        ("quote", "2026-11-20"),
        ("signal", "2026-11-20"),
        ("bar", "2026-11-20"),
    }
    only = json.loads(
        invoke(
            ["store", "stats", store, "--format", "json", "--type", "trade", "--date", "2026-11-21"]
        ).stdout
    )
    assert only["total"]["rows"] == 1
    assert invoke(["store", "stats", store, "--format", "yaml"]).exit_code == 2
    nothing = invoke(["store", "query", str(tmp_path / "none")])
    assert nothing.exit_code == 0 and nothing.stdout == ""
    assert "holds no stored records" in nothing.stderr
    other = invoke(["store", "query", store, "--type", "news"])
    assert "no stored records of type news (stored: bar, quote, signal, trade)" in other.stderr
    empty = json.loads(invoke(["store", "stats", str(tmp_path / "none"), "--format", "json"]).stdout)
    assert empty["total"]["rows"] == 0 and empty["newest_age_seconds"] is None


def test_compact_and_prune_from_the_command_line(tmp_path: Path) -> None:
    store = tmp_path / "s"
    for i in range(5):
        line = {"type": "trade", "symbol": "X", "timestamp": OPEN_NS + i, "price": 1.0 + i}
        assert invoke(["store", str(store)], input=orjson.dumps(line) + b"\n").exit_code == 0
    assert len(dataset_files(store)) == 5
    result = invoke(["store", "compact", str(store), "--date", "2026-11-20"])
    assert result.exit_code == 0, result.stderr
    assert "5 files merged into 1" in result.stderr
    (merged,) = dataset_files(store)
    assert re.fullmatch(r"part-\d+-\d+\.parquet", merged.name)
    old = {"type": "trade", "symbol": "X", "timestamp": "2015-01-02T15:00:00Z", "price": 1.0}
    invoke(["store", str(store)], input=orjson.dumps(old) + b"\n")
    dry = invoke(["store", "prune", str(store), "--older-than", "2555d", "--dry-run"])
    assert "would remove type=trade/date=2015-01-02" in dry.stderr
    assert read_dataset(store).num_rows == 6
    done = invoke(["store", "prune", str(store)])
    assert "removed 1 partitions" in done.stderr
    assert read_dataset(store).num_rows == 5
    assert invoke(["store", "prune", str(store), "--older-than", "1h"]).exit_code == 2


@pytest.mark.slow
def test_query_speed_paces_like_file_replay(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    lines = [
        {"type": "trade", "symbol": "X", "timestamp": OPEN_NS + i * NS // 2, "price": 1.0} for i in range(5)
    ]
    quote = {"type": "quote", "symbol": "X", "timestamp": OPEN_NS + 1, "bid": 1.0, "ask": 1.1}
    invoke(["store", store], input=corpus_bytes(lines))  # type: ignore[arg-type]
    started = time.monotonic()
    paced = run_trade("store", "query", store, "--type", "trade", "--speed", "2", "-q")
    elapsed = time.monotonic() - started
    assert len(ndjson_records(paced.stdout)) == 5
    assert elapsed >= 0.9  # 2 s of recorded time at twice the pace
    started = time.monotonic()
    picked = run_trade("store", "query", store, "--speed", "4", "--columns", "symbol,price", "-q")
    assert time.monotonic() - started >= 0.4  # paced by the times it does not print
    assert ndjson_records(picked.stdout) == [{"symbol": "X", "price": 1.0}] * 5
    invoke(["store", store], input=corpus_bytes([quote]))  # type: ignore[arg-type]
    mixed = run_trade("store", "query", store, "--speed", "100", "--columns", "symbol,price", "-q")
    assert mixed.returncode == 0, mixed.stderr  # a quote has no price: it gives what it has
    assert (
        ndjson_records(mixed.stdout)
        == [{"symbol": "X", "price": 1.0}, {"symbol": "X"}] + [{"symbol": "X", "price": 1.0}] * 4
    )


def test_store_reads_an_arrow_pipe_and_survives_head(tmp_path: Path) -> None:
    store = str(tmp_path / "s")
    produced = run_trade(*sim_args(3000, "--format", "arrow", "-q"))
    result = run_trade("store", store, input=produced.stdout)
    assert result.returncode == 0, result.stderr
    assert read_dataset(Path(store)).num_rows == 3000
    import subprocess

    from conftest import child_env, trade_argv

    query = subprocess.Popen(
        trade_argv("store", "query", store), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env()
    )
    assert query.stdout is not None
    query.stdout.readline()
    query.stdout.close()
    _, err = query.communicate(timeout=60)
    assert query.returncode == 141 and err == b""


def test_a_password_in_the_store_uri_is_never_shown(tmp_path: Path) -> None:
    from tradecli.tickstore.backend import mask_uri

    assert mask_uri("s3://key:s3cr3t%2Fpw@bkt/p?x=1") == ("s3://key:***@bkt/p?x=1", "s3cr3t/pw")
    assert mask_uri("s3://bkt/p") == ("s3://bkt/p", None)
    result = invoke(["store", "stats", "s3://key:s3cr3tpw@bkt/p?bogus=1"])
    assert result.exit_code == 2
    assert "s3://key:***@bkt/p" in result.stderr
    assert "s3cr3tpw" not in result.stderr + result.stdout
