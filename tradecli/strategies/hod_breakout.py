"""hod_breakout: a new high of the day, printed on heavy volume."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tradecli.strategies import Evaluation, Numbers, Strategy, Zone, fmt_price

if TYPE_CHECKING:
    import numpy as np

    from tradecli.screener import Columns

NAME = "hod_breakout"
TITLE = "High-of-day breakout on volume"
SIDES = "long"
NEEDS = ("price", "day_high", "day_low", "volume_ratio")
FIELDS = NEEDS
COOLDOWN = "5m"
MAX_PER_DAY = 50
PARAMS: dict[str, tuple[float, str]] = {
    "min_volume_ratio": (2.0, "smallest volume_ratio of the breaking print"),
    "min_range": (0.005, "smallest day range, (day_high - day_low) / day_low"),
    "stop_pct": (0.02, "stop_loss = price * (1 - stop_pct)"),
    "reward_risk": (2.0, "target = price + reward_risk * (price - stop_loss)"),
    "max_confidence": (0.9, "the highest confidence given"),
}
RULE = (
    "Fires (long, signal_type hod_breakout) when price >= day_high (the print is at or above the "
    "high of the day), the day already has a range ((day_high - day_low) / day_low >= min_range) "
    "and volume_ratio >= min_volume_ratio. confidence = min(max_confidence, 0.5 * volume_ratio / "
    "min_volume_ratio); entry_price = price; stop_loss = price * (1 - stop_pct); target = price + "
    "reward_risk * (price - stop_loss). Needs price, day_high, day_low and volume_ratio."
)


def build(params: dict[str, float]) -> Strategy:
    min_ratio = params["min_volume_ratio"]
    min_range = params["min_range"]
    stop_pct = params["stop_pct"]
    reward_risk = params["reward_risk"]
    max_conf = params["max_confidence"]

    def evaluate(cols: Columns) -> Evaluation:
        import numpy as np

        price = cols.values("price")
        high = cols.values("day_high")
        low = cols.values("day_low")
        ratio = cols.values("volume_ratio")
        with np.errstate(all="ignore"):
            on = (price >= high) & (ratio >= min_ratio) & ((high - low) / low >= min_range)
        zone = on.astype(np.int8)

        def numbers(rows: np.ndarray) -> Numbers:
            p = price[rows]
            with np.errstate(all="ignore"):
                stop = p * (1.0 - stop_pct)
                target = p + reward_risk * (p - stop)
                confidence = np.minimum(max_conf, 0.5 * ratio[rows] / min_ratio)
            return Numbers(p, stop, target, confidence)

        def message(rows: np.ndarray, symbols: list[str]) -> list[str]:
            return [
                f"HOD breakout: {symbol} at {fmt_price(p)}, a new high of day on {r:.1f}x volume"
                for symbol, p, r in zip(symbols, price[rows].tolist(), ratio[rows].tolist(), strict=True)
            ]

        return Evaluation(zone, numbers, message)

    return Strategy(
        name=NAME,
        zones=(Zone("long", "hod_breakout"),),
        evaluate=evaluate,
        needs=NEEDS,
        fields=FIELDS,
        params=params,
        builtin=True,
    )
