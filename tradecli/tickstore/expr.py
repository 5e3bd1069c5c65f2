"""``--where``: a small expression language compiled to a pyarrow compute expression.

The text is parsed with Python's ``ast`` module (parsing only - nothing is ever evaluated) and
every node is translated through a fixed table; anything else is refused. The result is a
``pyarrow.compute.Expression``, so the filter is pushed into the Parquet scan: row groups whose
statistics cannot match are skipped, nulls follow SQL (a comparison with null is not true), and
text and dictionary columns compare as text.

Grammar (numexpr's operators, as in ``trade screen``, plus words)::

    price > 100 and volume >= 1000          &, |, ~ work too: (price > 100) & (volume >= 1000)
    symbol in ("AAPL", "TSLA")              not in
    bid_size + ask_size > 500               + - * /  and unary -
    abs(close - open) / open > 0.02         abs(), isnull(), notnull()
    timestamp >= ts("2026-11-20T09:30")     ts(): a time, naive = New York (as --from)
    message == None  /  message != None     same as isnull()/notnull()
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tradecli.tickstore.timeparse import parse_time

TIMESTAMP = pa.timestamp("ns", tz="UTC")


class ExpressionError(ValueError):
    """Why an expression was refused (shown as a usage error)."""


@dataclass
class Compiled:
    expression: pc.Expression
    fields: set[str] = field(default_factory=set)


_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
}
_ARITHMETIC: dict[type, str] = {
    ast.Add: "add",
    ast.Sub: "subtract",
    ast.Mult: "multiply",
    ast.Div: "divide",
}


class _Translator:
    def __init__(self, text: str) -> None:
        self.text = text
        self.fields: set[str] = set()

    def fail(self, node: ast.AST, what: str) -> ExpressionError:
        col = getattr(node, "col_offset", None)
        where = f" at column {col + 1}" if col is not None else ""
        return ExpressionError(f"{what}{where} in {self.text!r}")

    def value(self, node: ast.AST) -> Any:
        """A constant, or a column/expression."""
        if isinstance(node, ast.Constant):
            if node.value is None or isinstance(node.value, bool | int | float | str):
                return node.value
            raise self.fail(node, f"unsupported constant {node.value!r}")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = self.value(node.operand)
            if isinstance(inner, int | float) and not isinstance(inner, bool):
                return -inner
            return pc.negate(inner)
        return self.expr(node)

    def expr(self, node: ast.AST) -> pc.Expression:
        if isinstance(node, ast.Name):
            if node.id in ("true", "True"):
                return pc.scalar(True)
            if node.id in ("false", "False"):
                return pc.scalar(False)
            self.fields.add(node.id)
            return pc.field(node.id)
        if isinstance(node, ast.Constant):
            return pc.scalar(self.value(node))
        if isinstance(node, ast.BoolOp):
            parts = [self.expr(v) for v in node.values]
            out = parts[0]
            for part in parts[1:]:
                out = (out & part) if isinstance(node.op, ast.And) else (out | part)
            return out
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not | ast.Invert):
                return ~self.expr(node.operand)
            if isinstance(node.op, ast.USub):
                return pc.negate(self.expr(node.operand))
            if isinstance(node.op, ast.UAdd):
                return self.expr(node.operand)
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.BitAnd):
                return self.expr(node.left) & self.expr(node.right)
            if isinstance(node.op, ast.BitOr):
                return self.expr(node.left) | self.expr(node.right)
            name = _ARITHMETIC.get(type(node.op))
            if name is None:
                raise self.fail(node, f"operator {type(node.op).__name__} is not supported")
            left, right = self.value(node.left), self.value(node.right)
            if name == "divide":  # true division, as numexpr and SQL on doubles
                left = self._as_expr(left).cast(pa.float64())
            return getattr(pc, name)(self._as_expr(left), self._as_expr(right))
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.fail(node, f"{type(node).__name__} is not allowed")

    def _as_expr(self, value: Any) -> pc.Expression:
        return value if isinstance(value, pc.Expression) else pc.scalar(value)

    def compare(self, node: ast.Compare) -> pc.Expression:
        out: pc.Expression | None = None
        left_node = node.left
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                if not isinstance(right_node, ast.Tuple | ast.List | ast.Set):
                    raise self.fail(right_node, '\'in\' needs a list of values, like ("AAPL", "TSLA")')
                values = [self.value(v) for v in right_node.elts]
                if any(isinstance(v, pc.Expression) for v in values):
                    raise self.fail(right_node, "'in' takes constants only")
                column = self.expr(left_node)
                test = column.isin(pa.array(values))
                # SQL: a missing value is neither in nor not in a list
                part = (~test & ~column.is_null()) if isinstance(op, ast.NotIn) else test
            elif isinstance(op, ast.Is | ast.IsNot) or (
                isinstance(op, ast.Eq | ast.NotEq)
                and isinstance(right_node, ast.Constant)
                and right_node.value is None
            ):
                if not (isinstance(right_node, ast.Constant) and right_node.value is None):
                    raise self.fail(right_node, "'is' compares with None only")
                test = self.expr(left_node).is_null()
                part = ~test if isinstance(op, ast.IsNot | ast.NotEq) else test
            else:
                compare = _COMPARE.get(type(op))
                if compare is None:
                    raise self.fail(node, f"comparison {type(op).__name__} is not supported")
                left, right = self.value(left_node), self.value(right_node)
                if not isinstance(left, pc.Expression) and not isinstance(right, pc.Expression):
                    raise self.fail(node, "a comparison needs a column on one side")
                part = compare(self._as_expr(left), self._as_expr(right))
            out = part if out is None else out & part
            left_node = right_node
        assert out is not None
        return out

    def call(self, node: ast.Call) -> pc.Expression:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if node.keywords or name not in ("abs", "isnull", "notnull", "ts"):
            raise self.fail(node, "only abs(), isnull(), notnull() and ts() may be called")
        if len(node.args) != 1:
            raise self.fail(node, f"{name}() takes one argument")
        (arg,) = node.args
        if name == "ts":
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str | int)):
                raise self.fail(node, 'ts() takes a time in quotes, like ts("2026-11-20T09:30")')
            try:
                ns = parse_time(str(arg.value))
            except ValueError as err:
                raise self.fail(node, str(err)) from None
            return pc.scalar(pa.scalar(ns, type=TIMESTAMP))
        inner = self.expr(arg)
        if name == "abs":
            return pc.abs(inner)
        return inner.is_null() if name == "isnull" else ~inner.is_null()


def compile_where(text: str) -> Compiled:
    """Parse and translate; raises :class:`ExpressionError` for anything outside the grammar."""
    source = text.strip()
    if not source:
        raise ExpressionError("the expression is empty")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as err:
        raise ExpressionError(f"syntax error at column {err.offset or 0} in {text!r}") from None
    translator = _Translator(text)
    expression = translator.expr(tree.body)
    return Compiled(expression, translator.fields)
