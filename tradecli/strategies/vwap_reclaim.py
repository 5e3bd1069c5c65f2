"""vwap_reclaim: a stock that traded below VWAP gets back above it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tradecli.strategies import Evaluation, Numbers, Strategy, Zone, fmt_price, hold_where

if TYPE_CHECKING:
    import numpy as np

    from tradecli.screener import Columns

NAME = "vwap_reclaim"
TITLE = "VWAP reclaim"
SIDES = "long"
NEEDS = ("price", "vwap")
FIELDS = NEEDS
COOLDOWN = "10m"
MAX_PER_DAY = 50
PARAMS: dict[str, tuple[float, str]] = {
    "band": (0.002, "the dead band around vwap, as a fraction of vwap"),
    "stop_pct": (0.005, "stop_loss = vwap * (1 - stop_pct)"),
    "reward_risk": (2.0, "target = price + reward_risk * (price - stop_loss)"),
    "confidence": (0.6, "the confidence given"),
}
RULE = (
    "Armed when price < vwap * (1 - band); fires (long, signal_type vwap_reclaim) when an armed "
    "symbol trades at price >= vwap * (1 + band). Prints inside the band change nothing, and a "
    "symbol whose first print of the day is above VWAP must trade below it first. "
    "confidence = the confidence parameter; entry_price = price; stop_loss = vwap * (1 - stop_pct); "
    "target = price + reward_risk * (price - stop_loss). Needs price and vwap."
)


def build(params: dict[str, float]) -> Strategy:
    band = params["band"]
    stop_pct = params["stop_pct"]
    reward_risk = params["reward_risk"]
    confidence = params["confidence"]

    def evaluate(cols: Columns) -> Evaluation:
        import numpy as np

        price = cols.values("price")
        vwap = cols.values("vwap")
        with np.errstate(all="ignore"):
            above = price >= vwap * (1.0 + band)
            below = price < vwap * (1.0 - band)
        # zone 1 above the band, 0 below it, and inside the band the zone holds (-1)
        zone = hold_where(above.view(np.int8), ~(above | below))

        def numbers(rows: np.ndarray) -> Numbers:
            p = price[rows]
            with np.errstate(all="ignore"):
                stop = vwap[rows] * (1.0 - stop_pct)
                target = p + reward_risk * (p - stop)
            return Numbers(p, stop, target, np.full(len(rows), confidence))

        def message(rows: np.ndarray, symbols: list[str]) -> list[str]:
            return [
                f"VWAP reclaim: {symbol} back above VWAP {fmt_price(v)} at {fmt_price(p)}"
                for symbol, p, v in zip(symbols, price[rows].tolist(), vwap[rows].tolist(), strict=True)
            ]

        return Evaluation(zone, numbers, message)

    return Strategy(
        name=NAME,
        zones=(Zone("long", "vwap_reclaim"),),
        evaluate=evaluate,
        needs=NEEDS,
        fields=FIELDS,
        initial=1,  # a symbol must be seen below VWAP before it can reclaim it
        params=params,
        builtin=True,
    )
