"""sim: a simulated US equities session, so every stage works on a fresh machine with no account.

Each symbol has a previous close. At the open a few symbols (about one in seven) gap 10-30 %, most of
them up, and trade in a burst of volume with momentum for the first half hour - the setups the Gap &
Go screen looks for. The rest random-walk around a small overnight move. Prices sit on the penny
grid (1/100 of a cent below $1), trade sizes mix odd lots, round lots and blocks, quotes have
bid < ask, and timestamps never go backwards. When the session passes 16:00 New York time the next
weekday opens, with the last price as its previous close and new gaps.

Events are generated columnar, a chunk of 4,096 at a time from one seeded generator, so a given
``--seed`` and ``--date`` give the same events byte for byte however they are paced or cut.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tradecli.records import TIMESTAMP, from_numpy
from tradecli.runtime import Stopper

NEW_YORK = ZoneInfo("America/New_York")
SESSION_SECONDS = 6.5 * 3600
CHUNK = 4096
ODD_LOT_CONDITION = 37  # Polygon's condition id for an odd-lot trade

# A liquid-first universe with prices of the right order of magnitude.
BUILTIN_UNIVERSE: dict[str, float] = {
    "SPY": 570.0,
    "QQQ": 490.0,
    "AAPL": 230.0,
    "MSFT": 420.0,
    "NVDA": 130.0,
    "TSLA": 250.0,
    "AMZN": 190.0,
    "META": 560.0,
    "GOOGL": 170.0,
    "AMD": 150.0,
    "NFLX": 700.0,
    "AVGO": 170.0,
    "INTC": 22.0,
    "CSCO": 55.0,
    "ORCL": 170.0,
    "CRM": 300.0,
    "ADBE": 500.0,
    "QCOM": 160.0,
    "PYPL": 75.0,
    "UBER": 75.0,
    "SHOP": 80.0,
    "COIN": 220.0,
    "PLTR": 40.0,
    "HOOD": 25.0,
    "SOFI": 10.0,
    "RIVN": 12.0,
    "LCID": 3.0,
    "NIO": 5.0,
    "MARA": 20.0,
    "RIOT": 10.0,
    "GME": 22.0,
    "AMC": 4.5,
    "SNAP": 11.0,
    "DKNG": 40.0,
    "ROKU": 70.0,
    "AFRM": 45.0,
    "UPST": 50.0,
    "CVNA": 180.0,
    "SMCI": 40.0,
    "MSTR": 200.0,
    "IONQ": 10.0,
    "SOUN": 6.0,
    "BB": 2.4,
    "PENN": 0.85,
}
TRADE_EXCHANGES = np.array([4, 10, 11, 12, 15, 17, 19, 21])  # Polygon ids: TRF, NYSE, Arca, Nasdaq, ...
QUOTE_EXCHANGES = np.array([1, 8, 10, 11, 12, 15, 17, 19])


def synthetic_ticker(index: int) -> str:
    """Deterministic 4-letter tickers for universes larger than the built-in list."""
    letters = []
    for _ in range(3):
        index, rest = divmod(index, 26)
        letters.append(chr(ord("A") + rest))
    return "X" + "".join(reversed(letters))


def universe(symbols: list[str] | None, size: int | None) -> list[str]:
    if symbols:
        return list(dict.fromkeys(s.upper() for s in symbols))
    builtin = list(BUILTIN_UNIVERSE)
    if size is None:
        return builtin
    if size <= len(builtin):
        return builtin[:size]
    return builtin + [synthetic_ticker(i) for i in range(size - len(builtin))]


def session_open_ns(day: date) -> int:
    opening = datetime(day.year, day.month, day.day, 9, 30, tzinfo=NEW_YORK)
    return int(opening.timestamp()) * 10**9


def next_weekday(day: date) -> date:
    day += timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


@dataclass
class SimConfig:
    symbols: list[str]
    trades: bool = True
    quotes: bool = True
    seed: int | None = None
    day: date | None = None
    events_per_symbol_second: float = 20.0  # simulated activity, not wall-clock pace


class SimMarket:
    """The simulated market's state; :meth:`chunks` yields record batches forever."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.names = np.array(config.symbols)
        n = len(self.names)
        self.n = n
        rng = self.rng
        base = np.array([BUILTIN_UNIVERSE.get(s, 0.0) for s in config.symbols])
        unknown = base == 0
        base[unknown] = np.exp(rng.uniform(np.log(2.0), np.log(300.0), unknown.sum()))
        self.last_price = base * np.exp(rng.normal(0.0, 0.02, n))
        rank = np.arange(n)
        self.liquidity = 1.0 / np.sqrt(rank + 2.0) * np.exp(rng.normal(0.0, 0.3, n))
        self.spread_ticks = np.clip(np.round(1 + 3 * rank / max(n, 1) + rng.exponential(0.5, n)), 1, 8)
        self.trade_counter = np.zeros(n, dtype=np.int64)
        self._symbol_names = pa.array(config.symbols, type=pa.string())
        self._kind_names = pa.array(["trade", "quote"], type=pa.string())
        self._source_names = pa.array(["sim"], type=pa.string())
        self.rate = config.events_per_symbol_second * n
        self.day = config.day or datetime.now(NEW_YORK).date()
        self.clock = 0.0  # simulated seconds since the open of self.day
        self._open_day()

    def _open_day(self) -> None:
        rng, n = self.rng, self.n
        self.prev_close = np.round(self.last_price, 2)
        self.prev_close = np.where(self.prev_close > 0, self.prev_close, self.last_price)
        k = max(1, round(0.15 * n))
        self.gapper = np.zeros(n, dtype=bool)
        # gappers come from the smaller names: an index fund or a mega cap rarely gaps 20 %
        first = n // 4 if n - n // 4 >= k else 0
        self.gapper[first + rng.choice(n - first, size=min(k, n - first), replace=False)] = True
        direction = np.where(rng.random(n) < 0.8, 1.0, -1.0)
        gap = np.where(self.gapper, direction * rng.uniform(0.10, 0.30, n), rng.normal(0.0, 0.008, n))
        self.log_mid = np.log(self.prev_close * (1 + gap))
        self.direction = direction
        self.daily_sigma = np.where(self.gapper, 0.05, 0.012)
        self.open_ns = session_open_ns(self.day)
        self.clock = 0.0

    def _weights(self, clock: float) -> np.ndarray:
        burst = np.where(self.gapper, 1.0 + 6.0 * np.exp(-clock / 1200.0), 1.0)
        w = self.liquidity * burst
        return w / w.sum()  # type: ignore[no-any-return]

    def chunk(self) -> pa.RecordBatch:
        rng, n = self.rng, self.n
        if self.clock >= SESSION_SECONDS:
            self.last_price = np.exp(self.log_mid)
            self.day = next_weekday(self.day)
            self._open_day()
        weights = self._weights(self.clock)
        size = CHUNK
        dt = rng.exponential(1.0 / self.rate, size)
        clock = self.clock + np.cumsum(dt)
        if clock[-1] > SESSION_SECONDS:  # the close ends this chunk early; the next one opens a new day
            size = max(1, int(np.searchsorted(clock, SESSION_SECONDS)))
            clock = clock[:size]
        self.clock = float(clock[-1]) if clock[-1] <= SESSION_SECONDS else SESSION_SECONDS
        sym = rng.choice(n, size=size, p=weights)
        if self.config.trades and self.config.quotes:
            is_trade = rng.random(size) < 0.4
        else:
            is_trade = np.full(size, self.config.trades)

        # log-mid random walk per symbol: drift and volatility scaled to each symbol's event rate
        per_symbol_rate = self.rate * weights
        events_per_day = np.maximum(per_symbol_rate * SESSION_SECONDS, 1.0)
        sigma = self.daily_sigma / np.sqrt(events_per_day)
        momentum = np.where(self.gapper & (clock[0] < 3600.0), self.direction * 0.06, 0.0) / np.maximum(
            per_symbol_rate * 3600.0, 1.0
        )
        step = sigma[sym] * rng.standard_normal(size) + momentum[sym]
        order = np.argsort(sym, kind="stable")
        sorted_sym = sym[order]
        cumulative = np.cumsum(step[order])
        group_start = np.flatnonzero(np.r_[True, sorted_sym[1:] != sorted_sym[:-1]])
        group_len = np.diff(np.r_[group_start, size])
        before_group = np.repeat(np.r_[0.0, cumulative][group_start], group_len)
        path = np.empty(size)
        path[order] = self.log_mid[sorted_sym] + cumulative - before_group
        group_end = group_start + group_len - 1
        self.log_mid[sorted_sym[group_end]] = path[order[group_end]]

        mid = np.exp(path)
        tick = np.where(mid >= 1.0, 0.01, 0.0001)
        decimals = np.where(mid >= 1.0, 2, 4)
        spread = self.spread_ticks[sym] * np.where(self.gapper[sym], 2, 1)
        bid = np.floor(mid / tick - spread / 2.0) * tick
        bid = np.maximum(bid, tick)
        ask = bid + spread * tick
        bid = np.where(decimals == 2, np.round(bid, 2), np.round(bid, 4))
        ask = np.where(decimals == 2, np.round(ask, 2), np.round(ask, 4))

        side = rng.random(size)
        price = np.where(side < 0.46, bid, np.where(side < 0.92, ask, np.round(mid / tick) * tick))
        price = np.where(decimals == 2, np.round(price, 2), np.round(price, 4))
        lot = rng.random(size)
        odd = lot < 0.45
        volume = np.where(
            odd,
            rng.integers(1, 100, size),
            np.where(lot < 0.95, 100 * rng.geometric(0.45, size), 100 * rng.integers(10, 100, size)),
        )
        in_burst = self.gapper[sym] & (clock < 1800.0)
        volume = np.where(in_burst & ~odd, volume * rng.integers(1, 6, size), volume).astype(np.int64)

        trade_rows = np.flatnonzero(is_trade)
        trade_sym = sym[trade_rows]
        counts = np.bincount(trade_sym, minlength=n)
        t_order = np.argsort(trade_sym, kind="stable")
        within = np.empty(len(trade_rows), dtype=np.int64)
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        within[t_order] = np.arange(len(trade_rows)) - np.repeat(starts, counts)
        trade_ids = np.zeros(size, dtype=np.int64)
        trade_ids[trade_rows] = self.trade_counter[trade_sym] + within + 1
        self.trade_counter += counts

        timestamps = self.open_ns + np.round(clock * 1e9).astype(np.int64)
        latency = np.round(rng.lognormal(np.log(1.5e6), 0.5, size)).astype(np.int64)
        return self._batch(sym, is_trade, timestamps, latency, price, volume, odd, trade_ids, bid, ask, rng)

    def _batch(
        self,
        sym: np.ndarray,
        is_trade: np.ndarray,
        timestamps: np.ndarray,
        latency: np.ndarray,
        price: np.ndarray,
        volume: np.ndarray,
        odd: np.ndarray,
        trade_ids: np.ndarray,
        bid: np.ndarray,
        ask: np.ndarray,
        rng: np.random.Generator,
    ) -> pa.RecordBatch:
        size = len(sym)
        is_quote = ~is_trade
        kinds = pa.DictionaryArray.from_arrays(
            from_numpy(np.where(is_trade, 0, 1).astype(np.int32)), self._kind_names
        )
        symbols = pa.DictionaryArray.from_arrays(from_numpy(sym.astype(np.int32)), self._symbol_names)
        source = pa.DictionaryArray.from_arrays(
            from_numpy(np.zeros(size, dtype=np.int32)), self._source_names
        )
        columns: dict[str, pa.Array] = {
            "type": kinds,
            "symbol": symbols,
            "timestamp": from_numpy(timestamps, type=TIMESTAMP),
            "recv_ts": from_numpy(timestamps + latency, type=TIMESTAMP),
            "source": source,
        }
        if self.config.trades:
            conditions = pa.ListArray.from_arrays(
                from_numpy(np.arange(size + 1, dtype=np.int32)),
                from_numpy(np.full(size, ODD_LOT_CONDITION, dtype=np.int64)),
                mask=from_numpy(~(is_trade & odd)),
            )
            columns.update(
                {
                    "price": from_numpy(price, mask=is_quote),
                    "volume": from_numpy(volume, mask=is_quote),
                    "exchange": from_numpy(rng.choice(TRADE_EXCHANGES, size).astype(np.int64), mask=is_quote),
                    "conditions": conditions,
                    "trade_id": pc.cast(from_numpy(trade_ids, mask=is_quote), pa.string()),
                }
            )
        if self.config.quotes:
            columns.update(
                {
                    "bid": from_numpy(bid, mask=is_trade),
                    "ask": from_numpy(ask, mask=is_trade),
                    "bid_size": from_numpy(100 * rng.geometric(0.3, size).astype(np.int64), mask=is_trade),
                    "ask_size": from_numpy(100 * rng.geometric(0.3, size).astype(np.int64), mask=is_trade),
                    "bid_exchange": from_numpy(
                        rng.choice(QUOTE_EXCHANGES, size).astype(np.int64), mask=is_trade
                    ),
                    "ask_exchange": from_numpy(
                        rng.choice(QUOTE_EXCHANGES, size).astype(np.int64), mask=is_trade
                    ),
                }
            )
        columns["prev_close"] = from_numpy(self.prev_close[sym])
        return pa.record_batch(columns)


