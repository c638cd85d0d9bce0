"""The fitted feature steps compiled for a few records at a time (the serving hot path).

``Preprocessing.transform_columns`` runs each step as numpy calls over column arrays; for a
single record those calls cost far more than the arithmetic (about 100 µs for the churn
model, most of a request). A :class:`RecordEncoder` follows every output column back to the
raw field it comes from and the scalar operations on the way (cast, fill, ordinal, scale,
one-hot), so a record is encoded by one short loop writing straight into the output row.

It covers every step but ``derive`` (an expression over several columns); a preprocessing
with a derive step, or any value that is not of the plain JSON type its field expects,
falls back to the column path, which also names the row and field of a problem. Both paths
give the same matrix, bit for bit; a property test checks it on random data and steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlwp.preprocessing import Feature, Step, _format_number

Array = np.ndarray[Any, Any]
ScalarOp = Callable[[Any], Any]
NAN = math.nan


class Fallback(Exception):
    """This value (or this preprocessing) needs the column path."""


@dataclass
class _Column:
    """A column during compilation: the raw field it comes from, the scalar operations
    applied to it so far, and whether it holds text (str or None) or numbers (float)."""

    source: str
    ops: tuple[ScalarOp, ...]
    text: bool


# -- scalar operations: each mirrors the column operation of mlwp.preprocessing on one value


def _cast_op(dtype: str, text: bool) -> ScalarOp:
    if dtype == "str":
        if text:
            return _same
        return lambda v: None if math.isnan(v) else _format_number(v)
    if text:
        return lambda v: _finish_cast(dtype, _parse(v, dtype))
    return lambda v: _finish_cast(dtype, v)


def _same(value: Any) -> Any:
    return value


def _parse(value: Any, dtype: str) -> float:
    if value is None:
        return NAN
    text = value.strip()
    if dtype == "bool":
        lowered = text.lower()
        if lowered in ("true", "yes", "y", "1"):
            return 1.0
        if lowered in ("false", "no", "n", "0"):
            return 0.0
        raise Fallback
    if text == "":
        return NAN
    try:
        return float(text)
    except ValueError:
        raise Fallback from None


def _finish_cast(dtype: str, value: float) -> float:
    if dtype == "int":
        return float(np.trunc(value))
    if dtype == "bool":
        return value if math.isnan(value) else float(value != 0)
    return value


def _fill_op(fill: Any, text: bool) -> ScalarOp:
    if text:
        filler = fill if isinstance(fill, str) else _format_number(float(fill))
        return lambda v: filler if v is None else v
    if isinstance(fill, str):
        raise Fallback  # the column path reports this misfit
    number = float(fill)
    return lambda v: number if math.isnan(v) else v


def _ordinal_op(lookup: Mapping[Any, int]) -> ScalarOp:
    def code(value: Any) -> float:
        found = lookup.get(value)
        return NAN if found is None else float(found)

    return code


def _indicator_op(lookup: Mapping[Any, int], position: int) -> ScalarOp:
    # unknown or missing: no category matches, an all-zero block
    return lambda v: 1.0 if lookup.get(v) == position else 0.0


def _scale_op(mean: float, std: float) -> ScalarOp:
    return lambda v: (v - mean) / std


# -- compilation


@dataclass(frozen=True)
class _Output:
    """One output column: the raw field it comes from and the operations on the way."""

    source: str
    ops: tuple[ScalarOp, ...]


class RecordEncoder:
    """Encode records into the preprocessing's matrix rows without numpy per step."""

    def __init__(
        self,
        inputs: Sequence[Feature],
        features: Sequence[Feature],
        steps: Sequence[Step],
        target: str | None = None,
    ) -> None:
        # every input but the label, as the column path completes them; the inputs no
        # feature needs are missing in every record
        columns: dict[str, _Column] = {
            f.name: _Column(f.name, (), f.dtype == "str") for f in inputs if f.name != target
        }
        used = {f.name for f in features}
        self._absent = {
            f.name: (None if f.dtype == "str" else NAN)
            for f in inputs
            if f.name != target and f.name not in used
        }
        order = list(columns)
        for step in steps:
            order, columns = _compile_step(step, order, columns)
        if any(columns[name].text for name in order):
            raise Fallback  # a text feature left: the column path names the problem
        self.outputs = [_Output(columns[name].source, columns[name].ops) for name in order]
        self.width = len(self.outputs)
        self._fields = {f.name: (f.dtype, f.required) for f in features}

    def encode(self, records: Sequence[Mapping[str, Any]]) -> Array:
        """The matrix of ``records``; raises :class:`Fallback` on any unusual value."""
        out = np.zeros((len(records), self.width), dtype=np.float64)
        for index, record in enumerate(records):
            if type(record) is not dict:
                raise Fallback
            values = self._raw_values(record)
            row = []
            for output in self.outputs:
                value = values[output.source]
                for op in output.ops:
                    value = op(value)
                row.append(value)
            out[index] = row
        return out

    def _raw_values(self, record: dict[str, Any]) -> dict[str, Any]:
        values = dict(self._absent)
        for name, (dtype, required) in self._fields.items():
            value = record.get(name)
            kind = type(value)
            if value is None:
                if required and name not in record:
                    raise Fallback
                values[name] = None if dtype == "str" else NAN
            elif dtype == "str":
                if kind is not str:
                    raise Fallback
                values[name] = value
            elif dtype == "bool":
                if kind is not bool:
                    raise Fallback
                values[name] = float(value)
            elif kind is float or kind is int:
                values[name] = float(value)
            else:
                raise Fallback
        return values


