"""One stage process fed from a file, timed by the wall clock and by the CPU it used.

On a busy machine the wall-clock rate says little; records per CPU-second say what the process
needs. The same command is run once on empty input first, so the CPU a million records cost
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

from benchmarks.harness import Bench, Result


@dataclass
class _Run:
    seconds: float
    first_byte: float | None  # seconds from the start to the first output byte
    user: float
    system: float

    @property
    def cpu(self) -> float:
        return self.user + self.system


def _run(bench: Bench, argv: list[str], source: IO[bytes] | int, stream: bool) -> _Run:
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
    return _Run(seconds, first_byte, usage.ru_utime, usage.ru_stime)


def one_process(
    bench: Bench,
    group: str,
    case: str,
    argv: list[str],
    events: int,
    stdin: Path,
    *,
    stream: bool = False,
) -> Result:
    bench.log(f"  {group}: {case} ...")
    idle = _run(bench, argv, subprocess.DEVNULL, stream=False)
    with open(stdin, "rb") as source:
        run = _run(bench, argv, source, stream)
    beyond = max(run.cpu - idle.cpu, 1e-9)
    note = (
        f"CPU {run.cpu:.2f} s (user {run.user:.2f}, system {run.system:.2f}), of which "
        f"{idle.cpu:.2f} s on empty input: {events / beyond:,.0f} records per CPU-second beyond it"
    )
    if run.first_byte is not None:
        note += (
            f"; {events / max(run.seconds - run.first_byte, 1e-9):,.0f} records/s from the first "
            f"byte out (start-up {run.first_byte:.2f} s)"
        )
    # no peak RSS: wait4 would count this (large) process's, from before exec
    return bench.record(group, case, events, run.seconds, {}, note)
