"""Reading column frames from a pandas DataFrame (training) or from records (serving)."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from mlwp.model.features import (
    Array,
    Columns,
    Feature,
    PreprocessingError,
    RecordError,
    _is_missing,
)

if TYPE_CHECKING:
    import pandas as pd


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
