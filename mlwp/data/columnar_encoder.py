"""The feature matrix of Arrow record batches, written column by column (batch scoring).

The model's fitted steps (:mod:`mlwp.model.steps`) go from column to column: each step makes
new float64 arrays, a one-hot step a float64 block of all its categories, and the matrix is
then assembled in one more copy. For a scoring task that is as much work as the trees. This
encoder traces the steps once per model into a plan that says, for every column of the
matrix, where its values come from: a raw number column through a chain of element-wise
steps (fill, cast, scale), a one-hot indicator of a raw text column, or an ordinal code. A
record batch is then encoded straight into the float32 matrix XGBoost predicts on: numbers by
the same float64 operations as the steps (so the same float32 values), text from Arrow's
dictionary codes (each distinct value looked up once, every row by one integer gather).

Only what the plan covers is compiled; a model with another step (derive, a cast from text,
a one-hot of numbers) or a batch whose types differ from the model's gets None, and the
caller takes the steps' own column path, which handles (or names) everything. The answers are
the same either way: tests compare the two matrices bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mlwp.model.features import _format_number

if TYPE_CHECKING:
    import pyarrow as pa

    from mlwp.model.preprocessing import Preprocessing
    from mlwp.model.steps import Step

Array = np.ndarray[Any, Any]


class _Unsupported(Exception):
    """A step or a combination of steps this encoder does not trace (the column path does)."""


@dataclass(frozen=True)
class _Text:
    """A raw text column (None: absent, all missing), its missing values filled with ``fill``."""

    raw: str | None
    fill: str | None = None


@dataclass(frozen=True)
class _Indicator:
    """1.0 where the text source's value has position ``position`` in ``lookup``, else 0.0."""

    source: _Text
    lookup: Mapping[Any, int] = field(hash=False, compare=False)
    position: int


@dataclass(frozen=True)
class _Ordinal:
    """The position of the text source's value in ``lookup``; NaN when unknown or missing."""

    source: _Text
    lookup: Mapping[Any, int] = field(hash=False, compare=False)


@dataclass(frozen=True)
class _Number:
    """Numbers through element-wise float64 steps (``ops``), from ``base``: a raw number
    column (None: absent, all missing), or a one-hot or ordinal column."""

    base: str | _Indicator | _Ordinal | None
    ops: tuple[tuple[Any, ...], ...] = ()

    def then(self, *op: Any) -> _Number:
        return _Number(self.base, (*self.ops, op))


_Source = _Number | _Text | _Indicator | _Ordinal
_Codes = tuple[Array, list[Any]]  # a text column: each row's dictionary code, the dictionary


class ColumnarEncoder:
    """Arrow record batch -> the model's float32 feature matrix, by a plan traced once."""

    def __init__(self, preprocessing: Preprocessing, plan: list[_Source]) -> None:
        self.features = {f.name: f.dtype for f in preprocessing.features}
        self.required = [f.name for f in preprocessing.features if f.required]
        self.plan = plan

    @classmethod
    def compile(cls, preprocessing: Preprocessing) -> ColumnarEncoder | None:
        """The encoder of a preprocessing's feature steps; None when a step is not covered."""
        try:
            plan = _trace(preprocessing)
        except _Unsupported:
            return None
        return cls(preprocessing, plan)

    def matrix(self, batch: pa.RecordBatch) -> Array | None:
        """The float32 matrix of the batch's rows (column-major); None when a column's Arrow type is
        not the one the plan reads (the column path reads it, or names the problem)."""
        import pyarrow as pa

        names = set(batch.schema.names)
        if any(name not in names for name in self.required):
            return None
        size = batch.num_rows
        numbers: dict[str, Array] = {}
        codes: dict[str, _Codes] = {}
        for name, dtype in self.features.items():
            if name not in names:
                continue
            array = batch.column(name)
            kind = array.type
            if dtype == "str":
                text = kind.value_type if pa.types.is_dictionary(kind) else kind
                if not (pa.types.is_string(text) or pa.types.is_large_string(text)):
                    return None
                if not pa.types.is_dictionary(kind):
                    array = array.dictionary_encode()
                indices = array.indices.fill_null(-1).to_numpy().astype(np.intp, copy=False)
                codes[name] = (indices, array.dictionary.to_pylist())
            elif (
                pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
            ):
                numbers[name] = array.cast(pa.float64()).to_numpy(zero_copy_only=False)
            else:
                return None
        # Column by column into a column-major block (a strided write per column costs about
        # 30 times a contiguous one), each cast to float32 on assignment as the column path's
        # np.concatenate(..., dtype=float32) casts its float64 arrays (round to nearest). The
        # matrix is that block's transpose, a Fortran-ordered view: XGBoost reads it through
        # its strides as fast as rows (a transposing copy cost 0.03 s per 1M rows).
        block = np.empty((len(self.plan), size), dtype=np.float32)
        batch_columns = _BatchColumns(numbers, codes, size)
        for index, source in enumerate(self.plan):
            block[index] = batch_columns.values(source)
        return block.T


