"""The fitted, JSON-serialisable, record-wise preprocessing saved with every model.

A preprocessing is an ordered list of fitted *feature steps* (select, drop, rename, cast,
fill_missing, onehot, ordinal, scale, derive) plus the raw input schema. Training and serving
run the very same numpy code on column arrays; only the way the arrays are made differs
(``transform_frame`` reads a pandas DataFrame, ``transform_records`` reads a list of dicts with
no pandas at all). That is why a record scored by the serving service gets the matrix row it
got at training time, bit for bit.

Column arrays are ``float64`` (numbers and booleans, missing = NaN) or ``object`` (text, missing
= None). Documented behaviour at serving time:

- an unknown category gives an all-zero one-hot block and NaN from an ordinal encoding;
- a missing required field, or a value of the wrong type, raises :class:`RecordError` naming
  the row index and the field; a field is optional only when a ``fill_missing`` step fills it;
- fields that the model does not use are ignored.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import orjson

from mlwp.errors import MlwpError

if TYPE_CHECKING:
    import pandas as pd

    from mlwp.record_encoder import RecordEncoder

FORMAT = "mlwp.preprocessing/1"
FEATURE_OPS = (
    "select",
    "drop",
    "rename",
    "cast",
    "fill_missing",
    "onehot",
    "ordinal",
    "scale",
    "derive",
)
DTYPES = ("float", "int", "bool", "str")
# Up to this many records, the record encoder (mlwp.record_encoder) goes record by record;
# above it, a field at a time over all records (RecordEncoder.encode_batch), which costs more
# per call and less per record. A service times the crossover per model at load
# (RecordEncoder.tune): about 8 records on the churn model (19 fields, mostly one-hot),
# about 3 on a model of 20 numeric fields with fill, cast and scale steps (the batch runs
# each kind of step once for all of them); this is the default between the two. The column
# path is slower than either at every size (churn, 100 records: 239 µs against 152 µs
# batched; the numeric model: 248 against 158); it remains for what the encoder does not
# cover, and for reports.
ENCODER_MAX_ROWS = 6
# Characters XGBoost refuses in feature names.
_NAME_UNSAFE = str.maketrans({"[": "(", "]": ")", "<": "lt"})

Array = np.ndarray[Any, Any]


class PreprocessingError(MlwpError):
    """A preprocessing step cannot be fitted or applied to the data given."""

    code = "preprocessing_error"


class RecordError(PreprocessingError):
    """A raw record cannot be scored: a required field is missing or has the wrong type."""

    code = "invalid_record"

    def __init__(self, message: str, *, row: Any = None, field: str | None = None) -> None:
        super().__init__(message)
        self.row = row
        self.field = field


class _ValueProblem(Exception):
    """A value at array position ``position`` of ``column`` cannot be processed."""

    def __init__(self, position: int, column: str, message: str) -> None:
        super().__init__(message)
        self.position = position
        self.column = column
        self.message = message


@dataclass(frozen=True)
class Feature:
    """A raw input field of a model: what a client sends in each record."""

    name: str
    dtype: str
    required: bool = True
    example: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "required": self.required,
            "example": self.example,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Feature:
        return cls(
            str(data["name"]),
            str(data["dtype"]),
            bool(data.get("required", True)),
            data.get("example"),
        )


# --------------------------------------------------------------------------------------------
# Column frames: the representation both paths share.


@dataclass
class Columns:
    """An ordered set of equally long column arrays (numpy only)."""

    names: list[str]
    data: dict[str, Array]
    size: int

    def take(self, mask_or_index: Array) -> Columns:
        """The rows selected by a boolean mask or an array of positions."""
        size = int(np.arange(self.size)[mask_or_index].size)
        return Columns(
            list(self.names), {name: self.data[name][mask_or_index] for name in self.names}, size
        )

    def matrix(self, names: Sequence[str]) -> Array:
        if not names:
            return np.zeros((self.size, 0), dtype=np.float64)
        # np.stack(columns, axis=1) in two flat copies, a fraction of np.stack's per-column
        # cost; concatenate casts as np.stack does (same_kind)
        stacked = np.concatenate([self.data[name] for name in names], dtype=np.float64)
        return stacked.reshape(len(names), self.size).T.copy()


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _format_number(value: float) -> str:
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(float(value))


def _native(value: Any) -> Any:
    """A JSON-friendly Python value from a numpy scalar."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _require(columns: Columns, names: Iterable[str], where: str) -> None:
    for name in names:
        if name not in columns.data:
            raise PreprocessingError(
                f"{where}: column {name!r} not found (columns: {', '.join(columns.names)})",
                code="missing_column",
            )


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


# --------------------------------------------------------------------------------------------
# Fitted steps.


