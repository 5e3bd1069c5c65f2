"""scripts/bench: run every benchmarks/bench_<name>.py (or --only some) and print one table."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import shutil
import sys
from pathlib import Path

from benchmarks.harness import ROOT, Bench, report, save, scratch


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench")
    parser.add_argument("--events", type=int, default=1_000_000, help="events per case (default 1,000,000)")
    parser.add_argument("--only", default="", help="comma-separated benchmark names (ingest, enrich, ...)")
    parser.add_argument("--keep", action="store_true", help="keep the generated input files")
    args = parser.parse_args()
    here = [str(Path(__file__).parent)]
    names = sorted(m.name[len("bench_") :] for m in pkgutil.iter_modules(here) if m.name.startswith("bench_"))
    chosen = [n for n in names if not args.only or n in args.only.split(",")]
    workdir = scratch()
    bench = Bench(events=args.events, workdir=workdir)
    try:
        for name in chosen:
            print(f"== {name}", file=sys.stderr, flush=True)
            importlib.import_module(f"benchmarks.bench_{name}").run(bench)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(bench.results))
    save(bench.results, ROOT / "bench-results" / "latest.json")


if __name__ == "__main__":
    main()
