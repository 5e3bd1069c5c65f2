"""User strategies: numexpr expressions from a TOML file (``--strategies``) or ``--where``.

An expression is parsed with :mod:`ast` and checked node by node before numexpr sees it: column
and parameter names, numbers, arithmetic, comparisons (chains allowed), ``and``/``or``/``not``
(rewritten to numexpr's ``&``/``|``/``~``) and numexpr's element-wise functions. Anything else -
attribute access, indexing, text, lambdas, comprehensions, any other call - is refused at
start-up with a message that says what and where, as is a name that is neither a parameter nor a
column the pipeline can carry. The checked tree is turned back into text for numexpr, which
evaluates it on whole batches; Python's ``eval`` never sees user text.

Example: trade screen --where 'gap_pct > 0.05 and volume_ratio > 2'
"""

from __future__ import annotations

import ast
import difflib
import math
import re
import string
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tradecli.strategies import COMMON_KEYS, Evaluation, Numbers, Strategy, Zone

if TYPE_CHECKING:
    import numpy as np

    from tradecli.screener import Columns

# Numeric record fields (DESIGN.md section 2) an expression may read.
RECORD_COLUMNS = (
    "price",
    "volume",
    "prev_close",
    "bid",
    "ask",
    "bid_size",
    "ask_size",
    "open",
    "high",
    "low",
    "close",
    "trades",
)
# What enrich adds (DESIGN.md section 4); periods vary with its options.
ENRICH_COLUMNS = ("vwap", "volume_ratio", "gap_pct", "day_high", "day_low", "day_volume", "mid", "spread")
ENRICH_PATTERN = re.compile(
    r"^(?:(?:sma|ema|rsi|avg_volume|atr)_[1-9]\d*"
    r"|macd(?:_signal|_hist)?(?:_[1-9]\d*){3}"
    r"|bb_(?:upper|middle|lower)_[1-9]\d*_m?\d+(?:p\d+)?)$"
)  # the names enrich gives them (sma_20, macd_12_26_9, bb_upper_20_2p5): a typo is refused

# numexpr's element-wise functions (its reductions and complex/text functions are left out).
FUNCTIONS = frozenset(
    (
        "abs",
        "arccos",
        "arccosh",
        "arcsin",
        "arcsinh",
        "arctan",
        "arctan2",
        "arctanh",
        "ceil",
        "copysign",
        "cos",
        "cosh",
        "exp",
        "expm1",
        "floor",
        "fmod",
        "hypot",
        "isfinite",
        "isinf",
        "isnan",
        "log",
        "log10",
        "log1p",
        "log2",
        "maximum",
        "minimum",
        "nextafter",
        "round",
        "sign",
        "signbit",
        "sin",
        "sinh",
        "sqrt",
        "tan",
        "tanh",
        "trunc",
        "where",
    )
)
MAX_LENGTH = 2000
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
SIGNAL_NAMES = (
    "symbol",
    "strategy",
    "side",
    "signal_type",
    "confidence",
    "entry_price",
    "stop_loss",
    "target",
)
MESSAGE_NAMES = (*SIGNAL_NAMES, "rr_ratio")
STRATEGY_KEYS = frozenset(
    {
        "where",
        "side",
        "signal_type",
        "entry_price",
        "stop_loss",
        "target",
        "confidence",
        "message",
        "cooldown",
        "max_per_day",
        "params",
    }
)


class ExpressionError(ValueError):
    """A user strategy or expression that cannot be accepted; the message says why."""


def is_known_column(name: str) -> bool:
    return name in RECORD_COLUMNS or name in ENRICH_COLUMNS or bool(ENRICH_PATTERN.match(name))


def known_column_names() -> list[str]:
    common = ["sma_20", "ema_9", "rsi_14", "avg_volume_20"]
    return [*RECORD_COLUMNS, *ENRICH_COLUMNS, *common]


# ---------------------------------------------------------------------------------------------
# Expressions