@dataclass
class Step:
    """A fitted feature step; ``spec`` is its JSON form (op plus fitted arguments)."""

    spec: dict[str, Any]

    @property
    def op(self) -> str:
        return str(self.spec["op"])

    def apply(self, columns: Columns, where: str) -> Columns:
        return _APPLY[self.op](self, columns, where)

    # What a step derives from its spec is computed once: serving applies the same steps to
    # every request, and on one record these lookups cost more than the arithmetic.
    @cached_property
    def lookups(self) -> dict[str, dict[Any, int]]:
        """onehot/ordinal: per column, category key -> position."""
        return {
            name: {category_key(c): i for i, c in enumerate(categories)}
            for name, categories in self.spec["columns"].items()
        }

    @cached_property
    def onehot_names(self) -> dict[str, list[str]]:
        """onehot: per column, the names of its output columns."""
        return {
            name: [onehot_name(name, c) for c in categories]
            for name, categories in self.spec["columns"].items()
        }

    def onehot_layout(self, encoded: tuple[str, ...]) -> tuple[list[str], list[dict[Any, int]]]:
        """onehot: the output names of the columns ``encoded`` (in that order) and, per
        column, category key -> row among all those outputs (cached per column order)."""
        cache: dict[tuple[str, ...], Any] = self.__dict__.setdefault("_onehot_layouts", {})
        if encoded not in cache:
            outputs: list[str] = []
            lookups: list[dict[Any, int]] = []
            for name in encoded:
                base = len(outputs)
                lookups.append({key: base + i for key, i in self.lookups[name].items()})
                outputs.extend(self.onehot_names[name])
            cache[encoded] = outputs, lookups
        layout: tuple[list[str], list[dict[Any, int]]] = cache[encoded]
        return layout

    def expression_at(self, where: str) -> Expression:
        """derive: the parsed expression, reporting problems at ``where``."""
        cache: dict[str, Expression] = self.__dict__.setdefault("_expressions", {})
        if where not in cache:
            cache[where] = Expression(str(self.spec["expression"]), where=where)
        return cache[where]

    def reads(self) -> list[str]:
        """Columns this step needs to exist."""
        op, spec = self.op, self.spec
        if op in ("select", "drop"):
            return list(spec["columns"])
        if op == "derive":
            return list(self.expression_at("derive").columns)
        return list(spec["values" if op == "fill_missing" else "columns"])


def _apply_select(step: Step, columns: Columns, where: str) -> Columns:
    spec = step.spec
    keep = list(spec["columns"])
    _require(columns, keep, where)
    return Columns(keep, {name: columns.data[name] for name in keep}, columns.size)


def _apply_drop(step: Step, columns: Columns, where: str) -> Columns:
    spec = step.spec
    drop = set(spec["columns"])
    _require(columns, drop, where)
    keep = [name for name in columns.names if name not in drop]
    return Columns(keep, {name: columns.data[name] for name in keep}, columns.size)


def _apply_rename(step: Step, columns: Columns, where: str) -> Columns:
    spec = step.spec
    mapping: dict[str, str] = dict(spec["columns"])
    _require(columns, mapping, where)
    names = [mapping.get(name, name) for name in columns.names]
    if len(set(names)) != len(names):
        raise PreprocessingError(f"{where}: renaming gives duplicate column names {names}")
    data = {mapping.get(name, name): columns.data[name] for name in columns.names}
    return Columns(names, data, columns.size)


def cast_array(array: Array, dtype: str, column: str) -> Array:
    """Convert one column array to ``dtype`` (float, int, bool: float64 arrays; str: object)."""
    if dtype == "str":
        if array.dtype == object:
            return array
        out = np.empty(array.shape[0], dtype=object)
        for i, value in enumerate(array):
            out[i] = None if math.isnan(value) else _format_number(float(value))
        return out
    if array.dtype == object:
        numbers = np.empty(array.shape[0], dtype=np.float64)
        for i, value in enumerate(array):
            if value is None:
                numbers[i] = np.nan
                continue
            text = str(value).strip()
            if dtype == "bool":
                lowered = text.lower()
                if lowered in ("true", "yes", "y", "1"):
                    numbers[i] = 1.0
                elif lowered in ("false", "no", "n", "0"):
                    numbers[i] = 0.0
                else:
                    raise _ValueProblem(i, column, f"cannot read {value!r} as a boolean")
                continue
            if text == "":
                numbers[i] = np.nan
                continue
            try:
                numbers[i] = float(text)
            except ValueError:
                raise _ValueProblem(i, column, f"cannot read {value!r} as a number") from None
        array = numbers
    if dtype == "int":
        return np.trunc(array)
    if dtype == "bool":
        with np.errstate(invalid="ignore"):
            return np.where(np.isnan(array), np.nan, (array != 0).astype(np.float64))
    return array.astype(np.float64)


def _apply_cast(step: Step, columns: Columns, where: str) -> Columns:
    spec = step.spec
    mapping: dict[str, str] = dict(spec["columns"])
    _require(columns, mapping, where)
    data = dict(columns.data)
    for name, dtype in mapping.items():
        data[name] = cast_array(columns.data[name], dtype, name)
    return Columns(list(columns.names), data, columns.size)


def _apply_fill(step: Step, columns: Columns, where: str) -> Columns:
    spec = step.spec
    values: dict[str, Any] = dict(spec["values"])
    _require(columns, values, where)
    data = dict(columns.data)
    for name, value in values.items():
        array = columns.data[name]
        if array.dtype == object:
            fill = value if isinstance(value, str) else _format_number(float(value))
            data[name] = np.array([fill if v is None else v for v in array], dtype=object)
        else:
            if isinstance(value, str):
                raise PreprocessingError(
                    f"{where}: cannot fill numeric column {name!r} with text {value!r}"
                )
            data[name] = np.where(np.isnan(array), float(value), array)
    return Columns(list(columns.names), data, columns.size)


