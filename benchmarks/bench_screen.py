"""screen: the five built-ins plus two user expressions, Arrow in, 10,000 symbols.

The enriched input is made once per run: by ``trade ingest --source sim | trade enrich`` when the
enrich stage is installed, else here, with the same columns computed in numpy (vectorised across
symbols; close enough to enrich's definitions for a realistic signal rate). It is then fed from
a file to a real ``trade screen`` process; the core alone is timed in-process too, to separate
the screening from reading and writing. The note gives the state file's size after the run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.harness import Bench, trade
from benchmarks.process import one_process

SYMBOLS = 10_000
USER_STRATEGIES = """\
[strategy.rsi_dip]
where = "rsi_14 < level and price > vwap and volume_ratio >= 1.5"
stop_loss = "vwap * 0.99"
target = "price + 2 * abs(price - vwap * 0.99)"
confidence = "minimum(0.9, 0.5 + (level - rsi_14) / 50)"
message = "{symbol}: RSI {rsi_14:.1f} under {level:.0f} at {price:.2f}"
params = { level = 30 }

[strategy.trend_gap]
where = "gap_pct > 0.05 and ema_9 > sma_20 and price > ema_9"
side = "long"
stop_loss = "sma_20"
target = "price * 1.1"
message = "{symbol} trending after a {gap_pct:.1%} gap"
"""


def _enrich_available() -> bool:
    from tradecli.stages import STAGES

    return "enrich" in STAGES


def _grouped(symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by symbol (stable), each sorted row's position in its symbol, group starts."""
    order = np.argsort(symbols, kind="stable")
    s = symbols[order]
    first = np.r_[True, s[1:] != s[:-1]]
    starts = np.flatnonzero(first)
    start_of = np.maximum.accumulate(np.where(first, np.arange(len(s)), 0))
    return order, np.arange(len(s)) - start_of, starts


def _by_position(pos: np.ndarray) -> list[np.ndarray]:
    """Sorted-row indices at each position 0, 1, 2, ... within their symbol."""
    order = np.argsort(pos, kind="stable")
    bounds = np.searchsorted(pos[order], np.arange(pos.max() + 2))
    return [order[bounds[k] : bounds[k + 1]] for k in range(len(bounds) - 1)]


def _rolling(x: np.ndarray, pos: np.ndarray, n: int) -> np.ndarray:
    sums = np.cumsum(np.r_[0.0, x])
    out = np.full(len(x), np.nan)
    ok = pos >= n - 1
    idx = np.flatnonzero(ok)
    out[idx] = (sums[idx + 1] - sums[idx + 1 - n]) / n
    return out


def _ema(x: np.ndarray, pos: np.ndarray, levels: list[np.ndarray], n: int) -> np.ndarray:
    alpha = 2.0 / (n + 1)
    out = _rolling(x, pos, n)  # the seed at position n - 1
    for k in range(n, len(levels)):
        i = levels[k]
        out[i] = alpha * x[i] + (1 - alpha) * out[i - 1]
    out[pos < n - 1] = np.nan
    return out


def _rsi(x: np.ndarray, pos: np.ndarray, levels: list[np.ndarray], n: int) -> np.ndarray:
    change = np.r_[0.0, np.diff(x)]
    change[pos == 0] = 0.0
    gain, loss = np.maximum(change, 0.0), np.maximum(-change, 0.0)
    # the seed: means of the first n changes (positions 1..n)
    avg_gain = _rolling(np.where(pos >= 1, gain, 0.0), pos - 1, n)
    avg_loss = _rolling(np.where(pos >= 1, loss, 0.0), pos - 1, n)
    for k in range(n + 1, len(levels)):
        i = levels[k]
        avg_gain[i] = (avg_gain[i - 1] * (n - 1) + gain[i]) / n
        avg_loss[i] = (avg_loss[i - 1] * (n - 1) + loss[i]) / n
    total = avg_gain + avg_loss
    with np.errstate(all="ignore"):
        out = np.where(total > 0, 100.0 * avg_gain / total, 0.0)
    out[pos < n] = np.nan
    return out


