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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from mlwp.model.columns import DictReader, columns_from_frame, columns_from_records, frame_dtype
from mlwp.model.expressions import Expression
from mlwp.model.features import (
    FEATURE_OPS,
    Array,
    Columns,
    Feature,
    PreprocessingError,
    RecordError,
    _native,
    _ValueProblem,
)
from mlwp.model.json_records import JsonRecords
from mlwp.model.record_encoder import Fallback, RecordEncoder, compile_encoder
from mlwp.model.steps import Step, onehot_name

if TYPE_CHECKING:
    import pandas as pd


FORMAT = "mlwp.preprocessing/1"

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
        return compile_encoder(self.inputs, self.features, self.feature_steps, self.target)

    @cached_property
    def json_records(self) -> JsonRecords | None:
        """The JSON body decoder into the matrix (None: use the record encoder or the
        column path on parsed records)."""
        encoder = self.record_encoder
        return None if encoder is None else JsonRecords(encoder, self.features)

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
            # batch's answer does not depend on its size.
            except (Fallback, ArithmeticError):
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
