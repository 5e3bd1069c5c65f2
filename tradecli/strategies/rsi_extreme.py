"""rsi_extreme: RSI enters oversold (bounce, long) or overbought (fade, short) territory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tradecli.strategies import Evaluation, Numbers, Strategy, Zone, fmt_price

if TYPE_CHECKING:
    import numpy as np

    from tradecli.screener import Columns

NAME = "rsi_extreme"
TITLE = "RSI extreme: oversold bounce / overbought fade"
SIDES = "long, short"
COOLDOWN = "10m"
MAX_PER_DAY = 50
PARAMS: dict[str, tuple[float, str]] = {
    "period": (14, "which RSI column: rsi_<period> (enrich --rsi)"),
    "oversold": (30.0, "RSI at or below this is oversold"),
    "overbought": (70.0, "RSI at or above this is overbought"),
    "stop_pct": (0.02, "stop_loss = price * (1 -/+ stop_pct)"),
    "reward_risk": (2.0, "target = entry_price +/- reward_risk * risk"),
    "max_confidence": (0.9, "the highest confidence given"),
}
RULE = (
    "Reads rsi_<period> (rsi_14 by default). Fires long (signal_type rsi_oversold_bounce) when RSI "
    "enters rsi <= oversold, short (signal_type rsi_overbought_fade) when it enters rsi >= "
    "overbought. Long: stop_loss = price * (1 - stop_pct), confidence = min(max_confidence, 0.5 + "
    "0.5 * (oversold - rsi) / oversold). Short: stop_loss = price * (1 + stop_pct), confidence = "
    "min(max_confidence, 0.5 + 0.5 * (rsi - overbought) / (100 - overbought)). entry_price = price; "
    "target = price +/- reward_risk * |price - stop_loss|. Needs price and the RSI column."
)


def build(params: dict[str, float]) -> Strategy:
    column = f"rsi_{int(params['period'])}"
    oversold = params["oversold"]
    overbought = params["overbought"]
    stop_pct = params["stop_pct"]
    reward_risk = params["reward_risk"]
    max_conf = params["max_confidence"]

    def evaluate(cols: Columns) -> Evaluation:
        import numpy as np

        price = cols.values("price")
        rsi = cols.values(column)
        with np.errstate(invalid="ignore"):
            low = rsi <= oversold
            high = rsi >= overbought
        zone = high.astype(np.int8)
        zone += zone  # 2 = overbought
        np.putmask(zone, low, 1)  # oversold wins if both thresholds are crossed at once

        def numbers(rows: np.ndarray) -> Numbers:
            p, r, short = price[rows], rsi[rows], zone[rows] == 2
            with np.errstate(all="ignore"):
                risk = p * stop_pct
                stop = np.where(short, p + risk, p - risk)
                target = np.where(short, p - reward_risk * risk, p + reward_risk * risk)
                long_conf = 0.5 + 0.5 * (oversold - r) / oversold
                short_conf = 0.5 + 0.5 * (r - overbought) / (100.0 - overbought)
                confidence = np.minimum(max_conf, np.where(short, short_conf, long_conf))
            return Numbers(p, stop, target, confidence)

        def message(rows: np.ndarray, symbols: list[str]) -> list[str]:
            out = []
            for symbol, p, r, z in zip(
                symbols, price[rows].tolist(), rsi[rows].tolist(), zone[rows].tolist(), strict=True
            ):
                what, then = ("oversold", "bounce") if z == 1 else ("overbought", "fade")
                out.append(
                    f"RSI {what}: {symbol} RSI({column[4:]}) {r:.1f} at {fmt_price(p)}, watch for a {then}"
                )
            return out

        return Evaluation(zone, numbers, message)

    return Strategy(
        name=NAME,
        zones=(Zone("long", "rsi_oversold_bounce"), Zone("short", "rsi_overbought_fade")),
        evaluate=evaluate,
        needs=("price", column),
        fields=("price", column),
        params=params,
        builtin=True,
    )