def enrich_in_numpy(table: pa.Table) -> pa.Table:
    """enrich's default columns for a one-session simulated table (trades update, quotes get mid)."""
    from tradecli.records import from_numpy

    n = table.num_rows
    is_trade = np.asarray(table.column("type").cast(pa.string()).to_numpy(zero_copy_only=False)) == "trade"
    symbol = pc.dictionary_encode(table.column("symbol").cast(pa.string())).combine_chunks()
    sym = np.asarray(symbol.indices.to_numpy(zero_copy_only=False))
    price = np.asarray(table.column("price").to_numpy(zero_copy_only=False), dtype=np.float64)
    volume = np.asarray(table.column("volume").to_numpy(zero_copy_only=False), dtype=np.float64)
    prev_close = np.asarray(table.column("prev_close").to_numpy(zero_copy_only=False), dtype=np.float64)
    rows = np.flatnonzero(is_trade)
    order, pos, _ = _grouped(sym[rows])
    t = rows[order]  # trade rows grouped by symbol
    p, v = price[t], np.nan_to_num(volume[t])
    levels = _by_position(pos)
    first = pos == 0
    group = np.cumsum(first) - 1
    cum_pv = np.cumsum(p * v)
    cum_v = np.cumsum(v)
    base_pv = (cum_pv - p * v)[first][group]
    base_v = (cum_v - v)[first][group]
    with np.errstate(all="ignore"):
        vwap = np.where(cum_v - base_v > 0, (cum_pv - base_pv) / (cum_v - base_v), p)
    day_high, day_low = p.copy(), p.copy()
    for k in range(1, len(levels)):
        i = levels[k]
        day_high[i] = np.maximum(day_high[i - 1], p[i])
        day_low[i] = np.minimum(day_low[i - 1], p[i])
    avg_volume = _rolling(v, pos, 20)
    columns = {
        "vwap": vwap,
        "sma_20": _rolling(p, pos, 20),
        "ema_9": _ema(p, pos, levels, 9),
        "rsi_14": _rsi(p, pos, levels, 14),
        "avg_volume_20": avg_volume,
        "volume_ratio": np.where(avg_volume > 0, v / np.where(avg_volume > 0, avg_volume, 1), np.nan),
        "gap_pct": p / prev_close[t] - 1,
        "day_high": day_high,
        "day_low": day_low,
        "day_volume": cum_v - base_v,
    }
    for name, values in columns.items():
        full = np.full(n, np.nan)
        full[t] = values
        missing = np.isnan(full)
        if name == "day_volume":
            table = table.append_column(name, from_numpy(np.nan_to_num(full).astype(np.int64), mask=missing))
        else:
            table = table.append_column(name, from_numpy(full, mask=missing))
    bid = np.asarray(table.column("bid").to_numpy(zero_copy_only=False), dtype=np.float64)
    ask = np.asarray(table.column("ask").to_numpy(zero_copy_only=False), dtype=np.float64)
    quote = ~is_trade
    table = table.append_column("mid", from_numpy((bid + ask) / 2, mask=~quote))
    return table.append_column("spread", from_numpy(ask - bid, mask=~quote))


def make_input(bench: Bench, events: int) -> Path:
    path = bench.workdir / f"screen-enriched-{events}.arrows"
    if path.exists():
        return path
    sim = ["ingest", "--seed", "1", "--date", "2026-11-20", "--universe", str(SYMBOLS)]
    sim += ["--count", str(events), "--format", "arrow", "--quiet"]
    if _enrich_available():
        with open(path, "wb") as out:
            head = subprocess.Popen(trade(*sim), stdout=subprocess.PIPE, env=bench.env())
            subprocess.run(
                trade("enrich", "--quiet"), stdin=head.stdout, stdout=out, check=True, env=bench.env()
            )
            assert head.stdout is not None
            head.stdout.close()
            head.wait()
        return path
    raw = bench.file(f"screen-sim-{events}.arrows", trade(*sim))
    # in a child process: Linux counts a parent's memory at fork in the child's peak RSS, so the
    # bench process stays small until the stages have been measured
    code = f"from benchmarks.bench_screen import write_enriched; write_enriched({str(raw)!r}, {str(path)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, env=bench.env())
    return path


