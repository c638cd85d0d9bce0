"""The vocabulary of preprocessing: raw input features, column frames, their errors and
value helpers, shared by the steps, the record encoder and the preprocessing."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlwp.errors import MlwpError

if TYPE_CHECKING:
    pass


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
# Up to this many records, the record encoder (mlwp.model.record_encoder) goes record by record;
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

    def matrix(self, names: Sequence[str], dtype: Any = np.float64) -> Array:
        """The columns ``names`` as a C-ordered matrix (float32: what XGBoost predicts on,
        cast as it would, in half the bytes)."""
        if not names:
            return np.zeros((self.size, 0), dtype=dtype)
        # np.stack(columns, axis=1) in two flat copies, a fraction of np.stack's per-column
        # cost; concatenate casts as np.stack does (same_kind)
        stacked = np.concatenate([self.data[name] for name in names], dtype=dtype)
        return stacked.reshape(len(names), self.size).T.copy()


class Coded(np.ndarray):  # type: ignore[type-arg]
    """A text column that also carries its codes into its few distinct values (an Arrow
    dictionary's, as batch scoring reads a Parquet file): one-hot and ordinal steps then look
    each distinct value up once, not each row. It is the object array of its values, so every
    other step reads it as any text column; an array derived from it is plain (its codes
    would not follow its values)."""

    categories: Array | None = None
    codes: Array | None = None

    @classmethod
    def of(cls, categories: Array, codes: Array) -> Coded:
        """The values ``categories[codes]``, None where a code is -1."""
        table = np.empty(categories.shape[0] + 1, dtype=object)  # the last one: None
        table[:-1] = categories
        values: Coded = table[codes].view(cls)
        values.categories, values.codes = categories, codes
        return values

    def __array_finalize__(self, obj: Any) -> None:
        self.categories = self.codes = None


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
