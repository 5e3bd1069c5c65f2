"""Screening strategies for ``trade screen``: one module per built-in, named on :data:`BUILTINS`.

A built-in strategy module holds its documentation (``TITLE``, ``RULE``, ``PARAMS``, default
``COOLDOWN`` and ``MAX_PER_DAY``) as plain constants, so ``trade --help`` stays fast, and a
``build(params)`` function that returns a :class:`Strategy`; numpy is imported inside it. User
strategies (TOML files and ``--where``) are built by :mod:`tradecli.strategies.expressions`.

A strategy's ``evaluate`` looks at a whole batch at once and says, for every row, which *zone*
the row is in: ``-1`` when the row cannot be judged (a field the rule needs is missing), ``0``
when the condition is off, ``k >= 1`` when it is on in its k-th variant (RSI extreme has two:
oversold and overbought). The screener fires when a symbol's zone changes to an on-zone.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from tradecli.screener import Columns

# The built-in strategies, in the order they run and are listed.
BUILTINS: tuple[str, ...] = ("gap_and_go", "hod_breakout", "vwap_reclaim", "rsi_extreme", "volume_spike")

# Keys of --param NAME.KEY=VALUE that every strategy accepts besides its own parameters.
COMMON_KEYS = ("cooldown", "max_per_day")


@dataclass(frozen=True)
class Zone:
    """What a signal fired in this zone says: its side and its signal_type."""

    side: str
    signal_type: str


@dataclass
class Numbers:
    """The numbers of the signals at some rows: arrays aligned with those rows."""

    entry: np.ndarray | None
    stop: np.ndarray | None
    target: np.ndarray | None
    confidence: np.ndarray
    # other numbers a signal shows (in its message): a row where one is NaN/inf is skipped too
    checks: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Evaluation:
    """A strategy's verdict on every row of a batch, and how to price the rows that fire.

    The zone is computed for every row; numbers and messages only for the few rows that are on
    (``numbers``) or actually fire (``message``), which keeps the per-batch cost in the zone.
    """

    zone: np.ndarray  # int8 per row: -1 cannot tell, 0 off, k on (variant k)
    numbers: Callable[[np.ndarray], Numbers]  # rows -> the numbers of signals at those rows
    # message(rows, symbols) -> one text per fired row (rows index the batch, symbols are theirs)
    message: Callable[[np.ndarray, list[str]], list[str]]


@dataclass
class Strategy:
    """One screen, ready to run: its rule as a batch function plus its rate limits."""

    name: str
    zones: tuple[Zone, ...]  # zones[k - 1] describes on-zone k
    evaluate: Callable[[Columns], Evaluation]
    needs: tuple[str, ...]  # a row missing one of these cannot be judged (its zone is held)
    fields: tuple[str, ...]  # the input fields a signal carries: what the rule read
    cooldown: float = 300.0  # seconds of event time per (symbol, strategy)
    max_per_day: int = 50  # per New York day; 0 = no limit
    initial: int = 0  # the zone assumed before a symbol's first judged record of a day
    params: dict[str, float] = field(default_factory=dict)
    builtin: bool = False
    state_key: str = ""  # where its state is kept; the name unless set (--where keys by expression)

    @property
    def key(self) -> str:
        return self.state_key or self.name


def builtin_module(name: str) -> ModuleType:
    if name not in BUILTINS:
        raise KeyError(name)
    return importlib.import_module(f"tradecli.strategies.{name}")


def param_defaults(module: ModuleType) -> dict[str, float]:
    return {key: value for key, (value, _help) in module.PARAMS.items()}


def resolve_params(
    name: str, defaults: Mapping[str, float], overrides: Mapping[str, Any]
) -> dict[str, float]:
    """Defaults with overrides applied; whole-number parameters (periods) must stay whole."""
    out = dict(defaults)
    for key, value in overrides.items():
        if key not in defaults:
            known = ", ".join([*defaults, *COMMON_KEYS])
            raise ValueError(f"{name} has no parameter {key!r} (it has: {known})")
        default = defaults[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name}.{key} must be a number, not {value!r}")
        number = float(value)
        if not math.isfinite(number):  # NaN would quietly switch a threshold off
            raise ValueError(f"{name}.{key} must be a finite number, not {value!r}")
        if isinstance(default, int) and not isinstance(default, bool):
            if not number.is_integer() or number < 1:
                raise ValueError(f"{name}.{key} must be a whole number >= 1, not {value}")
            out[key] = int(number)
        else:
            out[key] = number
    return out


def describe_params(module: ModuleType) -> list[tuple[str, str, str]]:
    """(name, default, help) for each parameter of a built-in, for --list and the docs."""
    return [(key, _number(value), help_text) for key, (value, help_text) in module.PARAMS.items()]


def _number(value: float) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def hold_where(zone: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A new int8 ``zone`` that is -1 (cannot tell) where ``mask`` is true.

    A bitwise OR with all bits set (int8 -1) under the mask and 0 elsewhere: one cheap pass,
    where np.where or np.putmask on a mask as dense as "no price on a quote" takes 10-15x longer.
    """
    out: np.ndarray = zone | -mask.view("int8")
    return out


def fmt_price(value: float) -> str:
    """A price as traders read it: cents at $1 and above, four decimals below."""
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"