def category_key(value: Any) -> Any:
    """The comparison key of a category value: text as is, numbers as floats."""
    if isinstance(value, str):
        return value
    return float(value)


def onehot_name(column: str, value: Any) -> str:
    text = value if isinstance(value, str) else _format_number(float(value))
    return f"{column}={text}".translate(_NAME_UNSAFE)


def _codes(array: Array, lookup: Mapping[Any, int]) -> Array:
    """Position of each value in ``lookup`` (category key -> position); -1 for unknown or
    missing. Text arrays hold str or None, numeric ones floats (NaN is never a key)."""
    return np.fromiter(
        map(lookup.get, array.tolist(), repeat(-1)), dtype=np.int64, count=array.shape[0]
    )


def _apply_onehot(step: Step, columns: Columns, where: str) -> Columns:
    mapping: dict[str, list[Any]] = step.spec["columns"]
    _require(columns, mapping, where)
    names: list[str] = []
    data: dict[str, Array] = {}
    encoded: list[str] = []  # the columns this step encodes, in column order
    for name in columns.names:
        if name in mapping:
            encoded.append(name)
            names.extend(step.onehot_names[name])
        else:
            names.append(name)
            data[name] = columns.data[name]
    outputs, lookups = step.onehot_layout(tuple(encoded))
    # Every value's output row in one C-level pass: the position of its category among all
    # of this step's outputs, or the spare last row when it is unknown or missing (an
    # all-zero block); then one vectorised assignment sets the ones.
    size = columns.size
    spare = len(outputs)
    rows = np.fromiter(
        chain.from_iterable(
            map(lookup.get, columns.data[name].tolist(), repeat(spare))
            for name, lookup in zip(encoded, lookups, strict=True)
        ),
        dtype=np.int64,
        count=len(encoded) * size,
    )
    block = np.zeros((spare + 1, size), dtype=np.float64)
    block[rows.reshape(len(encoded), size), np.arange(size)] = 1.0
    data.update(zip(outputs, block[:spare], strict=True))
    if len(set(names)) != len(names):
        raise PreprocessingError(f"{where}: one-hot columns clash with existing columns")
    return Columns(names, data, columns.size)


def _apply_ordinal(step: Step, columns: Columns, where: str) -> Columns:
    mapping: dict[str, list[Any]] = step.spec["columns"]
    _require(columns, mapping, where)
    data = dict(columns.data)
    for name in mapping:
        codes = _codes(columns.data[name], step.lookups[name]).astype(np.float64)
        codes[codes < 0] = np.nan
        data[name] = codes
    return Columns(list(columns.names), data, columns.size)


def _apply_scale(step: Step, columns: Columns, where: str) -> Columns:
    spec = step.spec
    mapping: dict[str, Mapping[str, float]] = dict(spec["columns"])
    _require(columns, mapping, where)
    data = dict(columns.data)
    for name, stats in mapping.items():
        array = columns.data[name]
        if array.dtype == object:
            raise PreprocessingError(f"{where}: cannot scale text column {name!r}; cast it first")
        data[name] = (array - float(stats["mean"])) / float(stats["std"])
    return Columns(list(columns.names), data, columns.size)


def _apply_derive(step: Step, columns: Columns, where: str) -> Columns:
    expression = step.expression_at(where)
    target = str(step.spec["column"])
    data = dict(columns.data)
    data[target] = expression.evaluate(columns)
    names = list(columns.names) if target in columns.data else [*columns.names, target]
    return Columns(names, data, columns.size)


_APPLY: dict[str, Callable[[Step, Columns, str], Columns]] = {
    "select": _apply_select,
    "drop": _apply_drop,
    "rename": _apply_rename,
    "cast": _apply_cast,
    "fill_missing": _apply_fill,
    "onehot": _apply_onehot,
    "ordinal": _apply_ordinal,
    "scale": _apply_scale,
    "derive": _apply_derive,
}


# --------------------------------------------------------------------------------------------
# Fitting one step from the definition's arguments.


def _column_list(args: Mapping[str, Any], where: str) -> list[str]:
    columns = args.get("columns")
    if isinstance(columns, str):
        return [columns]
    if isinstance(columns, Mapping):
        return [str(c) for c in columns]
    if isinstance(columns, list) and columns and all(isinstance(c, str) for c in columns):
        return list(columns)
    raise PreprocessingError(
        f"{where}: 'columns' must be a column name or a non-empty list of names, got {columns!r}",
        code="invalid_step",
    )


def _unknown_args(args: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(args) - allowed - {"op"})
    if extra:
        raise PreprocessingError(
            f"{where}: unknown argument(s) {', '.join(extra)} (allowed: "
            f"{', '.join(sorted(allowed))})",
            code="invalid_step",
        )


def _nonnull(array: Array) -> Array:
    if array.dtype == object:
        return np.array([v for v in array if v is not None], dtype=object)
    return array[~np.isnan(array)]


def _sorted_categories(array: Array) -> list[Any]:
    values = {_native(v) for v in _nonnull(array)}
    return sorted(values, key=lambda v: (isinstance(v, str), v))


