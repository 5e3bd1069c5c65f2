"""trade store under real conditions, on a local disk and on S3 (moto on loopback).

Real processes joined by real pipes: DuckDB reads the dataset while ``ingest | store`` writes it;
``kill -9`` lands at random moments and the restarted store must hold exactly what was durable
on disk, each record once; SIGTERM seals; what is stored comes back from ``query``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from conftest import SESSION_DATE, arrow_table, child_env, ndjson_records, trade_argv
from store_helpers import row_keys

pytestmark = [pytest.mark.slow, pytest.mark.pipes]

KEY_ACCESS, KEY_SECRET = "testing-key", "testing-secret-value"


@dataclass
class Target:
    """A store location, and independent ways to look at it (pyarrow and DuckDB)."""

    kind: str
    uri: str
    fs: pafs.FileSystem
    root: str  # path of the dataset inside ``fs``
    wal_dir: Path
    env: dict[str, str]
    duck: duckdb.DuckDBPyConnection
    glob: str
    extra: dict[str, Any] = field(default_factory=dict)

    def names(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True, allow_not_found=True))
        return sorted(i.path[len(self.root) + 1 :] for i in infos if i.type == pafs.FileType.File)

    def parquet_files(self) -> list[str]:
        return [n for n in self.names() if n.endswith(".parquet") and n.startswith("type=")]

    def read(self) -> pa.Table:
        tables = []
        for name in self.parquet_files():
            with self.fs.open_input_file(f"{self.root}/{name}") as handle:
                table = pq.read_table(handle)
            rtype = name.split("/", 1)[0].split("=", 1)[1]
            tables.append(table.append_column("type", pa.array([rtype] * table.num_rows)))
        if not tables:
            return pa.table({"type": pa.array([], pa.string())})
        return pa.concat_tables(tables, promote_options="permissive")

    def duckdb_counts(self) -> dict[str, int]:
        try:
            rows = self.duck.execute(
                f"SELECT type, count(*) FROM read_parquet('{self.glob}', hive_partitioning=true, "
                "union_by_name=true) GROUP BY type"
            ).fetchall()
        except duckdb.IOException as err:
            if "No files found" in str(err):  # before the first file is published
                return {}
            raise
        return {str(t): int(n) for t, n in rows}

    def wal_segments(self) -> list[Path]:
        return sorted(self.wal_dir.glob("*.arrows")) if self.wal_dir.exists() else []


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"{host}:{port}"
    finally:
        server.stop()


def _duck_over(fs: pafs.FileSystem, protocol: str) -> duckdb.DuckDBPyConnection:
    """DuckDB reading through pyarrow's filesystem (its own httpfs extension is a download away)."""
    from fsspec.implementations.arrow import ArrowFSWrapper

    class Wrapper(ArrowFSWrapper):  # type: ignore[misc]
        @classmethod
        def _strip_protocol(cls, path: str) -> str:
            path = path[len(protocol) + 3 :] if path.startswith(protocol + "://") else path
            return path.rstrip("/")

    Wrapper.protocol = protocol
    connection = duckdb.connect()
    connection.register_filesystem(Wrapper(fs))
    return connection


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    env = child_env(XDG_STATE_HOME=str(tmp_path / "state"), XDG_DATA_HOME=str(tmp_path / "data"))
    if request.param == "local":
        root = tmp_path / "store"
        target = Target(
            "local",
            str(root),
            pafs.LocalFileSystem(),
            str(root),
            root / "_tradecli" / "wal",
            env,
            duckdb.connect(),
            f"{root}/**/*.parquet",
        )
    else:
        endpoint = request.getfixturevalue("moto")
        fs = pafs.S3FileSystem(
            endpoint_override=endpoint,
            scheme="http",
            access_key=KEY_ACCESS,
            secret_key=KEY_SECRET,
            region="us-east-1",
            allow_bucket_creation=True,
        )
        bucket = f"ticks-{os.getpid()}-{random.randrange(10**9)}"
        fs.create_dir(bucket)
        env.update(
            AWS_ACCESS_KEY_ID=KEY_ACCESS, AWS_SECRET_ACCESS_KEY=KEY_SECRET, AWS_DEFAULT_REGION="us-east-1"
        )
        uri = f"s3://{bucket}/live?endpoint_override={endpoint}&scheme=http&region=us-east-1"
        target = Target(
            "s3",
            uri,
            fs,
            f"{bucket}/live",
            tmp_path / "wal",
            env,
            _duck_over(fs, "mots3"),
            f"mots3://{bucket}/live/**/*.parquet",
        )
    try:
        yield target
    finally:
        target.duck.close()


def _store_args(target: Target, *extra: str) -> list[str]:
    args = ["store", target.uri, *extra]
    if target.kind == "s3":
        args += ["--wal-dir", str(target.wal_dir)]
    return args


