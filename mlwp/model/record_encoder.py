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
import timeit
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, cycle, repeat
from operator import itemgetter
from typing import Any, cast

import numpy as np

from mlwp.model.features import ENCODER_MAX_ROWS, Feature, _format_number
from mlwp.model.steps import Step

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


# -- scalar operations: each mirrors the column operation of mlwp.model.preprocessing on one value


def _cast_op(dtype: str, text: bool) -> ScalarOp:
    if dtype == "str":
        if text:
            return _same
        return lambda v: None if math.isnan(v) else _format_number(v)
    if text:
        return lambda v: _finish_cast(dtype, _parse(v, dtype))
    return _vectorized(lambda v: _finish_cast(dtype, v), dtype)


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
    return _vectorized(lambda v: number if math.isnan(v) else v, "fill", number)


def _ordinal_op(lookup: Mapping[Any, int]) -> ScalarOp:
    def code(value: Any) -> float:
        found = lookup.get(value)
        return NAN if found is None else float(found)

    return code


def _indicator_op(lookup: Mapping[Any, int], position: int) -> ScalarOp:
    # unknown or missing: no category matches, an all-zero block
    return lambda v: 1.0 if lookup.get(v) == position else 0.0


def _scale_op(mean: float, std: float) -> ScalarOp:
    return _vectorized(lambda v: (v - mean) / std, "scale", mean, std)


# The array twins of the numeric operations, for :meth:`RecordEncoder.encode_batch`: each
# applies one kind of operation to a (records x fields) float64 block; ``p[i]`` holds the
# i-th parameter of each field. Same arithmetic as the scalar operation, so the same bits.
_ARRAY_OPS: dict[str, Callable[[Array, Array], Array]] = {
    "fill": lambda block, p: np.where(np.isnan(block), p[0], block),
    "float": lambda block, p: block,
    "int": lambda block, p: np.trunc(block),
    "bool": lambda block, p: np.where(np.isnan(block), block, block != 0),
    "scale": lambda block, p: (block - p[0]) / p[1],
}


def _vectorized(op: ScalarOp, kind: str, *params: float) -> ScalarOp:
    """``op``, marked as the operation ``kind`` of ``_ARRAY_OPS`` with these parameters;
    an operation without a twin runs value by value in a batch too."""
    op.twin = (kind, params)  # type: ignore[attr-defined]
    return op


def _twin(op: ScalarOp) -> tuple[str, tuple[float, ...]] | None:
    twin: tuple[str, tuple[float, ...]] | None = getattr(op, "twin", None)
    return twin


def _twins(ops: Sequence[ScalarOp]) -> list[str] | None:
    """The kinds of the twins of ``ops``; None when one has none."""
    kinds = []
    for op in ops:
        twin = _twin(op)
        if twin is None:
            return None
        kinds.append(twin[0])
    return kinds


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
        self.batch_plan = BatchPlan(self._plan)
        # batches up to this size are encoded record by record (see tune)
        self.max_rows = ENCODER_MAX_ROWS

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

    def encode_row(self, record: Mapping[str, Any]) -> list[float]:
        """The matrix row of one record as a list of floats: ``encode([record])[0]``
        without numpy (a one-record request feeds it to the compiled trees as it is). Raises
        whatever :meth:`encode` raises on the record, but not always the same problem: a
        caller falls back to :meth:`encode` for the one to report."""
        cells = [0.0] * self.width
        self._write(record, cells, 0, self._plan)
        return cells

    def tune(self, record: Mapping[str, Any]) -> int:
        """Set :attr:`max_rows`, the largest batch :meth:`encode` takes before
        :meth:`encode_batch` is faster, timed on copies of ``record`` (a service does it once
        at load: the crossover depends on the fields and steps, from about 3 records for
        numeric steps to about 8 for mostly one-hot ones). Both give the same matrix, so the
        timing only decides the speed; a record either refuses keeps the default."""
        for size in _TUNING_SIZES:
            try:
                by_record = _best_time(self.encode, [record] * size)
                batched = _best_time(self.encode_batch, [record] * size)
            except (Fallback, ArithmeticError):
                return self.max_rows
            if batched < by_record:
                self.max_rows = size - 1
                return self.max_rows
        self.max_rows = _TUNING_SIZES[-1]
        return self.max_rows

    def encode_batch(self, records: Sequence[Mapping[str, Any]]) -> Array:
        """The same matrix as :meth:`encode`, a field at a time over all records: for larger
        batches, where one C-level pass per block of fields beats a Python loop per record.
        Raises :class:`Fallback` whenever :meth:`encode` would (any unusual value)."""
        return self.batch_plan.encode(records, self.width)

    @staticmethod
    def _write(
        record: Any, cells: memoryview[float] | list[float], row: int, plan: list[_Entry]
    ) -> None:
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