@dataclass(frozen=True)
class Expression:
    text: str  # as the user wrote it
    source: str  # the checked text numexpr evaluates
    columns: tuple[str, ...]  # columns it reads, in order of first use
    params: tuple[str, ...] = ()  # parameters it reads

    def evaluate(
        self, cols: Columns, params: Mapping[str, float], rows: np.ndarray | None = None
    ) -> np.ndarray:
        """The value for every row of the batch, or for ``rows`` only."""
        import numexpr
        import numpy as np

        if rows is None:
            local: dict[str, Any] = {name: cols.values(name) for name in self.columns}
        else:
            local = {name: cols.values(name)[rows] for name in self.columns}
        local.update({name: params[name] for name in self.params})
        with np.errstate(all="ignore"):
            result = numexpr.evaluate(self.source, local_dict=local, global_dict={})
        return np.broadcast_to(np.asarray(result), (cols.n if rows is None else len(rows),))


class _Checker(ast.NodeTransformer):
    """Refuses every node that is not part of a numexpr expression; rewrites the friendly forms."""

    def __init__(self, is_column: Callable[[str], bool], params: Mapping[str, float]) -> None:
        self.is_column = is_column
        self.params = params
        self.columns: list[str] = []
        self.used_params: list[str] = []

    def refuse(self, node: ast.AST, what: str) -> ExpressionError:
        column = getattr(node, "col_offset", None)
        where = f" at column {column + 1}" if column is not None else ""
        return ExpressionError(f"{what}{where} is not allowed in an expression")

    def generic_visit(self, node: ast.AST) -> ast.AST:
        raise self.refuse(node, _describe(node))

    def visit_Expression(self, node: ast.Expression) -> ast.AST:
        body: ast.expr = self.visit(node.body)
        node.body = body
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        op: ast.operator = ast.BitAnd() if isinstance(node.op, ast.And) else ast.BitOr()
        values: list[ast.expr] = [self.visit(v) for v in node.values]
        out: ast.expr = values[0]
        for value in values[1:]:
            out = ast.BinOp(left=out, op=op, right=value)
        return out

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        allowed = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.Mod, ast.BitAnd, ast.BitOr)
        if not isinstance(node.op, allowed):
            raise self.refuse(node, f"the operator {_OPERATORS.get(type(node.op), type(node.op).__name__)}")
        node.left = self.visit(node.left)
        node.right = self.visit(node.right)
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        node.operand = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return ast.UnaryOp(op=ast.Invert(), operand=node.operand)
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        allowed = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)
        for op in node.ops:
            if not isinstance(op, allowed):
                raise self.refuse(node, f"the comparison {_OPERATORS.get(type(op), type(op).__name__)}")
        operands = [self.visit(node.left), *(self.visit(c) for c in node.comparators)]
        parts: list[ast.expr] = [
            ast.Compare(left=operands[i], ops=[op], comparators=[operands[i + 1]])
            for i, op in enumerate(node.ops)
        ]
        out = parts[0]
        for part in parts[1:]:  # a < b < c -> (a < b) & (b < c)
            out = ast.BinOp(left=out, op=ast.BitAnd(), right=part)
        return out

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if not isinstance(node.func, ast.Name):
            raise self.refuse(node, "calling " + _describe(node.func))
        name = node.func.id
        if name not in FUNCTIONS:
            raise ExpressionError(
                f"function {name!r} is not allowed; numexpr's functions are: {', '.join(sorted(FUNCTIONS))}"
            )
        if node.keywords:
            raise self.refuse(node, f"a keyword argument to {name}()")
        node.args = [self.visit(a) for a in node.args]
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        name = node.id
        if name in self.params:
            if name not in self.used_params:
                self.used_params.append(name)
            return node
        if name.startswith("_") or not self.is_column(name):
            raise ExpressionError(_unknown(name, self.params))
        if name not in self.columns:
            self.columns.append(name)
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, bool | int | float) and not isinstance(node.value, complex):
            return node
        if isinstance(node.value, str | bytes):
            raise self.refuse(node, "text")
        raise self.refuse(node, repr(node.value))