def simulate(config: SimConfig, batch_rows: int = 16 * CHUNK) -> Iterator[pa.RecordBatch]:
    """As fast as it can: simulated timestamps from 09:30 New York time on the configured day.

    Chunks are joined into batches of about ``batch_rows``: fewer, larger batches downstream.
    """
    market = SimMarket(config)
    while True:
        parts = [market.chunk()]
        rows = parts[0].num_rows
        while rows < batch_rows:
            parts.append(market.chunk())
            rows += parts[-1].num_rows
        yield pa.Table.from_batches(parts).combine_chunks().to_batches()[0]


def simulate_live(config: SimConfig, rate: float, stopper: Stopper) -> Iterator[pa.RecordBatch]:
    """Paced at ``rate`` events per wall-clock second, stamped with the wall clock as they go out."""
    market = SimMarket(config)
    pending = market.chunk()
    started = time.monotonic()
    sent = 0
    tick = max(0.01, min(0.25, 1.0 / rate))
    last_ns = time.time_ns()
    while True:
        due = int((time.monotonic() - started) * rate) - sent
        if due <= 0:
            stopper.sleep(max((sent + 1) / rate - (time.monotonic() - started), 0.0) if rate < 100 else tick)
            continue
        parts = []
        while due > 0:
            take = min(due, pending.num_rows)
            parts.append(pending.slice(0, take))
            pending = pending.slice(take)
            due -= take
            if pending.num_rows == 0:
                pending = market.chunk()
        batch = pa.Table.from_batches(parts).combine_chunks().to_batches()[0] if len(parts) > 1 else parts[0]
        now_ns = time.time_ns()
        stamps = np.linspace(last_ns, now_ns, batch.num_rows + 1)[1:].astype(np.int64)
        last_ns = now_ns
        latency = (
            batch.column("recv_ts").cast(pa.int64()).to_numpy()
            - batch.column("timestamp").cast(pa.int64()).to_numpy()
        )
        batch = batch.set_column(
            batch.schema.get_field_index("timestamp"), "timestamp", from_numpy(stamps, type=TIMESTAMP)
        )
        batch = batch.set_column(
            batch.schema.get_field_index("recv_ts"), "recv_ts", from_numpy(stamps + latency, type=TIMESTAMP)
        )
        sent += batch.num_rows
        yield batch
