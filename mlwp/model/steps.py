"""Fitted feature steps: applying each to column arrays, and fitting one from a definition."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np

from mlwp.model.expressions import Expression
from mlwp.model.features import (
    _NAME_UNSAFE,
    DTYPES,
    Array,
    Coded,
    Columns,
    PreprocessingError,
    _format_number,
    _native,
    _require,
    _ValueProblem,
)

if TYPE_CHECKING:
    pass


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


def _codes(array: Array, lookup: Mapping[Any, int], unknown: int = -1) -> Array:
    """Position of each value in ``lookup`` (category key -> position); ``unknown`` for
    unknown or missing. Text arrays hold str or None, numeric ones floats (NaN is never a
    key)."""
    if isinstance(array, Coded) and array.codes is not None and array.categories is not None:
        positions = map(lookup.get, array.categories.tolist(), repeat(unknown))
        table = np.fromiter(positions, dtype=np.int64, count=array.categories.shape[0])
        return np.append(table, unknown)[array.codes]
    return np.fromiter(
        map(lookup.get, array.tolist(), repeat(unknown)), dtype=np.int64, count=array.shape[0]
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
    # Every value's output row: the position of its category among all of this step's
    # outputs, or the spare last row when it is unknown or missing (an all-zero block); then
    # one vectorised assignment sets the ones.
    size = columns.size
    spare = len(outputs)
    rows = np.concatenate(
        [
            _codes(columns.data[name], lookup, spare)
            for name, lookup in zip(encoded, lookups, strict=True)
        ]
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