_TUNING_SIZES = (2, 3, 4, 6, 8, 12, 16, 24, 32)


def _best_time(encode: Callable[[Any], Any], records: list[Any]) -> float:
    return min(timeit.repeat(lambda: encode(records), number=10, repeat=5))


_NONE = type(None)
# The value types the record-by-record loop accepts, per kind of field.
_TEXT: frozenset[type] = frozenset({str, _NONE})
_BOOL: frozenset[type] = frozenset({bool, _NONE})
_NUMBER: frozenset[type] = frozenset({int, float, _NONE})
_DICTS = {dict}


class BatchPlan:
    """:meth:`RecordEncoder.encode_batch`: the plan's fields in three groups.

    - numbers: number fields written to one output each, whose operations all have array
      twins (fill, cast, scale). The required ones are read with one ``itemgetter`` call per
      record, the optional ones a field at a time; all are type-checked in one pass,
      converted by ``np.fromiter`` and stored in their output columns. Fields with the same
      kinds of operations in the same order form a group, whose operations then run once
      over the group's columns, with a parameter per column (say a fill value, or a mean
      and a deviation);
    - categories: required text fields one-hot encoded as they are, read with one
      ``itemgetter`` call per record; each value is looked up in its own field's slots in
      the same C-level pass (``map(dict.get, cycle(slots), values)``), and only values that
      miss every category have their type checked (the slots' keys are all text, so nothing
      else can match);
    - others: every other field, a column at a time, value by value where an operation has
      no array twin.
    """

    def __init__(self, plan: Sequence[_Entry]) -> None:
        by_field: dict[str, list[_Entry]] = {}
        for entry in plan:
            by_field.setdefault(entry[0], []).append(entry)
        required: list[tuple[str, int, tuple[ScalarOp, ...]]] = []
        optional: list[tuple[str, int, tuple[ScalarOp, ...]]] = []
        categories: list[tuple[str, Mapping[Any, int]]] = []
        self.others: list[tuple[str, frozenset[type], bool, list[_Emitter]]] = []
        for name, entries in by_field.items():
            _, text, boolean, is_required, ops, slot, slots = entries[0]
            single = len(entries) == 1
            if single and not text and not boolean and slots is None and _twins(ops) is not None:
                (required if is_required else optional).append((name, slot, ops))
                continue
            text_keys = bool(slots) and all(type(key) is str for key in slots or ())
            if single and is_required and not ops and text and text_keys:
                categories.append((name, cast("Mapping[Any, int]", slots)))
                continue
            accepted = _TEXT if text else _BOOL if boolean else _NUMBER
            emitters = [(name, e[4], e[5], e[6]) for e in entries if e[6] is not _CHECK_ONLY]
            self.others.append((name, accepted, is_required, emitters))
        self.required = _block([name for name, _, _ in required])
        self.optional = [name for name, _, _ in optional]
        self.required_slots = [slot for _, slot, _ in required]
        self.optional_slots = _index([slot for _, slot, _ in optional])
        numbers = required + optional
        # the number fields and their output slots, required ones first
        self.number_names = [name for name, _, _ in numbers]
        self.number_slots = [slot for _, slot, _ in numbers]
        twins = [[t for t in map(_twin, ops) if t and t[0] != "float"] for _, _, ops in numbers]
        groups: dict[tuple[str, ...], list[int]] = {}  # float casts are identities: left out
        for column, column_twins in enumerate(twins):
            if column_twins:
                groups.setdefault(tuple(kind for kind, _ in column_twins), []).append(column)
        # per group: its output slots (one slot as an int: a view, not a copy) and, per
        # operation, its kind and parameters
        self.number_groups: list[tuple[int | list[int], list[tuple[str, Array]]]] = [
            (
                _index([numbers[c][1] for c in columns]),
                [
                    (kind, np.array([twins[c][i][1] for c in columns]).T)
                    for i, kind in enumerate(kinds)
                ],
            )
            for kinds, columns in groups.items()
        ]
        self.category_names = [name for name, _ in categories]
        self.categories = _block(self.category_names)
        self.category_slots = [cast("dict[Any, int]", slots) for _, slots in categories]

    def encode(self, records: Sequence[Mapping[str, Any]], width: int) -> Array:
        if not records:
            return np.zeros((0, width), dtype=np.float64)
        if set(map(type, records)) != _DICTS:
            raise Fallback
        size = len(records)
        # one spare cell after the matrix takes the ones of values that are no category
        cells = np.zeros(size * width + 1, dtype=np.float64)
        out = cells[:-1].reshape(size, width)
        try:
            if self.required is not None or self.optional:
                self._numbers(records, out)
            if self.categories is not None:
                self._one_hot(records, cells, width)
            for name, accepted, required, emitters in self.others:
                _write_column(records, out, cells, name, accepted, required, emitters)
        except (KeyError, TypeError):  # a missing required field, an unhashable value
            raise Fallback from None
        return out

    def _numbers(self, records: Sequence[Mapping[str, Any]], out: Array) -> None:
        """Write the number fields' outputs into ``out``, operations applied."""
        size = len(records)
        rows = self.required.rows(records) if self.required is not None else []
        columns = [list(map(dict.get, records, repeat(name))) for name in self.optional]  # type: ignore[arg-type]
        required = self.required.values(rows) if self.required is not None else ()
        if not set(map(type, chain(required, *columns))) <= _NUMBER:
            raise Fallback
        if self.required is not None:
            count = len(self.required_slots)
            values = np.fromiter(self.required.values(rows), np.float64, size * count)
            out[:, self.required_slots] = values.reshape(size, count)
        if columns:
            count = len(columns)
            values = np.fromiter(chain.from_iterable(columns), np.float64, size * count)
            out[:, self.optional_slots] = values if count == 1 else values.reshape(count, size).T
        self.number_operations(out)

    def number_operations(self, out: Array) -> None:
        """Apply the number fields' operations to their outputs, in place."""
        for slots, operations in self.number_groups:
            part = out[:, slots]
            for kind, parameters in operations:
                part = _ARRAY_OPS[kind](part, parameters)
            out[:, slots] = part

    def _one_hot(self, records: Sequence[Mapping[str, Any]], cells: Array, width: int) -> None:
        assert self.categories is not None
        size, fields = len(records), len(self.category_slots)
        rows = self.categories.rows(records)
        positions = np.fromiter(
            map(dict.get, cycle(self.category_slots), self.categories.values(rows), repeat(-1)),
            np.int64,
            size * fields,
        )
        flat = positions + np.arange(0, size * width, width).repeat(fields)
        missed = positions < 0
        if missed.any():  # unknown categories and None: an all-zero block; others: wrong
            values = list(self.categories.values(rows))
            if not {type(values[i]) for i in np.flatnonzero(missed).tolist()} <= _TEXT:
                raise Fallback
            flat[missed] = size * width  # the spare cell
        cells[flat] = 1.0