class _BatchColumns:
    """One batch's raw columns, and the rows' category positions computed once per text
    column and lookup (every one-hot column of a text column shares them)."""

    def __init__(self, numbers: dict[str, Array], codes: dict[str, _Codes], size: int) -> None:
        self.numbers, self.codes, self.size = numbers, codes, size
        self._positions: dict[tuple[_Text, int], Array] = {}

    def values(self, source: _Source) -> Array:
        """A matrix column's values (float64, or bool for an indicator)."""
        if isinstance(source, _Number):
            return self.number(source)
        if isinstance(source, _Indicator):
            hit: Array = self.positions(source.source, source.lookup) == source.position
            return hit
        if isinstance(source, _Ordinal):
            found = self.positions(source.source, source.lookup).astype(np.float64)
            found[found < 0] = np.nan
            return found
        raise AssertionError(source)  # text to the end is refused by _trace

    def positions(self, source: _Text, lookup: Mapping[Any, int]) -> Array:
        key = (source, id(lookup))
        if key not in self._positions:
            self._positions[key] = _positions(source, lookup, self.codes, self.size)
        return self._positions[key]

    def number(self, source: _Number) -> Array:
        """The float64 values of a number source: its base, then each step as the column
        path computes it (mlwp.model.steps: _apply_fill, cast_array, _apply_scale)."""
        base = source.base
        if isinstance(base, (_Indicator, _Ordinal)):
            array = self.values(base).astype(np.float64)
        elif base is None or base not in self.numbers:
            array = np.full(self.size, np.nan)
        else:
            array = self.numbers[base]
        return _apply_ops(array, source.ops)


def _apply_ops(array: Array, ops: Sequence[tuple[Any, ...]]) -> Array:
    for op in ops:
        if op[0] == "fill":
            array = np.where(np.isnan(array), op[1], array)
        elif op[0] == "scale":
            array = (array - op[1]) / op[2]
        elif op[0] == "int":
            array = np.trunc(array)
        elif op[0] == "bool":
            with np.errstate(invalid="ignore"):
                array = np.where(np.isnan(array), np.nan, (array != 0).astype(np.float64))
        elif op[0] == "float":
            array = array.astype(np.float64)
    return array


def _positions(
    source: _Text,
    lookup: Mapping[Any, int],
    codes: Mapping[str, tuple[Array, list[Any]]],
    size: int,
) -> Array:
    """Each row's position in ``lookup`` (-1: unknown, or missing and not filled): each
    distinct value looked up once, then gathered by the rows' dictionary codes."""
    missing = -1 if source.fill is None else lookup.get(source.fill, -1)
    if source.raw is None or source.raw not in codes:
        return np.full(size, missing, dtype=np.int64)
    indices, values = codes[source.raw]
    table = np.fromiter(
        (-1 if value is None else lookup.get(value, -1) for value in values),
        dtype=np.int64,
        count=len(values),
    )
    if source.fill is not None and None in values:  # a null inside the dictionary
        table[[i for i, value in enumerate(values) if value is None]] = missing
    return np.append(table, missing)[indices]  # code -1 (a null row) takes the last entry


