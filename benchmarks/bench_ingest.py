"""ingest and the wire layer: the simulated feed, and file replay in both formats.

Beside them, the floor the NDJSON pass-through is measured against: ``cat`` of the same bytes
through a pipe, and orjson's bare ``loads`` + ``dumps`` of the same lines in this process (no
checks, no batching, no pipes). The issue's targets: sim ingest >= 2,000,000 events/s in Arrow
and >= 400,000 in NDJSON; the NDJSON pass-through >= 50 % of bare orjson loads+dumps.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.harness import Bench, Result, trade
from benchmarks.process import one_process


def run(bench: Bench) -> None:
    n = bench.events
    sim = ["ingest", "--seed", "1", "--date", "2026-11-20", "--universe", "500", "--count", str(n), "--quiet"]
    one = [*sim[:-3], "--count", "1", "--quiet"]  # the same feed, one event: its start-up
    bench.pipeline("ingest", "sim -> NDJSON", [trade(*sim)], n, names=["ingest"])
    bench.pipeline("ingest", "sim -> Arrow", [trade(*sim, "--format", "arrow")], n, names=["ingest"])
    for label, fmt in (("NDJSON", "ndjson"), ("Arrow", "arrow")):
        one_process(
            bench,
            "ingest",
            f"sim -> {label}, CPU",
            trade(*sim, "--format", fmt),
            n,
            None,
            idle=trade(*one, "--format", fmt),
        )
    ndjson = bench.file("sim.ndjson", trade(*sim))
    arrow = bench.file("sim.arrows", trade(*sim, "--format", "arrow"))
    replay = ["ingest", "--source", "file", "-", "--quiet"]
    passed = bench.pipeline(
        "wire",
        "NDJSON file -> ingest -s file - -> NDJSON",
        [trade(*replay)],
        n,
        stdin=ndjson,
        names=["ingest"],
    )
    bench.pipeline(
        "wire", "Arrow file -> ingest -s file - -> Arrow", [trade(*replay)], n, stdin=arrow, names=["ingest"]
    )
    for label, fmt in (("NDJSON", "ndjson"), ("Arrow", "arrow")):
        bench.pipeline(
            "wire",
            f"sim | ingest -s file - ({label}, two processes)",
            [trade(*sim, "--format", fmt), trade(*replay)],
            n,
            names=["sim", "replay"],
        )
    bench.pipeline(
        "floor", "cat of the same NDJSON bytes, through a pipe", [["cat"]], n, stdin=ndjson, names=["cat"]
    )
    floor = _orjson_floor(bench, ndjson, n)
    passed.note = f"{passed.rate / floor.rate:.0%} of bare orjson loads+dumps"


def _orjson_floor(bench: Bench, path: Path, n: int) -> Result:
    import orjson

    lines = path.read_bytes().splitlines()

    def round_trip() -> None:
        loads, dumps = orjson.loads, orjson.dumps
        for line in lines:
            dumps(loads(line))

    return bench.in_process(
        "floor", "orjson loads+dumps of the same lines (in memory)", n, round_trip, note="no checks, no pipes"
    )
