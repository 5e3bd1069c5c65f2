"""Benchmarks run by scripts/bench: one module per stage, named bench_<stage>.py."""
