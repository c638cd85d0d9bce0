"""The fitted feature steps compiled for a few records at a time (the serving hot path).

``Preprocessing.transform_columns`` runs each step as numpy calls over column arrays; for a
single record those calls cost far more than the arithmetic (about 100 µs for the churn
model, most of a request). A :class:`RecordEncoder` follows every output column back to the
raw field it comes from and the scalar operations on the way (cast, fill, ordinal, scale,
one-hot), so a record is encoded by one short loop writing straight into the output row:
one entry per raw field (a one-hot block is one dict lookup, whatever its width).

It covers every step but ``derive`` (an expression over several columns); a preprocessing
with a derive step, or any value that is not of the plain JSON type its field expects,
falls back to the column path, which also names the row and field of a problem. Both paths
give the same matrix, bit for bit; a property test checks it on random data and steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from mlwp.preprocessing import Feature, Step, _format_number

Array = np.ndarray[Any, Any]
ScalarOp = Callable[[Any], Any]
NAN = math.nan


class Fallback(Exception):
    """This value (or this preprocessing) needs the column path."""


@dataclass(frozen=True)
class _Expansion:
    """A one-hot expansion: the expanded column is ``ops`` applied to the raw field, and
    ``lookup`` maps a category key to its position."""

    ops: tuple[ScalarOp, ...]
    lookup: Mapping[Any, int]


@dataclass
class _Column:
    """A column during compilation: the raw field it comes from, the scalar operations
    applied to it so far, and whether it holds text (str or None) or numbers (float).

    An indicator column of a one-hot expansion that no later step changes also records the
    ``expansion`` and its category ``position`` (``ops`` ends with the indicator): the
    encoder then writes all indicators of the expansion with one lookup.
    """

    source: str
    ops: tuple[ScalarOp, ...]
    text: bool
    expansion: _Expansion | None = None
    position: int = -1


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


# An encoder runs a plan: a list of entries, each of which reads the field ``name`` of a
# record (text if ``text``, a bool if ``boolean``, else a number; optional unless
# ``required``), checks it, converts it to float (numbers, bools) or keeps it (text, None),
# applies ``ops`` and writes the result: to output ``slot``, or for a one-hot block through
# ``slots``, which maps a category key to the output of its indicator (categories whose
# indicator is no output are left out); that output is set to 1.0 in the row of zeros, and
# an unknown or missing value sets nothing (an all-zero block).
_Entry = tuple[str, bool, bool, bool, tuple[ScalarOp, ...], int, Mapping[Any, int] | None]
# The part of an entry that writes outputs, with the raw field it reads first.
_Emitter = tuple[str, tuple[ScalarOp, ...], int, Mapping[Any, int] | None]
_CHECK_ONLY: Mapping[Any, int] = {}  # the slots of an entry that only checks its field


class RecordEncoder:
    """Encode records into the preprocessing's matrix rows without numpy per step.

    Each raw field is read once per record and goes through its operations once: a numeric
    chain writes one output, a one-hot block costs one dict lookup (not one indicator per
    category). Outputs that are not one of those (an operation after a one-hot encoding, a
    column selected twice) are written one by one.
    """

    Fallback = Fallback  # for transform_records: this module imports preprocessing

    def __init__(
        self,
        inputs: Sequence[Feature],
        features: Sequence[Feature],
        steps: Sequence[Step],
        target: str | None = None,
    ) -> None:
        # every input but the label, as the column path completes them
        columns: dict[str, _Column] = {
            f.name: _Column(f.name, (), f.dtype == "str") for f in inputs if f.name != target
        }
        order = list(columns)
        for step in steps:
            order, columns = _compile_step(step, order, columns)
        if any(columns[name].text for name in order):
            raise Fallback  # a text feature left: the column path names the problem
        self.width = len(order)
        fields = {
            f.name: (f.name, f.dtype == "str", f.dtype == "bool", f.required) for f in features
        }
        emitters = _emitters(order, columns)
        if any(source not in fields for source, _, _, _ in emitters):
            # an output of an input no feature needs (``features`` rules that out): it
            # would be missing in every record
            raise Fallback
        # the fast plan: each field in features order, with each of its emitters
        by_field: dict[str, list[_Entry]] = {name: [] for name in fields}
        for source, ops, slot, slots in emitters:
            by_field[source].append((*fields[source], ops, slot, slots))
        self._plan: list[_Entry] = [
            entry
            for name, entries in by_field.items()
            for entry in entries or [(*fields[name], (), -1, _CHECK_ONLY)]
        ]
        # the plans of the in-order replay: every field checked, then every emitter in
        # the order of its first output
        self._checks: list[_Entry] = [(*field, (), -1, _CHECK_ONLY) for field in fields.values()]
        self._in_order: list[_Entry] = [
            (*fields[source], ops, slot, slots) for source, ops, slot, slots in emitters
        ]

    def encode(self, records: Sequence[Mapping[str, Any]]) -> Array:
        """The matrix of ``records``; raises :class:`Fallback` on any unusual value."""
        out = np.zeros((len(records), self.width), dtype=np.float64)
        cells = _cells(out)
        for index, record in enumerate(records):
            row = index * self.width
            try:
                self._write(record, cells, row, self._plan)
            except Exception:
                # The plan takes each field from its check to its outputs in one go. The
                # problem to report is the one met by checking the whole record first and
                # then computing its outputs in order (say, an int too large for a float
                # rather than an unreadable text in an earlier field): replay the record
                # that way. It raises too, since it does the same work in another order.
                self._write(record, cells, row, self._checks)
                self._write(record, cells, row, self._in_order)
                raise
        return out

    @staticmethod
    def _write(record: Any, cells: memoryview[float], row: int, plan: list[_Entry]) -> None:
        """Run ``plan`` on ``record``, writing into ``cells`` (the zeroed output rows, one
        after the other) from position ``row``: the one loop that checks, converts and
        encodes values."""
        if type(record) is not dict:
            raise Fallback
        get = record.get
        for name, text, boolean, required, ops, slot, slots in plan:
            value: Any = get(name)
            if value is None:
                if required and name not in record:
                    raise Fallback
                if not text:
                    value = NAN
            elif text:
                if type(value) is not str:
                    raise Fallback
            elif boolean:
                if type(value) is not bool:
                    raise Fallback
                value = float(value)
            elif type(value) is int:
                value = float(value)
            elif type(value) is not float:  # float(value) would be value itself
                raise Fallback
            if ops:  # most fields have none, and a loop over () costs more than the test
                for op in ops:
                    value = op(value)
            if slots is None:
                cells[row + slot] = value
            else:
                found = slots.get(value)
                if found is not None:
                    cells[row + found] = 1.0


def _cells(out: Array) -> memoryview[float]:
    """A flat view of ``out``'s float64 cells: storing a Python float through it costs less
    than a numpy item assignment, or a row list that numpy converts."""
    return cast("memoryview[float]", out.reshape(-1).data)


def _emitters(order: Sequence[str], columns: Mapping[str, _Column]) -> list[_Emitter]:
    """What writes the outputs ``order``: per emitter, the raw field it reads, its ops and
    its slot or slots (see ``_Entry``), in the order of their first output."""
    emitters: list[_Emitter] = []
    blocks: dict[int, dict[Any, int]] = {}  # id(expansion) -> the slots of its emitter
    repeated = {name for name in order if order.count(name) > 1}
    for slot, name in enumerate(order):
        column = columns[name]
        expansion = column.expansion
        if expansion is None or name in repeated:  # a value, or an indicator, on its own
            emitters.append((column.source, column.ops, slot, None))
            continue
        slots = blocks.get(id(expansion))
        if slots is None:
            slots = blocks[id(expansion)] = {}
            emitters.append((column.source, expansion.ops, -1, slots))
        slots.update((key, slot) for key, at in expansion.lookup.items() if at == column.position)
    return emitters


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
            expansion = _Expansion(column.ops, lookup)
            for position, output in enumerate(step.onehot_names[name]):
                indicator = _indicator_op(lookup, position)
                updated[output] = _Column(
                    column.source, (*column.ops, indicator), False, expansion, position
                )
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
