"""store: sustained writes (Arrow and NDJSON, --fsync batch), query streaming, memory on a long run.

The issue's targets: >= 1,000,000 records/s written from Arrow with --fsync batch, >= 300,000/s
from NDJSON, >= 2,000,000/s streamed by ``query``, and memory that stays flat over a
10-million-record run (here 10 x --events, sampled while it runs).
"""

from __future__ import annotations

import shutil
import subprocess
import time

from benchmarks.harness import Bench, trade


def _long_run(bench: Bench, events: int) -> None:
    """``ingest | store`` over many records, sampling the store's memory as it goes."""
    import psutil

    store_dir = bench.workdir / "store-long"
    shutil.rmtree(store_dir, ignore_errors=True)
    bench.log(f"  store: long run of {events:,} records ...")
    sim = ["ingest", "--seed", "2", "--date", "2026-11-20", "--universe", "500", "--count", str(events)]
    started = time.perf_counter()
    producer = subprocess.Popen(
        trade(*sim, "--format", "arrow", "--quiet"), stdout=subprocess.PIPE, env=bench.env()
    )
    consumer = subprocess.Popen(
        trade("store", str(store_dir), "--quiet"),
        stdin=producer.stdout,
        env=bench.env(),
        stderr=subprocess.DEVNULL,
    )
    assert producer.stdout is not None
    producer.stdout.close()
    watched = psutil.Process(consumer.pid)
    samples: list[tuple[float, float]] = []
    while consumer.poll() is None:
        try:
            samples.append((time.perf_counter() - started, watched.memory_info().rss / 2**20))
        except psutil.Error:
            break
        time.sleep(0.25)
    producer.wait()
    elapsed = time.perf_counter() - started
    if consumer.returncode != 0:
        raise RuntimeError(f"store exited {consumer.returncode} on the long run")
    rss = [mb for _, mb in samples] or [0.0]
    marks = [rss[min(len(rss) - 1, int(len(rss) * f))] for f in (0.1, 0.25, 0.5, 0.75, 0.99)]
    note = (
        "store RSS (MB) at 10/25/50/75/99% of the run: "
        + " / ".join(f"{m:.0f}" for m in marks)
        + f"; peak {max(rss):.0f} over {len(rss)} samples (ingest and store run side by side)"
    )
    bench.record(
        "store", f"long run: sim -> store, {events:,} records", events, elapsed, {"store": max(rss)}, note
    )
    shutil.rmtree(store_dir, ignore_errors=True)


def run(bench: Bench) -> None:
    n = bench.events
    sim = ["ingest", "--seed", "1", "--date", "2026-11-20", "--universe", "500", "--count", str(n), "--quiet"]
    arrow = bench.file("sim.arrows", trade(*sim, "--format", "arrow"))
    ndjson = bench.file("sim.ndjson", trade(*sim))
    target = bench.workdir / "store"

    shutil.rmtree(target, ignore_errors=True)
    bench.pipeline(
        "store",
        "Arrow file -> store --fsync batch",
        [trade("store", str(target), "--fsync", "batch", "--quiet")],
        n,
        stdin=arrow,
        names=["store"],
    )
    shutil.rmtree(target, ignore_errors=True)
    bench.pipeline(
        "store",
        "NDJSON file -> store --fsync batch",
        [trade("store", str(target), "--fsync", "batch", "--quiet")],
        n,
        stdin=ndjson,
        names=["store"],
    )
    bench.pipeline(
        "store",
        "store query -> Arrow (time-ordered replay of the whole store)",
        [trade("store", "query", str(target), "--format", "arrow", "--quiet")],
        n,
        names=["query"],
    )
    bench.pipeline(
        "store",
        "store query -> NDJSON",
        [trade("store", "query", str(target), "--quiet")],
        n,
        names=["query"],
    )
    bench.pipeline(
        "store",
        "store query --where 'price > 100' --columns symbol,timestamp,price",
        [
            trade(
                "store",
                "query",
                str(target),
                "--where",
                "price > 100",
                "--columns",
                "symbol,timestamp,price",
                "--format",
                "arrow",
                "--quiet",
            )
        ],
        n,
        names=["query"],
        note="events/s counts the records scanned, not the ones that matched",
    )
    shutil.rmtree(target, ignore_errors=True)
    _long_run(bench, n * 10)