class _Block:
    """Required fields read together: one ``itemgetter`` call per record."""

    def __init__(self, names: Sequence[str]) -> None:
        self.getter = itemgetter(*names)
        self.single = len(names) == 1

    def rows(self, records: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Per record, the tuple of its values (the value itself for a single field)."""
        return list(map(self.getter, records))

    def values(self, rows: list[Any]) -> Iterable[Any]:
        """The values of :meth:`rows`, record after record."""
        return iter(rows) if self.single else chain.from_iterable(rows)


def _index(slots: list[int]) -> int | list[int]:
    """Output columns as an index: a single one as an int (numpy then gives a view)."""
    return slots[0] if len(slots) == 1 else slots


def _block(names: Sequence[str]) -> _Block | None:
    return _Block(names) if names else None


def _write_column(  # noqa: PLR0917 - the parts of one field of the batch plan
    records: Sequence[Mapping[str, Any]],
    out: Array,
    cells: Array,
    name: str,
    accepted: frozenset[type],
    required: bool,
    emitters: Sequence[_Emitter],
) -> None:
    """Check the field ``name`` of every record, then write its outputs (``emitters``)."""
    if required:
        values: list[Any] = list(map(itemgetter(name), records))
    else:
        values = list(map(dict.get, records, repeat(name)))  # type: ignore[arg-type]
    if not set(map(type, values)) <= accepted:
        raise Fallback
    write_values(values, out, cells, accepted is _TEXT, emitters)


def write_values(
    values: list[Any], out: Array, cells: Array, text: bool, emitters: Sequence[_Emitter]
) -> None:
    """Write the outputs (``emitters``) of one field whose checked ``values`` (one per
    record: text or None if ``text``, else numbers) are given."""
    size, width = out.shape
    numbers = None if text else np.fromiter(values, np.float64, size)
    for _, ops, slot, slots in emitters:
        column: Any = values if numbers is None else numbers
        for op in ops:
            twin = _twin(op)
            if twin is not None and isinstance(column, np.ndarray):
                kind, parameters = twin
                column = _ARRAY_OPS[kind](column, np.array(parameters))
            else:
                column = list(
                    map(op, column.tolist() if isinstance(column, np.ndarray) else column)
                )
        if slots is None:
            out[:, slot] = column
            continue
        listed = column.tolist() if isinstance(column, np.ndarray) else column
        positions = np.fromiter(map(slots.get, listed, repeat(-1)), np.int64, size)
        flat = positions + np.arange(0, size * width, width)
        flat[positions < 0] = size * width  # no category: the spare cell
        cells[flat] = 1.0


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