def fit_step(args: Mapping[str, Any], fit_rows: Columns, where: str) -> Step:
    """Fit one feature step from its definition ``args`` on the training rows ``fit_rows``."""
    op = str(args.get("op"))
    if op in {"select", "drop"}:
        _unknown_args(args, {"columns"}, where)
        names = _column_list(args, where)
        _require(fit_rows, names, where)
        return Step({"op": op, "columns": names})
    if op == "rename":
        _unknown_args(args, {"columns"}, where)
        mapping = args.get("columns")
        if not isinstance(mapping, Mapping) or not mapping:
            raise PreprocessingError(
                f"{where}: 'columns' must map old names to new names", code="invalid_step"
            )
        _require(fit_rows, mapping, where)
        return Step({"op": op, "columns": {str(k): str(v) for k, v in mapping.items()}})
    if op == "cast":
        _unknown_args(args, {"columns", "dtype"}, where)
        raw = args.get("columns")
        if isinstance(raw, Mapping):
            casts = {str(k): str(v) for k, v in raw.items()}
        else:
            casts = {name: str(args.get("dtype")) for name in _column_list(args, where)}
        for name, dtype in casts.items():
            if dtype not in DTYPES:
                raise PreprocessingError(
                    f"{where}: column {name!r}: unknown type {dtype!r} "
                    f"(expected one of {', '.join(DTYPES)})",
                    code="invalid_step",
                )
        _require(fit_rows, casts, where)
        return Step({"op": op, "columns": casts})
    if op == "fill_missing":
        _unknown_args(args, {"columns", "value", "strategy"}, where)
        raw = args.get("columns")
        per_column: dict[str, Any] = (
            {str(k): v for k, v in raw.items()}
            if isinstance(raw, Mapping)
            else dict.fromkeys(_column_list(args, where), None)
        )
        _require(fit_rows, per_column, where)
        default_strategy = args.get("strategy", "constant" if "value" in args else "median")
        values: dict[str, Any] = {}
        for name, given in per_column.items():
            strategy = default_strategy if given is None else "constant"
            value = args.get("value") if given is None else given
            if isinstance(given, str) and given in ("median", "mode", "mean"):
                strategy, value = given, None
            values[name] = _fill_value(fit_rows.data[name], strategy, value, name, where)
        return Step({"op": op, "values": values})
    if op in ("onehot", "ordinal"):
        _unknown_args(args, {"columns"}, where)
        raw = args.get("columns")
        given_map: dict[str, list[Any] | None] = (
            {str(k): v for k, v in raw.items()}
            if isinstance(raw, Mapping)
            else dict.fromkeys(_column_list(args, where), None)
        )
        _require(fit_rows, given_map, where)
        categories: dict[str, list[Any]] = {}
        for name, given in given_map.items():
            seen = _sorted_categories(fit_rows.data[name])
            if given is None:
                categories[name] = seen
                continue
            if not isinstance(given, list) or not given:
                raise PreprocessingError(
                    f"{where}: column {name!r}: categories must be a non-empty list",
                    code="invalid_step",
                )
            known = {category_key(c) for c in given}
            unknown = [v for v in seen if category_key(v) not in known]
            if unknown:
                raise PreprocessingError(
                    f"{where}: column {name!r} has values {unknown[:5]} not among the listed "
                    f"categories {given}",
                    code="unknown_category",
                )
            categories[name] = list(given)
        return Step({"op": op, "columns": categories})
    if op == "scale":
        _unknown_args(args, {"columns"}, where)
        names = _column_list(args, where)
        _require(fit_rows, names, where)
        stats: dict[str, dict[str, float]] = {}
        for name in names:
            array = fit_rows.data[name]
            if array.dtype == object:
                raise PreprocessingError(
                    f"{where}: cannot scale text column {name!r}; cast it to float first",
                    code="invalid_step",
                )
            present = _nonnull(array)
            mean = float(present.mean()) if present.size else 0.0
            std = float(present.std()) if present.size else 1.0
            stats[name] = {"mean": mean, "std": std if std > 0 else 1.0}
        return Step({"op": op, "columns": stats})
    if op == "derive":
        _unknown_args(args, {"column", "expression"}, where)
        column, expression = args.get("column"), args.get("expression")
        if not isinstance(column, str) or not isinstance(expression, str):
            raise PreprocessingError(
                f"{where}: derive needs 'column' (the new column's name) and 'expression'",
                code="invalid_step",
            )
        Expression(expression, where=where).evaluate(fit_rows)
        return Step({"op": op, "column": column, "expression": expression})
    raise PreprocessingError(f"{where}: {op!r} is not a feature step", code="invalid_step")