def _logged_bytes(target: Target) -> int:
    """Bytes in the write-ahead log now (segments come and go as they roll)."""
    total = 0
    for path in target.wal_segments():
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def _pipeline(
    ingest: list[str], store: list[str], env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    producer = subprocess.Popen(trade_argv(*ingest), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    consumer = subprocess.Popen(
        trade_argv(*store), stdin=producer.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert producer.stdout is not None
    producer.stdout.close()  # the store holds the read end now
    return producer, consumer


IDENTITY = (
    "type",
    "symbol",
    "timestamp",
    "price",
    "volume",
    "trade_id",
    "bid",
    "ask",
    "bid_size",
    "ask_size",
)


def _keys(table: pa.Table) -> pa.Array:
    """One identity per record, from its market fields (not recv_ts: a replay stamps it anew)."""
    if table.num_rows == 0:
        return pa.array([], pa.string())
    parts = []
    for name in IDENTITY:
        if name not in table.column_names:
            continue
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.int64())
        parts.append(col.cast(pa.string()).fill_null(""))
    return pc.binary_join_element_wise(*parts, "|").combine_chunks()


@functools.cache
def _sim_bytes(seed: int, count: int, fmt: str = "arrow") -> bytes:
    return subprocess.run(
        trade_argv(
            "ingest",
            "--seed",
            str(seed),
            "--date",
            SESSION_DATE,
            "--count",
            str(count),
            "--format",
            fmt,
            "-q",
        ),
        capture_output=True,
        env=child_env(),
        check=True,
    ).stdout


def _sim_stream(count: int, seed: int) -> pa.Table:
    """What `trade ingest --seed SEED --date SESSION_DATE --count COUNT` writes, computed here."""
    return arrow_table(_sim_bytes(seed, count))


def _wal_records(target: Target) -> pa.Table:
    """The whole batches in the WAL segments on disk, read with plain pyarrow."""
    tables = []
    for path in target.wal_segments():
        data = path.read_bytes()
        source = io.BytesIO(data)
        while source.tell() < len(data):
            try:
                reader = pa.ipc.open_stream(source)
            except (pa.ArrowInvalid, OSError):
                break
            broken = False
            while True:
                try:
                    tables.append(pa.Table.from_batches([reader.read_next_batch()]))
                except StopIteration:
                    break
                except (pa.ArrowInvalid, OSError):
                    broken = True
                    break
            if broken:
                break
    if not tables:
        return pa.table({"type": pa.array([], pa.string())})
    return pa.concat_tables(tables, promote_options="permissive")


def _assert_clean(target: Target) -> None:
    names = target.names()
    assert not [n for n in names if n.endswith(".tmp")], names
    assert not target.wal_segments()
    for name in target.parquet_files():  # every file whole: PAR1 at both ends
        with target.fs.open_input_file(f"{target.root}/{name}") as handle:
            data = handle.read()
        assert data[:4] == b"PAR1" and data[-4:] == b"PAR1", name


# -- DuckDB while writing ----------------------------------------------------------------------


def test_duckdb_reads_while_store_writes_and_counts_match_receipts(target: Target) -> None:
    producer, consumer = _pipeline(
        [
            "ingest",
            "--rate",
            "15000",
            "--duration",
            "4s",
            "--universe",
            "60",
            "--seed",
            "5",
            "--format",
            "arrow",
        ],
        _store_args(target, "--roll-interval", "0.15s", "--receipts", "--format", "ndjson"),
        target.env,
    )
    receipts: list[dict[str, Any]] = []

    def collect() -> None:
        assert consumer.stdout is not None
        for line in consumer.stdout:
            receipts.append(orjson.loads(line))

    reader = threading.Thread(target=collect)
    reader.start()
    observed: list[dict[str, int]] = []
    in_flight = re.compile(
        r"^type=[^/]+/date=[^/]+/(part-\d+(-\d+)?\.parquet|\.part-\d+(-\d+)?\.parquet\.tmp)$"
    )
    while consumer.poll() is None:
        observed.append(target.duckdb_counts())  # must never fail on a half-written file
        names = [n for n in target.names() if n.startswith("type=")]
        assert all(in_flight.match(n) for n in names), names  # hidden, and not *.parquet, while written
        if names:  # pyarrow's dataset discovery skips the in-flight files too
            dataset = ds.dataset(target.root, filesystem=target.fs, format="parquet", partitioning="hive")
            assert dataset.count_rows() >= sum(observed[-1].values())
        time.sleep(0.05)
    reader.join()
    producer.wait(timeout=60)
    _, err = consumer.communicate(timeout=60)
    assert consumer.returncode == 0, err
    assert len([o for o in observed if o]) >= 3, "DuckDB never saw the store while it was being written"
    prefixes: dict[str, set[int]] = {}
    running: dict[str, int] = {}
    for r in receipts:
        rtype = r["record_type"]
        running[rtype] = running.get(rtype, 0) + r["rows"]
        prefixes.setdefault(rtype, {0}).add(running[rtype])
    for counts in observed:  # each directory listing saw a prefix of that type's publications
        for rtype, count in counts.items():
            assert count in prefixes[rtype], (rtype, count, sorted(prefixes[rtype]))
    stored = int(err.decode().rsplit(" stored", 1)[0].rsplit(", ", 1)[1].replace(",", ""))
    assert target.duckdb_counts() == running
    kinds = target.duck.execute(
        f"SELECT typeof(date), typeof(type) FROM read_parquet('{target.glob}', hive_partitioning=true, "
        "union_by_name=true) LIMIT 1"
    ).fetchall()
    assert kinds == [("DATE", "VARCHAR")]  # Hive partitioning gives the date back as a DATE
    assert sum(running.values()) == stored > 10_000
    _assert_clean(target)


# -- kill -9 -----------------------------------------------------------------------------------


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(target: Target, tmp_path: Path) -> None:
    rng = random.Random(20261124 + (target.kind == "s3"))
    runs = 8 if target.kind == "local" else 4
    count = 60_000
    session = tmp_path / "session.arrows"  # about 70 s of a simulated open, replayed at 40x
    session.write_bytes(_sim_bytes(11, count))
    stream_keys = _keys(arrow_table(session.read_bytes()))
    assert len(set(stream_keys.to_pylist())) == count
    midway = 0
    for run in range(runs):
        target.fs.delete_dir_contents(target.root, missing_dir_ok=True)
        roll_rows = rng.choice([500, 2_000, 10_000])
        producer, consumer = _pipeline(
            ["ingest", "--source", "file", str(session), "--speed", "40", "--format", "arrow"],
            _store_args(
                target, "--roll-rows", str(roll_rows), "--roll-interval", rng.choice(["0.05s", "0.3s"])
            ),
            target.env,
        )
        # kill while records flow, whatever the machine's load: once the log has taken some, and
        # before the replay (about 1.75 s) can have ended
        _wait_for(lambda: _logged_bytes(target) > 4096, timeout=30)
        time.sleep(rng.uniform(0.0, 1.2))
        consumer.send_signal(signal.SIGKILL)
        producer.send_signal(signal.SIGKILL)
        consumer.wait(timeout=30)
        producer.wait(timeout=30)
        if run % 3 == 2:  # now kill a recovery halfway too
            again = subprocess.Popen(
                trade_argv(*_store_args(target)),
                stdin=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=target.env,
            )
            time.sleep(rng.uniform(0.3, 0.9))
            again.send_signal(signal.SIGKILL)
            again.wait(timeout=30)
        # what is durable on disk now: published files plus whole batches in the WAL
        durable = set(_keys(target.read()).to_pylist()) | set(_keys(_wal_records(target)).to_pylist())
        recovery = subprocess.run(
            trade_argv(*_store_args(target)),
            stdin=subprocess.DEVNULL,
            env=target.env,
            capture_output=True,
            timeout=120,
        )
        assert recovery.returncode == 0, recovery.stderr
        keys = _keys(target.read()).to_pylist()
        assert len(keys) == len(set(keys)), f"run {run}: a record was stored twice"
        assert set(keys) == durable, f"run {run}: recovery lost or invented records"
        assert set(keys) == set(stream_keys.slice(0, len(keys)).to_pylist()), (
            f"run {run}: not a prefix of the input"
        )
        assert sum(target.duckdb_counts().values()) == len(keys)
        _assert_clean(target)
        midway += 0 < len(keys) < count
    assert midway >= runs // 2, "the kills did not land while records were flowing"


# -- SIGTERM -----------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_seals_and_publishes_what_is_in_hand(target: Target, signum: int) -> None:
    producer, consumer = _pipeline(
        ["ingest", "--rate", "5000", "--universe", "20", "--format", "arrow"],
        _store_args(target, "--roll-interval", "1h", "--roll-rows", "10000000"),
        target.env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(p.stat().st_size > 20_000 for p in target.wal_segments()):
        time.sleep(0.05)
    assert target.parquet_files() == []  # nothing rolled yet: everything is in the open segment
    consumer.send_signal(signum)
    _, err = consumer.communicate(timeout=60)
    producer.kill()
    producer.wait()
    assert consumer.returncode == 128 + signum, err
    text = err.decode()
    assert "Traceback" not in text
    stored = int(text.rsplit(" stored", 1)[0].rsplit(", ", 1)[1].replace(",", ""))
    assert stored > 0
    assert target.read().num_rows == stored
    assert sum(target.duckdb_counts().values()) == stored
    _assert_clean(target)


# -- round trip --------------------------------------------------------------------------------


def test_what_is_stored_comes_back_from_query(target: Target) -> None:
    sim = _sim_bytes(2, 20000, "ndjson")
    odd = [
        {
            "type": "signal",
            "symbol": "GME",
            "timestamp": 1_795_185_000_000_000_001,
            "strategy": "gap_and_go",
            "confidence": 0.75,
            "nested": {"a": [1, 2], "b": "x"},
            "flags": [True, False],
        },
        {
            "type": "alert",
            "symbol": "AMC",
            "timestamp": 1_795_185_000_000_000_002,
            "channel": "discord",
            "status": "sent",
            "attempts": 1,
            "latency_ms": 12.5,
        },
        {
            "type": "trade",
            "symbol": "ZZZ",
            "timestamp": 1_795_271_400_000_000_000,
            "price": 1.5,
            "volume": 1,
            "note": "next day",
            "conditions": [],
        },
    ]
    data = sim + b"".join(orjson.dumps(x) + b"\n" for x in odd)
    args = ["store", target.uri] if target.kind == "s3" else _store_args(target)  # S3: the default WAL place
    stored = subprocess.run(trade_argv(*args), input=data, capture_output=True, env=target.env, timeout=120)
    assert stored.returncode == 0, stored.stderr
    if target.kind == "s3":
        wal_root = Path(target.env["XDG_STATE_HOME"]) / "tradecli" / "store" / "wal"
        assert [p.name for p in wal_root.iterdir()], (
            "the WAL of an S3 store lives in the local state directory"
        )
    expected = ndjson_records(
        subprocess.run(
            trade_argv("ingest", "--source", "file", "-", "-q"),
            input=data,
            capture_output=True,
            env=target.env,
        ).stdout
    )
    for record in expected:
        record.pop("recv_ts", None)
    got = subprocess.run(
        trade_argv("store", "query", target.uri, "-q"), capture_output=True, env=target.env, timeout=120
    )
    assert got.returncode == 0, got.stderr
    records = ndjson_records(got.stdout)
    for record in records:
        record.pop("recv_ts", None)

    def key(r: dict[str, Any]) -> bytes:
        return orjson.dumps(r, option=orjson.OPT_SORT_KEYS)

    assert sorted(map(key, records)) == sorted(map(key, expected))
    times = [r["timestamp"] for r in records]
    assert times == sorted(times)
    arrow = subprocess.run(
        trade_argv("store", "query", target.uri, "--format", "arrow", "-q"),
        capture_output=True,
        env=target.env,
        timeout=120,
    )
    table = arrow_table(arrow.stdout)
    original = arrow_table(
        subprocess.run(
            trade_argv("ingest", "--source", "file", "-", "--format", "arrow", "-q"),
            input=data,
            capture_output=True,
            env=target.env,
        ).stdout
    )
    for name in original.column_names:
        if name != "recv_ts":
            assert table.schema.field(name).type == original.schema.field(name).type, name
    assert row_keys(table.drop_columns(["recv_ts"])) == row_keys(original.drop_columns(["recv_ts"]))


def test_stats_compact_and_prune_work_on_the_store(target: Target) -> None:
    # four Arrow streams of 3,000 records: four segments, eight files
    sim = b"".join(_sim_bytes(seed, 3000) for seed in range(4))
    done = subprocess.run(
        trade_argv(*_store_args(target, "--roll-rows", "3000")),
        input=sim,
        capture_output=True,
        env=target.env,
    )
    assert done.returncode == 0, done.stderr
    old = orjson.dumps({"type": "trade", "symbol": "OLD", "timestamp": "2012-05-01T15:00:00Z", "price": 9.0})
    subprocess.run(
        trade_argv(*_store_args(target)), input=old + b"\n", env=target.env, check=True, capture_output=True
    )
    stats = subprocess.run(
        trade_argv("store", "stats", target.uri, "--format", "json"),
        capture_output=True,
        env=target.env,
        check=True,
    )
    report = orjson.loads(stats.stdout)
    assert report["total"]["rows"] == 12_001
    assert report["total"]["files"] == 9
    compacted = subprocess.run(
        trade_argv("store", "compact", target.uri), capture_output=True, env=target.env
    )
    assert compacted.returncode == 0, compacted.stderr
    assert "8 files merged into 2" in compacted.stderr.decode()
    pruned = subprocess.run(trade_argv("store", "prune", target.uri), capture_output=True, env=target.env)
    assert pruned.returncode == 0, pruned.stderr
    assert sum(target.duckdb_counts().values()) == 12_000
    assert len(target.parquet_files()) == 2
    _assert_clean(target)
