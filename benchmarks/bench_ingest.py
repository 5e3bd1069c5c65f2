"""ingest and the wire layer: the simulated feed, and file replay in both formats."""

from __future__ import annotations

from benchmarks.harness import Bench, trade


def run(bench: Bench) -> None:
    n = bench.events
    sim = ["ingest", "--seed", "1", "--date", "2026-11-20", "--universe", "500", "--count", str(n), "--quiet"]
    bench.pipeline("ingest", "sim -> NDJSON", [trade(*sim)], n, names=["ingest"])
    bench.pipeline("ingest", "sim -> Arrow", [trade(*sim, "--format", "arrow")], n, names=["ingest"])
    ndjson = bench.file("sim.ndjson", trade(*sim))
    arrow = bench.file("sim.arrows", trade(*sim, "--format", "arrow"))
    replay = ["ingest", "--source", "file", "-", "--quiet"]
    bench.pipeline(
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
    bench.pipeline(
        "wire",
        "sim | ingest -s file - (Arrow, two processes)",
        [trade(*sim, "--format", "arrow"), trade(*replay)],
        n,
        names=["sim", "replay"],
    )