_OPERATORS: dict[type, str] = {
    ast.FloorDiv: "//",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitXor: "^",
    ast.MatMult: "@",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
}

_NODE_NAMES: dict[type, str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "indexing",
    ast.Lambda: "a lambda",
    ast.IfExp: "an if-else expression",
    ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a comprehension",
    ast.List: "a list",
    ast.Tuple: "a tuple",
    ast.Set: "a set",
    ast.Dict: "a dict",
    ast.Starred: "unpacking",
    ast.NamedExpr: "assignment (:=)",
    ast.JoinedStr: "text",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "a slice",
}


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"attribute access (.{node.attr})"
    return _NODE_NAMES.get(type(node), type(node).__name__)


def _unknown(name: str, params: Mapping[str, float]) -> str:
    candidates = [*known_column_names(), *params]
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return (
        f"unknown column {name!r}{hint}; expressions read record fields (price, volume, bid, ...), "
        "enrich's columns (vwap, volume_ratio, gap_pct, day_high, sma_N, ema_N, rsi_N, avg_volume_N, ...), "
        "the strategy's params, and columns declared in the strategies file's `columns`"
    )


def parse_expression(
    text: str,
    *,
    kind: str,
    is_column: Callable[[str], bool] = is_known_column,
    params: Mapping[str, float] | None = None,
) -> Expression:
    """Check ``text`` and return it ready for numexpr; ``kind`` is 'condition' or 'number'.

    Raises :class:`ExpressionError` with a message fit for the user.
    """
    params = params or {}
    if not isinstance(text, str):
        raise ExpressionError(f"expected an expression as text, not {type(text).__name__}")
    if not text.strip():
        raise ExpressionError("the expression is empty")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"the expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        where = f" at column {err.offset}" if err.offset else ""
        raise ExpressionError(f"syntax error{where}: {err.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise ExpressionError("the expression is too deeply nested or not valid text") from None
    checker = _Checker(is_column, params)
    try:
        checked = checker.visit(tree)
    except RecursionError:
        raise ExpressionError("the expression is too deeply nested") from None
    source = ast.unparse(ast.fix_missing_locations(checked))
    expression = Expression(text, source, tuple(checker.columns), tuple(checker.used_params))
    _try(expression, kind, params)
    return expression


def _try(expression: Expression, kind: str, params: Mapping[str, float]) -> None:
    """Evaluate once on made-up numbers: numexpr's own checks (arity, types) run at start-up."""
    import numexpr
    import numpy as np

    local: dict[str, Any] = {name: np.array([1.0, 2.0]) for name in expression.columns}
    local.update({name: params[name] for name in expression.params})
    try:
        with np.errstate(all="ignore"):
            result = np.asarray(numexpr.evaluate(expression.source, local_dict=local, global_dict={}))
    except Exception as err:
        raise ExpressionError(f"numexpr cannot evaluate it: {err}") from None
    if kind == "condition" and result.dtype != np.bool_:
        raise ExpressionError("a condition must be true or false (a comparison), not a number")
    if kind == "number" and result.dtype == np.bool_:
        raise ExpressionError("expected a number, not a true/false condition")


# ---------------------------------------------------------------------------------------------
# Message templates


@dataclass(frozen=True)
class Template:
    """A message like ``'{symbol} gapped {gap_pct:.1%}'``: plain fields, no attribute or index access."""

    text: str
    parts: tuple[tuple[str, str | None, str, str | None], ...]  # literal, field, spec, conversion
    columns: tuple[str, ...]

    def render(self, values: Mapping[str, Any]) -> str:
        out = []
        for literal, name, spec, conversion in self.parts:
            out.append(literal)
            if name is None:
                continue
            value = values.get(name)
            if value is None:
                out.append("n/a")
                continue
            if conversion == "r":
                value = repr(value)
            elif conversion in ("s", "a"):
                value = str(value) if conversion == "s" else ascii(value)
            try:
                out.append(format(value, spec))
            except (ValueError, TypeError):
                out.append(str(value))
        return "".join(out)


def parse_template(text: str, *, is_column: Callable[[str], bool], params: Mapping[str, float]) -> Template:
    if not isinstance(text, str):
        raise ExpressionError(f"a message must be text, not {type(text).__name__}")
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:
        raise ExpressionError(f"message {text!r}: {err}") from None
    parts: list[tuple[str, str | None, str, str | None]] = []
    columns: list[str] = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            parts.append((literal, None, "", None))
            continue
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ExpressionError(
                f"message {text!r}: field {{{name}}} must be a plain name (no attribute access, "
                "indexing or positional fields)"
            )
        if "{" in (spec or ""):
            raise ExpressionError(f"message {text!r}: nested fields in a format spec are not allowed")
        if name not in MESSAGE_NAMES and name not in params:
            if not is_column(name):
                raise ExpressionError(f"message {text!r}: {_unknown(name, params)}")
            if name not in columns:
                columns.append(name)
        spec = spec or ""
        if not any(_formats(sample, spec) for sample in (1.5, 1500, "AAPL")):
            raise ExpressionError(f"message {text!r}: {{{name}:{spec}}} is not a valid format")
        parts.append((literal, name, spec, conversion))
    return Template(text, tuple(parts), tuple(columns))


def _formats(sample: Any, spec: str) -> bool:
    try:
        format(sample, spec)
    except (ValueError, TypeError):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# User strategies


@dataclass
class UserSpec:
    """A user strategy as written, checked; :meth:`build` turns it into a :class:`Strategy`."""

    name: str
    where: Expression
    side: str = "long"
    signal_type: str = ""
    entry: Expression | None = None
    stop: Expression | None = None
    target: Expression | None = None
    confidence: Expression | None = None
    message: Template | None = None
    cooldown: float = 300.0
    max_per_day: int = 50
    params: dict[str, float] = field(default_factory=dict)

    def columns(self) -> tuple[str, ...]:
        exprs = [self.where, self.entry, self.stop, self.target, self.confidence]
        names = [c for e in exprs if e is not None for c in e.columns]
        if self.entry is None:
            names.append("price")  # the default entry
        if self.message is not None:
            names += list(self.message.columns)
        return tuple(dict.fromkeys(names))

    def describe(self) -> str:
        parts = [f"where {self.where.text}"]
        if self.entry is None:
            parts.append("entry_price = the record's price")
        for label, expr in (
            ("entry_price", self.entry),
            ("stop_loss", self.stop),
            ("target", self.target),
            ("confidence", self.confidence),
        ):
            if expr is not None:
                parts.append(f"{label} = {expr.text}")
        return "; ".join(parts)

    def build(self, params: Mapping[str, float] | None = None) -> Strategy:
        values = dict(self.params)
        values.update(params or {})
        spec = self
        fields = self.columns()

        def evaluate(cols: Columns) -> Evaluation:
            import numpy as np

            zone = spec.where.evaluate(cols, values).astype(np.int8)

            def numbers(rows: np.ndarray) -> Numbers:
                def number(expr: Expression | None) -> np.ndarray | None:
                    if expr is None:
                        return None
                    return np.asarray(expr.evaluate(cols, values, rows), dtype=np.float64)

                confidence = number(spec.confidence)
                if confidence is None:
                    confidence = np.full(len(rows), 0.5)  # the design document's default
                entry = number(spec.entry) if spec.entry is not None else record_price(cols, rows)
                return Numbers(entry, number(spec.stop), number(spec.target), confidence)

            def message(rows: np.ndarray, symbols: list[str]) -> list[str]:
                template = spec.message
                if template is None:
                    return [f"{spec.name} signal on {symbol}" for symbol in symbols]
                found = {name: cols.pylist(name, rows) for name in template.columns}
                at = numbers(rows)

                def listed(array: np.ndarray | None) -> list[Any]:
                    return [None] * len(rows) if array is None else array.tolist()

                fixed = {
                    "entry_price": listed(at.entry),
                    "stop_loss": listed(at.stop),
                    "target": listed(at.target),
                    "confidence": np.clip(at.confidence, 0.0, 1.0).tolist(),
                }
                out = []
                for i, symbol in enumerate(symbols):
                    row = {name: column[i] for name, column in found.items()}
                    row.update({name: column[i] for name, column in fixed.items()})
                    row.update(values)
                    row["rr_ratio"] = _rr(row["entry_price"], row["stop_loss"], row["target"])
                    row.update(
                        symbol=symbol, strategy=spec.name, side=spec.side, signal_type=spec.signal_type
                    )
                    out.append(template.render(row))
                return out

            return Evaluation(zone, numbers, message)

        return Strategy(
            name=self.name,
            zones=(Zone(self.side, self.signal_type or self.name),),
            evaluate=evaluate,
            needs=self.where.columns,
            fields=fields,
            cooldown=self.cooldown,
            max_per_day=self.max_per_day,
            params=values,
            builtin=False,
        )


def record_price(cols: Columns, rows: np.ndarray) -> np.ndarray:
    """The default entry: the record's price - a trade's price, a bar's close, a quote's mid."""
    import numpy as np

    price: np.ndarray = cols.values("price")[rows]
    known = cols.valid("price")[rows]
    if known.all():
        return price
    with np.errstate(all="ignore"):
        mid = (cols.values("bid")[rows] + cols.values("ask")[rows]) / 2
    if cols.has("mid"):
        mid = np.where(cols.valid("mid")[rows], cols.values("mid")[rows], mid)
    return np.where(known, price, mid)  # type: ignore[no-any-return]


def _rr(entry: float | None, stop: float | None, target: float | None) -> float | None:
    if entry is None or stop is None or target is None:
        return None
    risk = abs(entry - stop)
    return abs(target - entry) / risk if risk > 0 else 0.0


def column_checker(extra: Iterable[str] = ()) -> Callable[[str], bool]:
    declared = frozenset(extra)
    return lambda name: name in declared or is_known_column(name)


def where_spec(
    text: str, *, name: str = "where", side: str = "long", is_column: Callable[[str], bool] = is_known_column
) -> UserSpec:
    """The ad hoc strategy of ``--where EXPR``: entry at the price, the design document's defaults."""
    try:
        where = parse_expression(text, kind="condition", is_column=is_column)
    except ExpressionError as err:
        raise ExpressionError(f"{text!r}: {err}") from None
    message = parse_template(
        "{symbol} matched " + text.replace("{", "{{").replace("}", "}}"), is_column=is_column, params={}
    )
    return UserSpec(name=name, where=where, side=side, signal_type=name, message=message)


@dataclass
class StrategyFile:
    """What a ``--strategies`` TOML file holds."""

    path: str
    strategies: list[UserSpec]
    builtin: dict[str, dict[str, Any]]  # [builtin.NAME] tables: parameter and limit overrides
    columns: tuple[str, ...]


def load_strategy_file(
    path: str, builtins: Iterable[str], parse_duration: Callable[[str], float]
) -> StrategyFile:
    """Read and check a strategies file; every problem is an :class:`ExpressionError` naming it."""
    try:
        with open(path, "rb") as handle:
            doc = tomllib.load(handle)
    except FileNotFoundError:
        raise ExpressionError(f"{path}: no such file") from None
    except OSError as err:
        raise ExpressionError(f"{path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ExpressionError(f"{path}: {err}") from None
    builtin_names = set(builtins)
    unknown = set(doc) - {"strategy", "builtin", "columns"}
    if unknown:
        raise ExpressionError(
            f"{path}: unknown table or key {sorted(unknown)[0]!r} (expected [strategy.NAME], "
            "[builtin.NAME] and columns)"
        )
    columns = doc.get("columns", [])
    if not isinstance(columns, list) or not all(isinstance(c, str) and NAME_RE.match(c) for c in columns):
        raise ExpressionError(f"{path}: columns must be a list of lower-case names")
    is_column = column_checker(columns)
    builtin = doc.get("builtin", {})
    if not isinstance(builtin, dict):
        raise ExpressionError(f"{path}: builtin must be a table of [builtin.NAME] tables")
    for name, table in builtin.items():
        if name not in builtin_names:
            raise ExpressionError(f"{path}: [builtin.{name}]: no built-in strategy is called {name!r}")
        if not isinstance(table, dict):
            raise ExpressionError(f"{path}: [builtin.{name}] must be a table")
    strategies = []
    tables = doc.get("strategy", {})
    if not isinstance(tables, dict):
        raise ExpressionError(f"{path}: strategy must be a table of [strategy.NAME] tables")
    for name, table in tables.items():
        where = f"{path}: [strategy.{name}]"
        if not NAME_RE.match(name):
            raise ExpressionError(f"{where}: a strategy name is lower-case letters, digits and _")
        if name in builtin_names or name == "where":
            raise ExpressionError(f"{where}: {name!r} is a built-in name; choose another")
        if not isinstance(table, dict):
            raise ExpressionError(f"{where} must be a table")
        try:
            strategies.append(_user_spec(name, table, is_column, parse_duration))
        except ExpressionError as err:
            raise ExpressionError(f"{where}: {err}") from None
    return StrategyFile(path, strategies, builtin, tuple(columns))


def _user_spec(
    name: str, table: dict[str, Any], is_column: Callable[[str], bool], parse_duration: Callable[[str], float]
) -> UserSpec:
    unknown = set(table) - STRATEGY_KEYS
    if unknown:
        raise ExpressionError(
            f"unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(STRATEGY_KEYS))})"
        )
    if "where" not in table:
        raise ExpressionError("a strategy needs `where`, a condition")
    params_table = table.get("params", {})
    if not isinstance(params_table, dict):
        raise ExpressionError("params must be a table of numbers")
    params: dict[str, float] = {}
    for key, value in params_table.items():
        if not NAME_RE.match(key) or key in COMMON_KEYS:
            raise ExpressionError(f"params: {key!r} is not a usable parameter name")
        if is_column(key) or key in FUNCTIONS:
            raise ExpressionError(f"params: {key!r} is a column or function name; choose another")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ExpressionError(f"params: {key} must be a finite number")
        params[key] = float(value)

    def expr(key: str, kind: str, default: str | None = None) -> Expression | None:
        value = table.get(key, default)
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = repr(float(value))
        try:
            return parse_expression(value, kind=kind, is_column=is_column, params=params)
        except ExpressionError as err:
            raise ExpressionError(f"{key}: {err}") from None

    side = table.get("side", "long")
    if side not in ("long", "short"):
        raise ExpressionError(f"side must be 'long' or 'short', not {side!r}")
    signal_type = table.get("signal_type", name)
    if not isinstance(signal_type, str) or not signal_type:
        raise ExpressionError("signal_type must be text")
    message = None
    if "message" in table:
        try:
            message = parse_template(table["message"], is_column=is_column, params=params)
        except ExpressionError as err:
            raise ExpressionError(f"message: {err}") from None
    where = expr("where", "condition")
    assert where is not None
    return UserSpec(
        name=name,
        where=where,
        side=side,
        signal_type=signal_type,
        entry=expr("entry_price", "number"),
        stop=expr("stop_loss", "number"),
        target=expr("target", "number"),
        confidence=expr("confidence", "number"),
        message=message,
        cooldown=_duration(table.get("cooldown", 300.0), parse_duration),
        max_per_day=_whole(table.get("max_per_day", 50), "max_per_day"),
        params=params,
    )


def _duration(value: Any, parse_duration: Callable[[str], float]) -> float:
    if isinstance(value, bool):
        raise ExpressionError("cooldown must be a duration such as '5m' or a number of seconds")
    if isinstance(value, int | float):
        if value < 0:
            raise ExpressionError("cooldown must not be negative")
        return float(value)
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except Exception:
            raise ExpressionError(f"cooldown {value!r} is not a duration (try 30s, 5m, 1h)") from None
    raise ExpressionError("cooldown must be a duration such as '5m' or a number of seconds")


def _whole(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ExpressionError(f"{what} must be a whole number >= 0 (0 = no limit)")
    return value
