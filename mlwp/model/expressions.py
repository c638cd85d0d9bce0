"""Safe expressions for ``derive`` and ``filter`` steps, parsed with ast and never eval'ed."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from mlwp.model.features import Array, Columns, PreprocessingError, _is_missing, _require

if TYPE_CHECKING:
    pass


# --------------------------------------------------------------------------------------------
# Safe expressions (derive, filter): arithmetic, comparisons, boolean logic, column names,
# numbers, strings and a few numpy functions. Parsed with ast; nothing is ever eval'ed.

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_FUNCTIONS: dict[str, Callable[..., Any] | None] = {
    "abs": np.abs,
    "log": np.log,
    "log1p": np.log1p,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "minimum": np.minimum,
    "maximum": np.maximum,
    "isnull": None,  # handled by _isnull: it also accepts text
}


class Expression:
    """A parsed, validated expression over column names, evaluated on numpy arrays."""

    def __init__(self, text: str, *, where: str) -> None:
        self.text = text
        self.where = where
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError as exc:
            raise PreprocessingError(
                f"{where}: invalid expression {text!r}: {exc.msg}", code="invalid_expression"
            ) from exc
        self.tree = tree.body
        self.columns: list[str] = []
        self._check(self.tree)

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            if node.id not in self.columns:
                self.columns.append(node.id)
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, int | float | str | bool) and node.value is not None:
                self._refuse(node)
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            self._check(node.left)
            self._check(node.right)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd | ast.Not):
            self._check(node.operand)
        elif isinstance(node, ast.BoolOp):
            for value in node.values:
                self._check(value)
        elif isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            self._check(node.left)
            for comparator in node.comparators:
                self._check(comparator)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
        ):
            for arg in node.args:
                self._check(arg)
        elif isinstance(node, ast.IfExp):
            for part in (node.test, node.body, node.orelse):
                self._check(part)
        else:
            self._refuse(node)

    def _refuse(self, node: ast.AST) -> None:
        snippet = ast.get_source_segment(self.text, node) or type(node).__name__
        raise PreprocessingError(
            f"{self.where}: {snippet!r} is not allowed in expression {self.text!r} (allowed: "
            "column names, numbers, strings, + - * / // % **, comparisons, and/or/not, "
            f"x if c else y, {', '.join(sorted(_FUNCTIONS))})",
            code="invalid_expression",
        )

    def evaluate(self, columns: Columns) -> Array:
        _require(columns, self.columns, self.where)
        with np.errstate(all="ignore"):
            result = self._eval(self.tree, columns)
        array = np.asarray(result)
        if array.ndim == 0:
            array = np.full(columns.size, array.item())
        if array.dtype == object:
            raise PreprocessingError(
                f"{self.where}: expression {self.text!r} gives text, not a number",
                code="invalid_expression",
            )
        return array.astype(np.float64)

    def _eval(self, node: ast.AST, columns: Columns) -> Any:
        if isinstance(node, ast.Name):
            return columns.data[node.id]
        if isinstance(node, ast.Constant):
            return np.nan if node.value is None else node.value
        if isinstance(node, ast.BinOp):
            left, right = self._eval(node.left, columns), self._eval(node.right, columns)
            self._numeric(left, right)
            return _BINARY[type(node.op)](_float(left), _float(right))
        if isinstance(node, ast.UnaryOp):
            operand = self._eval(node.operand, columns)
            self._numeric(operand)
            if isinstance(node.op, ast.Not):
                return ~_truth(operand)
            return -_float(operand) if isinstance(node.op, ast.USub) else _float(operand)
        if isinstance(node, ast.BoolOp):
            values = [_truth(self._eval(value, columns)) for value in node.values]
            combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            out = values[0]
            for value in values[1:]:
                out = combine(out, value)
            return out
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, columns)
            result: Any = True
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self._eval(comparator, columns)
                result = np.logical_and(result, _compare(type(op), left, right))
                left = right
            return result
        if isinstance(node, ast.Call):
            name = node.func.id  # type: ignore[attr-defined]
            args = [self._eval(arg, columns) for arg in node.args]
            function = _FUNCTIONS[name]
            if function is None:
                return _isnull(args[0])
            self._numeric(*args)
            return function(*[_float(arg) for arg in args])
        if isinstance(node, ast.IfExp):
            test = _truth(self._eval(node.test, columns))
            body, orelse = self._eval(node.body, columns), self._eval(node.orelse, columns)
            self._numeric(body, orelse)
            return np.where(test, _float(body), _float(orelse))
        raise PreprocessingError(f"{self.where}: cannot evaluate {self.text!r}")  # pragma: no cover

    def _numeric(self, *values: Any) -> None:
        for value in values:
            if isinstance(value, str) or (isinstance(value, np.ndarray) and value.dtype == object):
                raise PreprocessingError(
                    f"{self.where}: expression {self.text!r} does arithmetic on text; "
                    "compare text columns with == or != only",
                    code="invalid_expression",
                )


def _float(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.astype(np.float64)
    return float(value)


def _truth(value: Any) -> Array:
    array = np.asarray(value)
    if array.dtype == object:
        return np.array([v is not None and bool(v) for v in array], dtype=bool)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(array.astype(np.float64)), False, array.astype(np.float64) != 0)


def _isnull(value: Any) -> Array:
    array = np.asarray(value)
    if array.dtype == object:
        return np.array([v is None for v in array], dtype=bool)
    return np.isnan(array.astype(np.float64))


def _compare(op: type[ast.cmpop], left: Any, right: Any) -> Array:
    func = _COMPARE[op]
    left_text = isinstance(left, str) or (isinstance(left, np.ndarray) and left.dtype == object)
    right_text = isinstance(right, str) or (isinstance(right, np.ndarray) and right.dtype == object)
    if left_text or right_text:
        size = max(np.size(left), np.size(right))
        lefts = left if isinstance(left, np.ndarray) else [left] * size
        rights = right if isinstance(right, np.ndarray) else [right] * size
        out = np.zeros(size, dtype=bool)
        for i, (a, b) in enumerate(zip(lefts, rights, strict=True)):
            if _is_missing(a) or _is_missing(b):
                out[i] = op is ast.NotEq
            elif isinstance(a, str) and isinstance(b, str):
                out[i] = bool(func(a, b))
            else:
                out[i] = op is ast.NotEq if op in (ast.Eq, ast.NotEq) else False
        return out
    return np.asarray(func(_float(left), _float(right)), dtype=bool)
