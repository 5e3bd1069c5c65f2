"""volume_spike: one print many times the symbol's average size; the side follows VWAP."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tradecli.strategies import Evaluation, Numbers, Strategy, Zone, fmt_price, hold_where

if TYPE_CHECKING:
    import numpy as np

    from tradecli.screener import Columns

NAME = "volume_spike"
TITLE = "Volume spike"
SIDES = "long, short"
COOLDOWN = "5m"
MAX_PER_DAY = 50
PARAMS: dict[str, tuple[float, str]] = {
    "period": (20, "which average: avg_volume_<period> (enrich --volume-avg)"),
    "min_ratio": (5.0, "smallest volume / avg_volume_<period>"),
    "min_volume": (1000.0, "smallest print, in shares"),
    "stop_pct": (0.02, "stop_loss = price * (1 -/+ stop_pct)"),
    "reward_risk": (2.0, "target = entry_price +/- reward_risk * risk"),
    "max_confidence": (0.9, "the highest confidence given"),
}
RULE = (
    "ratio = volume / avg_volume_<period> (avg_volume_20 by default). Fires when ratio >= "
    "min_ratio and volume >= min_volume: long (signal_type volume_spike_up) when price >= vwap, "
    "short (signal_type volume_spike_down) below it. confidence = min(max_confidence, 0.5 * ratio "
    "/ min_ratio); entry_price = price; stop_loss = price * (1 -/+ stop_pct); target = price +/- "
    "reward_risk * |price - stop_loss|. Needs price, volume, vwap and a positive average."
)


def build(params: dict[str, float]) -> Strategy:
    column = f"avg_volume_{int(params['period'])}"
    min_ratio = params["min_ratio"]
    min_volume = params["min_volume"]
    stop_pct = params["stop_pct"]
    reward_risk = params["reward_risk"]
    max_conf = params["max_confidence"]

    def evaluate(cols: Columns) -> Evaluation:
        import numpy as np

        price = cols.values("price")
        volume = cols.values("volume")
        average = cols.values(column)
        vwap = cols.values("vwap")
        with np.errstate(all="ignore"):
            ratio = volume / average
            spike = (ratio >= min_ratio) & (volume >= min_volume)
            down = price < vwap
            unknown = ~(average > 0)
        zone = spike.view(np.int8) + (spike & down).view(np.int8)  # 1 a spike, 2 one below vwap
        zone = hold_where(zone, unknown)

        def numbers(rows: np.ndarray) -> Numbers:
            p, short = price[rows], down[rows]
            with np.errstate(all="ignore"):
                risk = p * stop_pct
                stop = np.where(short, p + risk, p - risk)
                target = np.where(short, p - reward_risk * risk, p + reward_risk * risk)
                confidence = np.minimum(max_conf, 0.5 * ratio[rows] / min_ratio)
            return Numbers(p, stop, target, confidence)

        def message(rows: np.ndarray, symbols: list[str]) -> list[str]:
            out = []
            for symbol, p, v, r, d in zip(
                symbols,
                price[rows].tolist(),
                volume[rows].tolist(),
                ratio[rows].tolist(),
                down[rows].tolist(),
                strict=True,
            ):
                side = "below" if d else "above"
                out.append(
                    f"Volume spike: {symbol} {v:,.0f} shares, {r:.1f}x the average, "
                    f"at {fmt_price(p)} {side} VWAP"
                )
            return out

        return Evaluation(zone, numbers, message)

    return Strategy(
        name=NAME,
        zones=(Zone("long", "volume_spike_up"), Zone("short", "volume_spike_down")),
        evaluate=evaluate,
        needs=("price", "volume", "vwap", column),
        fields=("price", "volume", "vwap", column),
        params=params,
        builtin=True,
    )