def _fill_value(array: Array, strategy: str, value: Any, name: str, where: str) -> Any:
    if strategy == "constant":
        if value is None:
            raise PreprocessingError(
                f"{where}: column {name!r}: constant fill needs 'value'", code="invalid_step"
            )
        if array.dtype != object and isinstance(value, str):
            raise PreprocessingError(
                f"{where}: column {name!r} is numeric; cannot fill it with text {value!r}",
                code="invalid_step",
            )
        return value
    present = _nonnull(array)
    if strategy in ("median", "mean"):
        if array.dtype == object:
            raise PreprocessingError(
                f"{where}: column {name!r} is text; use strategy 'mode' or a constant",
                code="invalid_step",
            )
        if not present.size:
            return 0.0
        return float(np.median(present) if strategy == "median" else present.mean())
    if strategy == "mode":
        if not present.size:  # nothing seen in training: a neutral value, as median does
            return "" if array.dtype == object else 0.0
        values, counts = np.unique(
            present.astype(str) if array.dtype == object else present, return_counts=True
        )
        return _native(values[int(np.argmax(counts))])
    raise PreprocessingError(
        f"{where}: unknown fill strategy {strategy!r} (constant, median, mean, mode)",
        code="invalid_step",
    )


# --------------------------------------------------------------------------------------------
# Reading columns from a DataFrame (training) or from records (serving).