def _trace(preprocessing: Preprocessing) -> list[_Source]:
    """Follow the feature steps on symbolic columns; the matrix's columns' sources in order."""
    features = {f.name for f in preprocessing.features}
    columns: dict[str, _Source] = {}
    for feature in preprocessing.inputs:  # as Preprocessing._complete lays them out
        if feature.name == preprocessing.target:
            continue
        raw = feature.name if feature.name in features else None  # others read as missing
        columns[feature.name] = _Text(raw) if feature.dtype == "str" else _Number(raw)
    for step in preprocessing.feature_steps:
        columns = _trace_step(step, columns)
    if list(columns) != list(preprocessing.outputs):
        raise _Unsupported("the traced columns differ from the model's")
    plan = list(columns.values())
    if any(isinstance(source, _Text) for source in plan):
        raise _Unsupported("text left after the steps")  # the column path names it
    return plan


def _trace_step(step: Step, columns: dict[str, _Source]) -> dict[str, _Source]:
    op, spec = step.op, step.spec
    names = spec["values"] if op == "fill_missing" else spec.get("columns", ())
    if op != "derive" and any(name not in columns for name in names):
        raise _Unsupported(f"{op}: a column is missing")  # the column path names it
    if op == "select":
        return {name: columns[name] for name in spec["columns"]}
    if op == "drop":
        return {name: source for name, source in columns.items() if name not in spec["columns"]}
    if op == "rename":
        renamed = {spec["columns"].get(name, name): source for name, source in columns.items()}
        if len(renamed) != len(columns):
            raise _Unsupported("rename: duplicate names")
        return renamed
    out = dict(columns)
    if op == "cast":
        for name, dtype in spec["columns"].items():
            source = columns[name]
            if isinstance(source, _Text):
                if dtype != "str":
                    raise _Unsupported("cast of text to a number")  # parsed value by value
            elif dtype == "str":
                raise _Unsupported("cast of a number to text")
            else:
                out[name] = _number_of(source).then(dtype)
        return out
    if op == "fill_missing":
        for name, value in spec["values"].items():
            source = columns[name]
            if isinstance(source, _Text):
                fill = value if isinstance(value, str) else _format_number(float(value))
                out[name] = source if source.fill is not None else _Text(source.raw, fill)
            elif isinstance(value, str):
                raise _Unsupported("fill of a number with text")  # the column path refuses it
            else:
                out[name] = _number_of(source).then("fill", float(value))
        return out
    if op == "scale":
        for name, stats in spec["columns"].items():
            source = columns[name]
            if isinstance(source, _Text):
                raise _Unsupported("scale of text")  # the column path refuses it
            out[name] = _number_of(source).then("scale", float(stats["mean"]), float(stats["std"]))
        return out
    if op == "ordinal":
        for name in spec["columns"]:
            source = columns[name]
            if not isinstance(source, _Text):
                raise _Unsupported("ordinal of numbers")
            out[name] = _Ordinal(source, step.lookups[name])
        return out
    if op == "onehot":
        traced: dict[str, _Source] = {}
        for name, source in columns.items():
            if name not in spec["columns"]:
                traced[name] = source
                continue
            if not isinstance(source, _Text):
                raise _Unsupported("onehot of numbers")
            lookup = step.lookups[name]
            for position, output in enumerate(step.onehot_names[name]):
                if output in traced:
                    raise _Unsupported("onehot: clashing names")
                traced[output] = _Indicator(source, lookup, position)
        return traced
    raise _Unsupported(op)  # derive: an expression over columns


def _number_of(source: _Source) -> _Number:
    """The numbers of a source that element-wise steps continue (text is refused before)."""
    if isinstance(source, _Number):
        return source
    if isinstance(source, (_Indicator, _Ordinal)):
        return _Number(source)
    raise _Unsupported("a number step on text")


def encoder_for(preprocessing: Preprocessing) -> ColumnarEncoder | None:
    """The encoder of ``preprocessing``, compiled on first use and kept with it."""
    cache: dict[str, Any] = preprocessing.__dict__
    if "_columnar_encoder" not in cache:
        cache["_columnar_encoder"] = ColumnarEncoder.compile(preprocessing)
    encoder: ColumnarEncoder | None = cache["_columnar_encoder"]
    return encoder
