"""alert: the console and dry-run paths, deliveries to a loopback Discord, and the added latency.

* console and ``--dry-run`` (Discord, Slack, webhook; e-mail on fewer alerts): signals from a
  file, as fast as they go (target >= 50,000 alerts/s), with the CPU seconds they took (the wall
  clock says little on a busy machine), and a long dry run sampling memory (it must stay flat);
* deliveries per second to the loopback Discord stand-in (no rate limit), for two burst sizes so
  the peak RSS shows whether memory stays bounded (target >= 500/s);
* the latency added between a signal written into ``trade alert``'s stdin and the webhook request
  arriving at a loopback receiver, at 100 alerts/s (target p99 < 5 ms).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from benchmarks.harness import GNU_TIME, ROOT, Bench, trade

TS = 1_763_649_000_000_000_000


def _signal(i: int) -> dict[str, Any]:
    return {
        "type": "signal",
        "symbol": f"S{i % 500}",
        "timestamp": TS + i * 1_000_000,
        "strategy": "gap_and_go",
        "side": "long" if i % 3 else "short",
        "signal_type": "gap_and_go_continuation",
        "confidence": 0.5 + (i % 50) / 100,
        "entry_price": 10.0 + i % 7,
        "stop_loss": 9.5,
        "target": 12.0,
        "rr_ratio": 4.0,
        "message": f"Gap & Go: S{i % 500} gapped 12.3% with 4.2x volume",
        "source": "sim",
    }


def _signals(bench: Bench, count: int) -> Path:
    path = bench.workdir / f"signals-{count}.ndjson"
    if not path.exists():
        with open(path, "wb") as out:
            for start in range(0, count, 100_000):
                stop = min(count, start + 100_000)
                out.write(b"".join(orjson.dumps(_signal(i)) + b"\n" for i in range(start, stop)))
    return path


def _timed(bench: Bench, case: str, args: list[str], events: int, stdin: Path) -> None:
    """One ``trade alert`` process: wall clock, CPU seconds (user + system) and peak RSS."""
    bench.log(f"  alert: {case} ...")
    usage_file = bench.workdir / "alert-time.txt"
    argv = trade("alert", *args)
    timed = os.path.exists(GNU_TIME)
    if timed:
        argv = [GNU_TIME, "-f", "%U %S %M", "-o", str(usage_file), *argv]
    with open(stdin, "rb") as source:
        started = time.perf_counter()
        proc = subprocess.run(
            argv, stdin=source, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=bench.env()
        )
        elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"alert/{case}: exit {proc.returncode}")
    if timed:
        user, system, peak_kb = usage_file.read_text().split()[-3:]
        cpu, peak = float(user) + float(system), int(peak_kb) / 1024
        note = f"CPU {cpu:.2f} s: {events / cpu:,.0f} alerts per CPU-second"
        bench.record("alert", case, events, elapsed, {"alert": round(peak, 1)}, note)
    else:
        bench.record("alert", case, events, elapsed)


def _long_run(bench: Bench, events: int) -> None:
    """A long dry run, sampling the stage's memory as it goes: it must not grow with the run."""
    import psutil

    path = _signals(bench, events)
    bench.log(f"  alert: long dry run of {events:,} alerts ...")
    with open(path, "rb") as source:
        started = time.perf_counter()
        proc = subprocess.Popen(
            trade("alert", "--dry-run", "--to", "discord", "--quiet"),
            stdin=source,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=bench.env(),
        )
        watched = psutil.Process(proc.pid)
        samples: list[float] = []
        while proc.poll() is None:
            try:
                samples.append(watched.memory_info().rss / 2**20)
            except psutil.Error:
                break
            time.sleep(0.1)
        elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"alert long dry run exited {proc.returncode}")
    rss = samples or [0.0]
    marks = [rss[min(len(rss) - 1, int(len(rss) * f))] for f in (0.1, 0.25, 0.5, 0.75, 0.99)]
    note = (
        "RSS (MB) at 10/25/50/75/99% of the run: "
        + " / ".join(f"{m:.0f}" for m in marks)
        + f"; peak {max(rss):.0f} over {len(rss)} samples"
    )
    bench.record(
        "alert", f"--dry-run --to discord, {events:,} alerts", events, elapsed, {"alert": max(rss)}, note
    )


@contextmanager
def _environment(**values: str) -> Any:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _standins() -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    import alert_standins

    return alert_standins


def run(bench: Bench) -> None:
    fast = min(bench.events, 200_000)
    path = _signals(bench, fast)
    _timed(bench, "console (stderr to /dev/null)", ["--quiet"], fast, path)
    for channel in ("discord", "slack", "webhook", "email"):
        _timed(bench, f"--dry-run --to {channel}", ["--dry-run", "--to", channel, "--quiet"], fast, path)
    _long_run(bench, min(bench.events, 1_000_000))
    standins = _standins()
    state = tempfile.mkdtemp(prefix="trade-bench-alert-")
    for count in (2_000, 20_000):  # ten times the alerts: the peak RSS should not follow
        burst = _signals(bench, count)
        with (
            standins.DiscordStandIn() as discord,
            _environment(DISCORD_WEBHOOK_URL=discord.url, TRADECLI_STATE_DIR=f"{state}/{count}"),
        ):
            result = bench.pipeline(
                "alert",
                f"--to discord, loopback stand-in, {count:,} alerts",
                [trade("alert", "--to", "discord", "--quiet")],
                count,
                stdin=burst,
            )
            result.note = f"deliveries/s; the stand-in accepted {len(discord.messages):,} messages"
    _latency(bench, standins, state)


def _latency(bench: Bench, standins: Any, state: str, rate: float = 100.0, count: int = 1_000) -> None:
    """Signal written to stdin -> webhook request at the receiver, both on CLOCK_MONOTONIC."""
    bench.log(f"  alert: latency at {rate:g} alerts/s ...")
    with standins.WebhookStandIn() as hook:
        env = bench.env() | {"TRADE_WEBHOOK_URL": hook.url, "TRADECLI_STATE_DIR": f"{state}/latency"}
        proc = subprocess.Popen(
            trade("alert", "--to", "webhook", "--quiet"),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert proc.stdin is not None
        time.sleep(1.0)  # start-up is not part of the added latency
        started = time.monotonic()
        for i in range(count):
            due = started + i / rate
            while (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            record = _signal(i) | {"bench_sent_ns": time.monotonic_ns()}
            proc.stdin.write(orjson.dumps(record) + b"\n")
            proc.stdin.flush()
        proc.stdin.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - started
        delays = sorted(at * 1e3 - body["bench_sent_ns"] / 1e6 for at, body in hook.accepted)
    if not delays:
        raise RuntimeError("alert latency: the receiver got nothing")

    def pct(p: float) -> float:
        return delays[min(len(delays) - 1, int(p / 100 * len(delays)))]

    note = (
        f"signal in -> webhook request out: p50 {pct(50):.2f} ms, p99 {pct(99):.2f} ms, "
        f"max {delays[-1]:.2f} ms over {len(delays):,} alerts"
    )
    bench.record(
        "alert",
        f"latency at {rate:g} alerts/s (--to webhook)",
        len(delays),
        elapsed,
        {"alert": round(usage.ru_maxrss / 1024, 1)},
        note,
    )