def frame_dtype(series: pd.Series) -> str:
    """The mlwp dtype of a pandas column."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series.dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(series.dtype):
        return "int"
    if pd.api.types.is_numeric_dtype(series.dtype):
        return "float"
    return "str"


def columns_from_frame(frame: pd.DataFrame, dtypes: Mapping[str, str] | None = None) -> Columns:
    """Column arrays of a DataFrame, with the dtypes given (or inferred)."""
    import pandas as pd

    data: dict[str, Array] = {}
    names = [str(c) for c in frame.columns]
    for name in names:
        series = frame[name]
        dtype = (dtypes or {}).get(name) or frame_dtype(series)
        if dtype == "str":
            values = series.to_numpy(dtype=object)
            out = np.empty(len(values), dtype=object)
            for i, value in enumerate(values):
                if value is pd.NA or _is_missing(value):
                    out[i] = None
                elif isinstance(value, str):
                    out[i] = value
                else:
                    raise PreprocessingError(
                        f"column {name!r}, row {frame.index[i]!r}: expected text, got "
                        f"{type(value).__name__} {value!r}",
                        code="invalid_value",
                    )
            data[name] = out
        else:
            data[name] = series.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
    return Columns(names, data, len(frame))


# Value types a column of records can be read with one numpy call (None is missing).
_NONE = type(None)
_FAST_TYPES: dict[str, frozenset[type]] = {
    "str": frozenset({str, _NONE}),
    "bool": frozenset({bool, _NONE}),
    "number": frozenset({int, float, np.float64, np.float32, np.int64, np.int32, _NONE}),
}


def columns_from_records(
    records: Sequence[Mapping[str, Any]],
    features: Sequence[Feature],
    reader: DictReader | None = None,
) -> Columns:
    """Column arrays of raw records for the given input features (no pandas); ``reader``
    is ``DictReader(features)`` made once by a caller that reads many batches."""
    if not isinstance(records, Sequence) or isinstance(records, str | bytes):
        raise RecordError("records must be a list of objects")
    if records and set(map(type, records)) == _ONLY_DICTS:  # what a JSON request holds
        fast = (reader or DictReader(features)).read(records)
        if fast is not None:
            return fast
    fast = _columns_of_clean_records(records, features)
    if fast is not None:
        return fast
    return _columns_checked(records, features)


_ONLY_DICTS = {dict}


class DictReader:
    """Reads the columns of records that are all plain ``dict``\\s with iteration in C: per
    kind of field (text, bool, number), one ``itemgetter`` call per record for its required
    fields, one type check and one ``np.fromiter`` into a (records x fields) block whose
    columns are the column arrays. A comprehension and a numpy call per feature cost far
    more per value.

    :meth:`read` gives exactly the columns :func:`_columns_of_clean_records` gives, or None
    whenever that function might not (a missing field, an unusual type, an int too large
    for a float): then the caller runs that function, which returns None or raises as
    before, so problems are still reported by the same code.
    """

    def __init__(self, features: Sequence[Feature]) -> None:
        self.names = [f.name for f in features]
        self.blocks: list[tuple[Callable[[Any], Any], list[str], frozenset[type], Any]] = []
        for kind in ("str", "bool", "number"):
            names = [f.name for f in features if f.required and _kind(f.dtype) == kind]
            if names:
                dtype = object if kind == "str" else np.float64
                self.blocks.append((operator.itemgetter(*names), names, _FAST_TYPES[kind], dtype))
        self.optional = [
            (f.name, _FAST_TYPES[_kind(f.dtype)], object if f.dtype == "str" else np.float64)
            for f in features
            if not f.required
        ]

    def read(self, records: Sequence[Mapping[str, Any]]) -> Columns | None:
        """The columns of ``records``, which must all be plain dicts (the caller checks)."""
        size = len(records)
        data: dict[str, Array] = {}
        try:
            for getter, names, accepted, dtype in self.blocks:
                try:
                    rows = list(map(getter, records))
                except KeyError:  # a required field is missing
                    return None
                # itemgetter of several names gives a tuple per record, of one the value
                values = chain.from_iterable(rows) if len(names) > 1 else rows
                if not set(map(type, values)) <= accepted:
                    return None
                values = chain.from_iterable(rows) if len(names) > 1 else rows
                # None -> NaN in a float block, as np.array(values, dtype=np.float64) does
                block = np.fromiter(values, dtype=dtype, count=size * len(names))
                data.update(zip(names, block.reshape(size, len(names)).T, strict=True))
            dicts = cast("Sequence[dict[str, Any]]", records)
            for name, accepted, dtype in self.optional:
                column = list(map(dict.get, dicts, repeat(name)))
                if not set(map(type, column)) <= accepted:
                    return None
                data[name] = np.fromiter(column, dtype=dtype, count=size)
        except OverflowError:  # an int too large for a float
            return None
        return Columns(list(self.names), {name: data[name] for name in self.names}, size)


def _kind(dtype: str) -> str:
    return dtype if dtype in ("str", "bool") else "number"


def _columns_of_clean_records(
    records: Sequence[Mapping[str, Any]], features: Sequence[Feature]
) -> Columns | None:
    """The columns in one pass per feature when every value has an accepted type (what a
    well-formed request holds); None when anything needs the value-by-value path, which
    also finds the row and field of a problem."""
    data: dict[str, Array] = {}
    for feature in features:
        name = feature.name
        try:
            if feature.required:
                values = [record[name] for record in records]
            else:
                values = [record.get(name) for record in records]
        except (KeyError, TypeError, AttributeError):
            return None
        kind = feature.dtype if feature.dtype in ("str", "bool") else "number"
        if not set(map(type, values)) <= _FAST_TYPES[kind]:
            return None
        if kind == "str":
            column = np.empty(len(values), dtype=object)
            column[:] = values
            data[name] = column
        else:
            data[name] = np.array(values, dtype=np.float64)  # None -> NaN
    return Columns([f.name for f in features], data, len(records))


def _columns_checked(records: Sequence[Mapping[str, Any]], features: Sequence[Feature]) -> Columns:
    size = len(records)
    data: dict[str, Array] = {}
    for feature in features:
        text = feature.dtype == "str"
        out: Array = np.empty(size, dtype=object) if text else np.empty(size, dtype=np.float64)
        for i, record in enumerate(records):
            if not isinstance(record, Mapping):
                raise RecordError(
                    f"row {i}: expected an object of fields, got {type(record).__name__}", row=i
                )
            if feature.name not in record:
                if feature.required:
                    raise RecordError(
                        f"row {i}: missing required field {feature.name!r}",
                        row=i,
                        field=feature.name,
                    )
                value = None
            else:
                value = record[feature.name]
            out[i] = _record_value(value, feature, i)
        data[feature.name] = out
    return Columns([f.name for f in features], data, size)


def _record_value(value: Any, feature: Feature, row: int) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None if feature.dtype == "str" else np.nan
    if feature.dtype == "str":
        if isinstance(value, str):
            return value
        expected = "text"
    elif feature.dtype == "bool":
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, int) and value in (0, 1):
            return float(value)
        expected = "a boolean"
    else:
        if isinstance(value, int | float | np.integer | np.floating) and not isinstance(
            value, bool
        ):
            return float(value)
        expected = "an integer" if feature.dtype == "int" else "a number"
    raise RecordError(
        f"row {row}: field {feature.name!r}: expected {expected}, got "
        f"{type(value).__name__} {value!r}",
        row=row,
        field=feature.name,
    )


# --------------------------------------------------------------------------------------------
# The preprocessing.


@dataclass
class Preprocessing:
    """Fitted feature steps from raw input columns to the model's numeric matrix.

    ``inputs`` is the raw schema the steps were fitted on (every column, the target included);
    ``target`` (set by :meth:`with_target`) names the raw label column, which is then neither
    required from records nor part of the matrix.
    """

    inputs: list[Feature]
    steps: list[Step] = field(default_factory=list)
    target: str | None = None

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def identity(cls, frame: pd.DataFrame) -> Preprocessing:
        """A preprocessing with no steps whose inputs are the columns of ``frame``."""
        return cls(inputs=infer_inputs(frame))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "inputs": [f.to_dict() for f in self.inputs],
            "steps": [s.spec for s in self.steps],
            "target": self.target,
            "features": [f.to_dict() for f in self.features],
            "outputs": self.outputs,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        if data.get("format") != FORMAT:
            raise PreprocessingError(
                f"unsupported preprocessing format {data.get('format')!r} (expected {FORMAT})"
            )
        steps = [Step(dict(s)) for s in data["steps"]]
        for index, step in enumerate(steps):
            if step.op not in FEATURE_OPS:
                raise PreprocessingError(f"preprocessing step {index}: unknown op {step.op!r}")
        return cls([Feature.from_dict(f) for f in data["inputs"]], steps, data.get("target"))

    @classmethod
    def from_json(cls, text: bytes | str) -> Preprocessing:
        return cls.from_dict(orjson.loads(text))

    # -- the target ----------------------------------------------------------------------------
    def with_target(self, target: str) -> Preprocessing:
        """This preprocessing with ``target`` (the label's name after the steps) as the label.

        The label's own steps (rename, cast, fill_missing, ordinal) stay for
        :meth:`transform_label`; every other use of the label is refused, since a feature
        computed from the label would not exist at serving time.
        """
        raw = self._raw_name_of(target)
        current = raw
        for index, step in enumerate(self.steps):
            where = f"step {index} ({step.op})"
            if step.op == "rename":
                current = step.spec["columns"].get(current, current)
            elif step.op == "drop" and current in step.spec["columns"]:
                raise PreprocessingError(
                    f"{where}: drops the target column {current!r}", code="invalid_target"
                )
            elif step.op in ("onehot", "scale") and current in step.spec["columns"]:
                raise PreprocessingError(
                    f"{where}: the target {current!r} cannot be {step.op}-encoded; "
                    "use ordinal (classes) or nothing (regression)",
                    code="invalid_target",
                )
            elif step.op == "derive":
                if step.spec["column"] == current:
                    raise PreprocessingError(
                        f"{where}: overwrites the target {current!r}", code="invalid_target"
                    )
                if current in Expression(step.spec["expression"], where=where).columns:
                    raise PreprocessingError(
                        f"{where}: derived column {step.spec['column']!r} uses the target "
                        f"{current!r}, which is unknown when serving",
                        code="invalid_target",
                    )
        if current != target:
            raise PreprocessingError(
                f"target {target!r} is not a column after the steps", code="invalid_target"
            )
        return Preprocessing(list(self.inputs), list(self.steps), raw)

    def _raw_name_of(self, name: str) -> str:
        current = name
        for step in reversed(self.steps):
            if step.op == "rename":
                inverse = {v: k for k, v in step.spec["columns"].items()}
                current = inverse.get(current, current)
        if current not in {f.name for f in self.inputs}:
            raise PreprocessingError(
                f"target {name!r} is not among the input columns "
                f"({', '.join(f.name for f in self.inputs)})",
                code="invalid_target",
            )
        return current

    def _target_lineage(self) -> list[str | None]:
        """The label's name before each step (and after the last one)."""
        names: list[str | None] = [self.target]
        current = self.target
        for step in self.steps:
            if current is not None and step.op == "rename":
                current = step.spec["columns"].get(current, current)
            names.append(current)
        return names

    @cached_property
    def feature_steps(self) -> list[Step]:
        """The steps with the label's columns taken out of them (computed once: serving
        applies them to every request)."""
        lineage = self._target_lineage()
        out: list[Step] = []
        for step, label in zip(self.steps, lineage, strict=False):
            if label is None:
                out.append(step)
                continue
            spec = dict(step.spec)
            key = "values" if step.op == "fill_missing" else "columns"
            if step.op in ("select", "drop"):
                spec[key] = [c for c in spec[key] if c != label]
                if step.op == "drop" and not spec[key]:
                    continue
            elif step.op != "derive":
                spec[key] = {k: v for k, v in spec[key].items() if k != label}
                if not spec[key]:
                    continue
            out.append(Step(spec))
        return out

    def _label_steps(self) -> list[Step]:
        lineage = self._target_lineage()
        out: list[Step] = []
        for step, label in zip(self.steps, lineage, strict=False):
            if label is None or step.op not in ("rename", "cast", "fill_missing", "ordinal"):
                continue
            key = "values" if step.op == "fill_missing" else "columns"
            if label in step.spec[key]:
                out.append(Step({"op": step.op, key: {label: step.spec[key][label]}}))
        return out

    # -- schema ---------------------------------------------------------------------------------
    @cached_property
    def features(self) -> list[Feature]:
        """The raw input fields a record must (or may) carry: inputs the steps actually use."""
        live = set(self.outputs)
        for step in reversed(self.feature_steps):
            op, spec = step.op, step.spec
            if op == "rename":
                inverse = {v: k for k, v in spec["columns"].items()}
                live = {inverse.get(c, c) for c in live}
            elif op == "onehot":
                for column, categories in spec["columns"].items():
                    produced = {onehot_name(column, c) for c in categories}
                    if live & produced:
                        live = (live - produced) | {column}
            elif op == "derive":
                if spec["column"] in live:
                    live = (live - {spec["column"]}) | set(
                        Expression(spec["expression"], where="derive").columns
                    )
            elif op in ("cast", "fill_missing", "ordinal", "scale"):
                continue
        filled = self._filled_raw_names()
        return [
            Feature(f.name, f.dtype, f.name not in filled, f.example)
            for f in self.inputs
            if f.name in live and f.name != self.target
        ]

    def _filled_raw_names(self) -> set[str]:
        """Raw names of columns that a fill_missing step fills (so they may be absent)."""
        filled: set[str] = set()
        renamed: dict[str, str] = {f.name: f.name for f in self.inputs}  # current -> raw
        for step in self.steps:
            if step.op == "rename":
                renamed = {step.spec["columns"].get(c, c): raw for c, raw in renamed.items()}
            elif step.op == "fill_missing":
                filled |= {renamed[c] for c in step.spec["values"] if c in renamed}
            elif step.op == "derive":
                renamed.pop(step.spec["column"], None)
        return filled

    @cached_property
    def outputs(self) -> list[str]:
        """Names of the matrix columns, in order."""
        return self._run_schema()

    def _run_schema(self) -> list[str]:
        example = Columns(
            [f.name for f in self.inputs],
            {
                f.name: (np.array([None], dtype=object) if f.dtype == "str" else np.array([np.nan]))
                for f in self.inputs
            },
            1,
        )
        if self.target is not None:
            example.names.remove(self.target)
            del example.data[self.target]
        columns = self._apply(self.feature_steps, example)
        return list(columns.names)

    # -- transforming -------------------------------------------------------------------------
    def _apply(self, steps: Sequence[Step], columns: Columns) -> Columns:
        for index, step in enumerate(steps):
            columns = step.apply(columns, f"preprocessing step {index} ({step.op})")
        return columns

    def _complete(self, columns: Columns) -> Columns:
        """Raw columns in input order: unused inputs all missing, the label left out."""
        names: list[str] = []
        data: dict[str, Array] = {}
        for feature in self.inputs:
            if feature.name == self.target:
                continue
            names.append(feature.name)
            if feature.name in columns.data:
                data[feature.name] = columns.data[feature.name]
            elif feature.dtype == "str":
                data[feature.name] = np.full(columns.size, None, dtype=object)
            else:
                data[feature.name] = np.full(columns.size, np.nan)
        return Columns(names, data, columns.size)

    def transform_columns(self, columns: Columns) -> Columns:
        """Apply the feature steps to raw column arrays (the label, if any, is left out)."""
        columns = self._complete(columns)
        columns = self._apply(self.feature_steps, columns)
        for name in columns.names:
            if columns.data[name].dtype == object:
                raise PreprocessingError(
                    f"column {name!r} is still text after preprocessing; add an onehot, "
                    "ordinal or cast step for it",
                    code="text_feature",
                )
        return columns

    def transform_frame(self, frame: pd.DataFrame) -> Array:
        """The feature matrix (float64, one row per frame row) of a training DataFrame."""
        dtypes = {f.name: f.dtype for f in self.inputs}
        features = self.features
        absent = [f.name for f in features if f.required and f.name not in frame.columns]
        if absent:
            raise PreprocessingError(
                f"input data: missing column(s) {', '.join(map(repr, absent))}",
                code="missing_column",
            )
        present = [f.name for f in features if f.name in frame.columns]
        columns = columns_from_frame(frame[present], dtypes)
        try:
            out = self.transform_columns(columns)
        except _ValueProblem as problem:
            raise PreprocessingError(
                f"column {problem.column!r}, row {frame.index[problem.position]!r}: "
                f"{problem.message}",
                code="invalid_value",
            ) from None
        return out.matrix(out.names)

    @cached_property
    def record_encoder(self) -> RecordEncoder | None:
        """The steps compiled for a few records at a time (None: use the column path)."""
        from mlwp.record_encoder import compile_encoder

        return compile_encoder(self.inputs, self.features, self.feature_steps, self.target)

    @cached_property
    def _dict_reader(self) -> DictReader:
        return DictReader(self.features)

    def transform_records(self, records: Sequence[Mapping[str, Any]]) -> Array:
        """The feature matrix of raw records (serving path: numpy only, no pandas)."""
        encoder = self.record_encoder
        if encoder is not None:
            try:
                if len(records) <= encoder.max_rows:
                    return encoder.encode(records)
                return encoder.encode_batch(records)
            # An unusual value, or one its float arithmetic refuses (an int too large for a
            # float, a scale with no deviation): the column path reads or reports it, so a
            # batch's answer does not depend on its size. (Fallback is reached through the
            # encoder: a function-level import costs 0.5 µs per call.)
            except (encoder.Fallback, ArithmeticError):
                pass
        return self.transform_records_by_column(records)

    def transform_records_by_column(self, records: Sequence[Mapping[str, Any]]) -> Array:
        """:meth:`transform_records` by the column path: every step as numpy calls over
        column arrays. It reads every value the steps accept and names the row and field
        of a problem."""
        columns = columns_from_records(records, self.features, self._dict_reader)
        try:
            out = self.transform_columns(columns)
        except _ValueProblem as problem:
            raise RecordError(
                f"row {problem.position}: field {problem.column!r}: {problem.message}",
                row=problem.position,
                field=problem.column,
            ) from None
        return out.matrix(out.names)

    def transform_label(self, values: Array) -> Array:
        """Apply the label's own steps (cast, fill_missing, ordinal) to raw target values."""
        if self.target is None:
            raise PreprocessingError("no target set; call with_target first")
        name = self.target
        columns = Columns([name], {name: values}, len(values))
        try:
            for step in self._label_steps():
                columns = step.apply(columns, f"label step ({step.op})")
                name = columns.names[0]
        except _ValueProblem as problem:
            raise PreprocessingError(
                f"target {problem.column!r}, row {problem.position}: {problem.message}",
                code="invalid_label",
            ) from None
        return columns.data[name]

    @property
    def label_classes(self) -> list[Any] | None:
        """The classes an ordinal step on the label lists (index = encoded value), if any."""
        for step in self._label_steps():
            if step.op == "ordinal":
                return list(next(iter(step.spec["columns"].values())))
        return None


def infer_inputs(frame: pd.DataFrame) -> list[Feature]:
    """The raw schema of a DataFrame: each column's dtype and first non-missing value."""
    inputs = []
    for column in frame.columns:
        series = frame[column]
        present = series.dropna()
        example = _native(present.iloc[0]) if len(present) else None
        inputs.append(Feature(str(column), frame_dtype(series), True, example))
    return inputs