def write_enriched(raw: str, path: str) -> None:
    with pa.ipc.open_stream(raw) as reader:
        table = enrich_in_numpy(reader.read_all())
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=65_536):
            writer.write_batch(batch)


def run(bench: Bench) -> None:
    n = bench.events
    bench.log(f"  screen: generating {n:,} enriched records for {SYMBOLS:,} symbols ...")
    source = make_input(bench, n)
    rules = bench.workdir / "screen-rules.toml"
    rules.write_text(USER_STRATEGIES)
    how = "trade enrich" if _enrich_available() else "numpy (enrich not installed)"
    for label, extra in (
        ("5 built-ins + 2 expressions", ["--strategies", str(rules)]),
        ("gap_and_go only", ["-s", "gap_and_go"]),
    ):
        state = bench.workdir / f"screen-state-{label.split()[0]}"
        result = bench.pipeline(
            "screen",
            f"Arrow file -> screen ({label})",
            [trade("screen", *extra, "--quiet", "--state-dir", str(state))],
            n,
            stdin=source,
            names=["screen"],
        )
        size = sum(p.stat().st_size for p in state.iterdir())
        result.note = f"input enriched by {how}; state on disk {size / 1e6:.2f} MB for {SYMBOLS:,} symbols"
    state = bench.workdir / "screen-state-cpu"
    one_process(
        bench,
        "screen",
        "screen < Arrow file (5 built-ins + 2 expressions), CPU",
        trade("screen", "--strategies", str(rules), "--quiet", "--state-dir", str(state)),
        n,
        source,
    )
    _core(bench, source, rules, n)
    _reader(bench, source, n)


def _core(bench: Bench, source: Path, rules: Path, n: int) -> None:
    """The screening core alone, on batches already in memory (no pipes, no parsing)."""
    import numexpr

    from tradecli.screener import Screener, ScreenState
    from tradecli.stages.screen import ScreenOptions, configure
    from tradecli.tuning import keep_freed_memory

    keep_freed_memory()  # as the screen command does, with one numexpr thread
    numexpr.set_num_threads(1)
    with pa.ipc.open_stream(source) as reader:
        batches = list(reader)
    strategies = configure(ScreenOptions(strategies_file=str(rules)))
    state = ScreenState()
    screener = Screener(strategies, state)
    started = time.perf_counter()
    for batch in batches:
        screener.process(batch)
    elapsed = time.perf_counter() - started
    bench.record(
        "screen",
        "core in-process (5 built-ins + 2 expressions)",
        n,
        elapsed,
        note=f"{screener.stats['signals']:,} signals; state in memory {state.nbytes() / 1e6:.2f} MB, "
        f"snapshot {len(state.snapshot()) / 1e6:.2f} MB",
    )


def _reader(bench: Bench, source: Path, n: int) -> None:
    """The shared wire reader alone on the same file: the floor under any stage's Arrow rate."""
    from tradecli.log import Log
    from tradecli.runtime import Session, Stopper
    from tradecli.wire import ErrorSink, Input, RecordReader

    session = Session("bench", Log("bench", quiet=True), Stopper())

    def read() -> None:
        with open(source, "rb") as handle:
            for _ in RecordReader(Input(handle, session), ErrorSink(session)).batches():
                pass

    bench.in_process("screen", "wire reader alone, same Arrow file (in-process)", n, read)
