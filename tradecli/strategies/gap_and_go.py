"""gap_and_go: the design document's Gap & Go screen, vectorised over a batch.

The design document's ``gap_and_go_screener`` judged one record at a time; this module applies the
same tests, in the same order and with the same comparisons, to every row of a batch at once (the
tests compare it with a transcription of that function on large generated streams). Where the
original looked a field up with a default (``volume_ratio`` as 1, ``vwap`` as the price), so
does this one; where it would have raised (no ``vwap`` for the stop) the row gives no signal, as
the original's caller skipped a strategy that raised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tradecli.strategies import Evaluation, Numbers, Strategy, Zone, hold_where

if TYPE_CHECKING:
    import numpy as np

    from tradecli.screener import Columns

NAME = "gap_and_go"
TITLE = "Gap & Go (the design document's rule)"
SIDES = "long"
NEEDS = ("price", "prev_close", "vwap")
FIELDS = ("price", "prev_close", "vwap", "volume_ratio")
COOLDOWN = "15m"
MAX_PER_DAY = 50
PARAMS: dict[str, tuple[float, str]] = {
    "min_gap": (0.10, "smallest gap, (price - prev_close) / prev_close"),
    "min_volume_ratio": (3.0, "smallest volume_ratio (a missing ratio counts as 1)"),
    "full_confidence_gap": (0.20, "the gap at which confidence reaches max_confidence"),
    "max_confidence": (0.9, "the highest confidence given"),
    "stop_factor": (0.97, "stop_loss = vwap * stop_factor"),
    "target_factor": (1.15, "target = price * target_factor"),
}
RULE = (
    "gap = (price - prev_close) / prev_close. Fires (long, signal_type gap_and_go_continuation) when "
    "gap >= min_gap, volume_ratio >= min_volume_ratio (a missing volume_ratio counts as 1) and "
    "price >= vwap. confidence = min(max_confidence, gap / full_confidence_gap); entry_price = price; "
    "stop_loss = vwap * stop_factor; target = price * target_factor. Message: "
    "'Gap & Go: {symbol} gapped {gap:.1%} with {volume_ratio:.1f}x volume'. "
    "Needs price, prev_close and vwap (a record without vwap gives no signal: the stop needs it)."
)


def build(params: dict[str, float]) -> Strategy:
    min_gap = params["min_gap"]
    min_ratio = params["min_volume_ratio"]
    full_gap = params["full_confidence_gap"]
    max_conf = params["max_confidence"]
    stop_factor = params["stop_factor"]
    target_factor = params["target_factor"]

    def evaluate(cols: Columns) -> Evaluation:
        import numpy as np

        price = cols.values("price")
        prev_close = cols.values("prev_close")
        vwap = cols.values("vwap")
        has_ratio = cols.valid("volume_ratio")
        ratio = cols.values("volume_ratio")
        with np.errstate(all="ignore"):
            gap = (price - prev_close) / prev_close
            # the original's tests: `if gap < min: return None`, so a NaN passes each of them
            on = ~(gap < min_gap)
            on &= ~(np.where(has_ratio, ratio, 1.0) < min_ratio)
            # a missing vwap reads NaN here, and price < NaN is false: the record passes, as
            # with the original's price for a missing vwap
            on &= ~(price < vwap)
        # the original raised ZeroDivisionError on a zero prev_close (which readers reject anyway)
        zone = hold_where(on.view(np.int8), prev_close == 0)

        def numbers(rows: np.ndarray) -> Numbers:
            p, g = price[rows], gap[rows]
            with np.errstate(all="ignore"):
                scaled = g / full_gap
                confidence = np.where(scaled < max_conf, scaled, max_conf)  # Python's min(max, x)
                return Numbers(p, vwap[rows] * stop_factor, p * target_factor, confidence, {"gap": g})

        def message(rows: np.ndarray, symbols: list[str]) -> list[str]:
            # the original printed .get('volume_ratio', 0): a missing ratio reads 0.0x
            shown = np.where(has_ratio[rows], ratio[rows], 0.0).tolist()
            return [
                f"Gap & Go: {symbol} gapped {g:.1%} with {r:.1f}x volume"
                for symbol, g, r in zip(symbols, gap[rows].tolist(), shown, strict=True)
            ]

        return Evaluation(zone, numbers, message)

    return Strategy(
        name=NAME,
        zones=(Zone("long", "gap_and_go_continuation"),),
        evaluate=evaluate,
        needs=NEEDS,
        fields=FIELDS,
        params=params,
        builtin=True,
    )
