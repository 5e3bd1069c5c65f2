"""One stage process fed from a file, timed by the wall clock and by the CPU it used.

On a busy machine the wall-clock rate says little; records per CPU-second say what the process
needs. The same command can be run once on empty input first, so the CPU a million records cost
beyond start-up and exit is shown too. With ``stream`` the output is read here and the rate
from the first byte out to the last is reported: what the stage streams once Python, numpy and
pyarrow have started (a stage in a long-running pipeline pays its start-up once).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from benchmarks.harness import GNU_TIME, Bench, Result


@dataclass
class _Run:
    seconds: float
    first_byte: float | None  # seconds from the start to the first output byte
    user: float
    system: float
    peak_mb: float | None  # the stage's own peak RSS, where GNU time is there to tell it

    @property
    def cpu(self) -> float:
        return self.user + self.system


def _run(bench: Bench, argv: list[str], source: IO[bytes] | int, stream: bool) -> _Run:
    # wait4's ru_maxrss would count this (large) process's RSS from before exec; GNU time forks
    # the stage from a small process and reports the stage's own peak (its CPU is the stage's,
    # plus the few milliseconds of time itself)
    rss_file = bench.workdir / f"rss-one-{os.getpid()}.txt"
    rss_file.unlink(missing_ok=True)
    if os.path.exists(GNU_TIME):
        argv = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *argv]
    started = time.perf_counter()
    first_byte = None
    proc = subprocess.Popen(
        argv,
        stdin=source,
        stdout=subprocess.PIPE if stream else subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=bench.env(),
    )
    if stream:
        assert proc.stdout is not None
        reader: Any = proc.stdout
        while reader.read1(1 << 20):
            if first_byte is None:
                first_byte = time.perf_counter() - started
        reader.close()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv}: exit {os.waitstatus_to_exitcode(status)}")
    own = rss_file.read_text().split() if rss_file.exists() else []
    peak = int(own[-1]) / 1024 if own else None
    return _Run(seconds, first_byte, usage.ru_utime, usage.ru_stime, peak)


def one_process(
    bench: Bench,
    group: str,
    case: str,
    argv: list[str],
    events: int,
    stdin: Path | None,
    *,
    stream: bool = False,
    idle: list[str] | bool = True,
    label: str | None = None,
    note: str = "",
) -> Result:
    """Run ``argv`` on ``stdin`` and record its rate, CPU and peak RSS.

    ``idle`` is the start-up run: True runs ``argv`` on empty input, a list runs that command
    instead (for a source that reads no input), False skips it (a query has no empty case).
    """
    bench.log(f"  {group}: {case} ...")
    before: _Run | None = None
    if idle is True:
        before = _run(bench, argv, subprocess.DEVNULL, stream=False)
    elif isinstance(idle, list):
        before = _run(bench, idle, subprocess.DEVNULL, stream=False)
    if stdin is None:
        run = _run(bench, argv, subprocess.DEVNULL, stream)
    else:
        with open(stdin, "rb") as source:
            run = _run(bench, argv, source, stream)
    text = f"CPU {run.cpu:.2f} s (user {run.user:.2f}, system {run.system:.2f})"
    if before is None:
        text += f": {events / max(run.cpu, 1e-9):,.0f} records per CPU-second"
    else:
        beyond = max(run.cpu - before.cpu, 1e-9)
        text += f", of which {before.cpu:.2f} s at start-up: "
        text += f"{events / beyond:,.0f} records per CPU-second beyond it"
    if run.first_byte is not None:
        text += (
            f"; {events / max(run.seconds - run.first_byte, 1e-9):,.0f} records/s from the first "
            f"byte out (start-up {run.first_byte:.2f} s)"
        )
    name = label or (argv[3] if argv[1:3] == ["-m", "tradecli"] else "stage")  # trade(STAGE, ...)
    peaks = {name: round(run.peak_mb, 1)} if run.peak_mb else {}
    return bench.record(group, case, events, run.seconds, peaks, (note + "; " if note else "") + text)