def _compile_step(
    step: Step, order: list[str], columns: dict[str, _Column]
) -> tuple[list[str], dict[str, _Column]]:
    op, spec = step.op, step.spec
    if op == "derive" or any(name not in columns for name in step.reads()):
        raise Fallback  # derive: an expression over several columns
    if op == "select":
        keep = list(spec["columns"])
        return keep, {name: columns[name] for name in keep}
    if op == "drop":
        drop = set(spec["columns"])
        return [n for n in order if n not in drop], {
            n: c for n, c in columns.items() if n not in drop
        }
    if op == "rename":
        mapping = spec["columns"]
        renamed = [mapping.get(n, n) for n in order]
        if len(set(renamed)) != len(renamed):
            raise Fallback
        return renamed, {mapping.get(n, n): c for n, c in columns.items()}
    updated = dict(columns)
    if op == "cast":
        for name, dtype in spec["columns"].items():
            column = columns[name]
            updated[name] = _Column(
                column.source, (*column.ops, _cast_op(dtype, column.text)), dtype == "str"
            )
        return order, updated
    if op == "fill_missing":
        for name, fill in spec["values"].items():
            column = columns[name]
            updated[name] = _Column(
                column.source, (*column.ops, _fill_op(fill, column.text)), column.text
            )
        return order, updated
    if op == "ordinal":
        for name in spec["columns"]:
            column = columns[name]
            updated[name] = _Column(
                column.source, (*column.ops, _ordinal_op(step.lookups[name])), False
            )
        return order, updated
    if op == "scale":
        for name, stats in spec["columns"].items():
            column = columns[name]
            if column.text:
                raise Fallback
            scale = _scale_op(float(stats["mean"]), float(stats["std"]))
            updated[name] = _Column(column.source, (*column.ops, scale), False)
        return order, updated
    if op == "onehot":
        new_order: list[str] = []
        for name in order:
            if name not in spec["columns"]:
                new_order.append(name)
                continue
            column = columns[name]
            lookup = step.lookups[name]
            for position, output in enumerate(step.onehot_names[name]):
                indicator = _indicator_op(lookup, position)
                updated[output] = _Column(column.source, (*column.ops, indicator), False)
                new_order.append(output)
            del updated[name]
        if len(set(new_order)) != len(new_order):
            raise Fallback
        return new_order, updated
    raise Fallback


def compile_encoder(
    inputs: Sequence[Feature],
    features: Sequence[Feature],
    steps: Sequence[Step],
    target: str | None = None,
) -> RecordEncoder | None:
    """The encoder of a preprocessing, or None when it needs the column path."""
    try:
        return RecordEncoder(inputs, features, steps, target)
    except Fallback:
        return None
