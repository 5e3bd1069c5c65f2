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
from benchmarks.process import one_process


def _long_run(bench: Bench, events: int) -> None:
    """``ingest | store`` over many records, sampling the store's memory as it goes."""
    import os

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
    samples: list[tuple[float, float, float]] = []  # seconds, RSS, anonymous part of RSS (MB)
    while True:
        pid, status, usage = os.wait4(consumer.pid, os.WNOHANG)
        if pid:
            consumer.returncode = os.waitstatus_to_exitcode(status)
            break
        try:
            rss = watched.memory_info().rss / 2**20
            samples.append((time.perf_counter() - started, rss, _anonymous_mb(consumer.pid, rss)))
        except psutil.Error:
            pass
        time.sleep(0.25)
    producer.wait()
    elapsed = time.perf_counter() - started
    if consumer.returncode != 0:
        raise RuntimeError(f"store exited {consumer.returncode} on the long run")
    rss_series = [mb for _, mb, _ in samples] or [0.0]
    anon_series = [mb for _, _, mb in samples] or [0.0]
    marks = [
        rss_series[min(len(rss_series) - 1, int(len(rss_series) * f))] for f in (0.1, 0.25, 0.5, 0.75, 0.99)
    ]
    note = (
        "store RSS (MB) at 10/25/50/75/99% of the run: "
        + " / ".join(f"{m:.0f}" for m in marks)
        + f"; peak {max(rss_series):.0f} over {len(rss_series)} samples (ingest and store run side by side)"
        + "\n             highest RSS in each tenth of the run: "
        + " / ".join(f"{m:.0f}" for m in _tenths(rss_series))
        + "; of it anonymous (heap, not page cache or libraries): "
        + " / ".join(f"{m:.0f}" for m in _tenths(anon_series))
        + f"\n             store CPU {usage.ru_utime + usage.ru_stime:.2f} s: "
        + f"{events / (usage.ru_utime + usage.ru_stime):,.0f} records per CPU-second"
    )
    bench.record(
        "store",
        f"long run: sim -> store, {events:,} records",
        events,
        elapsed,
        {"store": max(rss_series)},
        note,
    )
    shutil.rmtree(store_dir, ignore_errors=True)


def _anonymous_mb(pid: int, fallback: float) -> float:
    """RssAnon: the process's own memory, without mapped files (its libraries, the WAL segment a
    roll reads back), which the kernel can drop and reread."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return fallback


def _tenths(series: list[float]) -> list[float]:
    """The highest value in each tenth of a series: flat when nothing grows."""
    n = len(series)
    return (
        [max(series[i * n // 10 : max((i + 1) * n // 10, i * n // 10 + 1)]) for i in range(10)] if n else []
    )


def run(bench: Bench) -> None:
    n = bench.events
    sim = ["ingest", "--seed", "1", "--date", "2026-11-20", "--universe", "500", "--count", str(n), "--quiet"]
    arrow = bench.file("sim.arrows", trade(*sim, "--format", "arrow"))
    ndjson = bench.file("sim.ndjson", trade(*sim))
    target = bench.workdir / "store"
    write = trade("store", str(target), "--fsync", "batch", "--quiet")

    for label, source in (("Arrow", arrow), ("NDJSON", ndjson)):
        shutil.rmtree(target, ignore_errors=True)
        one_process(bench, "store", f"{label} file -> store --fsync batch", write, n, source)
    # a query has no empty case to take its start-up from: the first byte out stands for it
    query = ["store", "query", str(target), "--quiet"]
    one_process(
        bench,
        "store",
        "store query -> Arrow (time-ordered replay)",
        trade(*query, "--format", "arrow"),
        n,
        None,
        stream=True,
        idle=False,
    )
    one_process(bench, "store", "store query -> NDJSON", trade(*query), n, None, stream=True, idle=False)
    one_process(
        bench,
        "store",
        "store query --where 'price > 100' --columns symbol,timestamp,price",
        trade(*query, "--where", "price > 100", "--columns", "symbol,timestamp,price", "--format", "arrow"),
        n,
        None,
        idle=False,
        note="counts the records scanned, not the ones that matched",
    )
    shutil.rmtree(target, ignore_errors=True)
    _long_run(bench, n * 10)
