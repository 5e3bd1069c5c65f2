"""The whole pipeline, each stage its own process joined by pipes, as a trader runs it."""

from __future__ import annotations

from benchmarks.harness import Bench, trade


def run(bench: Bench) -> None:
    n = bench.events
    sim = ["ingest", "--seed", "1", "--date", "2026-11-20", "--universe", "500", "--count", str(n), "--quiet"]
    stages = ["ingest", "enrich", "screen", "alert"]
    for label, fmt in (("Arrow", "arrow"), ("NDJSON", "ndjson")):
        bench.pipeline(
            "pipeline",
            f"ingest | enrich | screen | alert --dry-run  ({label})",
            [
                trade(*sim, "--format", fmt),
                trade("enrich", "--quiet"),
                trade("screen", "--quiet", "--state-dir", str(bench.workdir / f"screen-{fmt}")),
                trade("alert", "--dry-run", "--quiet", "--state-dir", str(bench.workdir / f"alert-{fmt}")),
            ],
            n,
            names=stages,
        )
    store = bench.workdir / "pipeline-store"
    bench.pipeline(
        "pipeline",
        "ingest | enrich | store  (Arrow, fsync per batch)",
        [trade(*sim, "--format", "arrow"), trade("enrich", "--quiet"), trade("store", str(store), "--quiet")],
        n,
        names=["ingest", "enrich", "store"],
    )
