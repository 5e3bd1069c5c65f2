"""Measure whole processes joined by real pipes: events per second and each process's peak RSS.

A benchmark module ``bench_<name>.py`` defines ``run(bench: Bench) -> None`` and calls
``bench.pipeline(...)`` or ``bench.record(...)`` for each case. Peak memory comes from
``wait4``'s rusage of each process, so every stage is measured on its own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GNU_TIME = "/usr/bin/time"


def trade(*args: str) -> list[str]:
    return [sys.executable, "-m", "tradecli", *args]


@dataclass
class Result:
    group: str
    case: str
    events: int
    seconds: float
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Bench:
    events: int
    workdir: Path
    results: list[Result] = field(default_factory=list)
    log: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "TRADE_FORMAT")}
        env["PYTHONPATH"] = str(ROOT)
        return env

    def file(self, name: str, producer: Sequence[str]) -> Path:
        """Generate an input file once per run (cached by name)."""
        path = self.workdir / name
        if not path.exists():
            with open(path, "wb") as out:
                subprocess.run(
                    list(producer), stdout=out, check=True, env=self.env(), stderr=subprocess.DEVNULL
                )
        return path

    def pipeline(
        self,
        group: str,
        case: str,
        stages: Sequence[Sequence[str]],
        events: int,
        *,
        stdin: Path | None = None,
        stdout: Path | None = None,
        note: str = "",
        names: Sequence[str] | None = None,
    ) -> Result:
        """Run stages joined by pipes; time from the first start to the last exit.

        Each stage runs under GNU time where it is installed, for its own peak RSS: wait4's
        ru_maxrss would also count the (large) benchmark process it was forked from, since Linux
        keeps the high-water mark from before exec.
        """
        self.log(f"  {group}: {case} ...")
        rss_files = [self.workdir / f"rss-{os.getpid()}-{i}.txt" for i in range(len(stages))]
        if os.path.exists(GNU_TIME):
            stages = [
                [GNU_TIME, "-f", "%M", "-o", str(f), *argv] for f, argv in zip(rss_files, stages, strict=True)
            ]
        processes: list[subprocess.Popen[bytes]] = []
        first_input = open(stdin, "rb") if stdin else None  # noqa: SIM115 - closed below
        sink = open(stdout or os.devnull, "wb")  # noqa: SIM115 - closed below
        upstream: Any = first_input if first_input else subprocess.DEVNULL
        started = time.perf_counter()
        try:
            for i, argv in enumerate(stages):
                last = i == len(stages) - 1
                proc = subprocess.Popen(
                    list(argv),
                    stdin=upstream,
                    stdout=sink if last else subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    env=self.env(),
                )
                if i > 0:
                    upstream.close()  # the parent's copy of the pipe between the two stages
                upstream = proc.stdout
                processes.append(proc)
            peaks: dict[str, float] = {}
            for i, proc in enumerate(processes):
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                label = names[i] if names else f"stage {i + 1}"
                own = rss_files[i].read_text().split() if rss_files[i].exists() else []
                peaks[label] = round((int(own[-1]) if own else usage.ru_maxrss) / 1024, 1)
                if proc.returncode != 0:
                    raise RuntimeError(f"{group}/{case}: {label} exited {proc.returncode}")
            elapsed = time.perf_counter() - started
        finally:
            sink.close()
            if first_input:
                first_input.close()
        result = Result(group, case, events, elapsed, peaks, note)
        self.results.append(result)
        return result

    def record(
        self,
        group: str,
        case: str,
        events: int,
        seconds: float,
        peak_rss_mb: dict[str, float] | None = None,
        note: str = "",
    ) -> Result:
        result = Result(group, case, events, seconds, peak_rss_mb or {}, note)
        self.results.append(result)
        return result

    def in_process(
        self, group: str, case: str, events: int, work: Callable[[], Any], note: str = ""
    ) -> Result:
        """Time a function in this process (for peers that have no command line, such as TA-Lib)."""
        self.log(f"  {group}: {case} ...")
        started = time.perf_counter()
        work()
        elapsed = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return self.record(group, case, events, elapsed, {"bench process": round(peak, 1)}, note)


def report(results: Sequence[Result]) -> str:
    lines = [f"{'group':<10} {'case':<58} {'events':>10} {'seconds':>8} {'events/s':>12}  peak RSS (MB)"]
    for r in results:
        peaks = ", ".join(f"{k} {v:.0f}" for k, v in r.peak_rss_mb.items())
        lines.append(
            f"{r.group:<10} {r.case:<58} {r.events:>10,} {r.seconds:>8.2f} {r.rate:>12,.0f}  {peaks}"
        )
        if r.note:
            lines.append(f"{'':<10}   {r.note}")
    return "\n".join(lines)


def save(results: Sequence[Result], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) | {"rate": r.rate} for r in results], indent=2))


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="trade-bench-"))
