"""Run the declarative transform steps of a workflow definition.

Two kinds of step (the full rules are in docs/pipeline-ml.md):

- *feature steps* (select, drop, rename, cast, fill_missing, onehot, ordinal, scale, derive)
  are record-wise. They are fitted on the training rows and saved as the model's
  :class:`~mlwp.model.preprocessing.Preprocessing`, so the served model replays them on each raw
  record;
- *dataset steps* (filter, split, python) act on the dataset as a whole and are not replayed
  at serving time. ``python`` steps must come before every feature step (their output defines
  the raw schema); ``filter`` may appear anywhere; there is at most one ``split``.

The result holds the raw rows of each split (the columns as they were after the leading python
steps, the target included, exactly what a client would send plus the label) and the fitted
preprocessing. Statistics (medians, means, categories) come from the training rows only: the
split is planned first, then every feature step is fitted on the rows it assigned to ``train``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mlwp.errors import MlwpError
from mlwp.model.columns import columns_from_frame
from mlwp.model.expressions import Expression, _truth
from mlwp.model.features import FEATURE_OPS, Columns, PreprocessingError, _ValueProblem
from mlwp.model.preprocessing import Preprocessing, infer_inputs
from mlwp.model.steps import Step, fit_step

if TYPE_CHECKING:
    import pandas as pd

DATASET_OPS = ("filter", "split", "python")
SPLITS = ("train", "validation", "test")
_TRAIN, _VALIDATION, _TEST = 0, 1, 2


class TransformError(MlwpError):
    """A transform step cannot run on the data given; the message names the step index."""

    code = "transform_error"


@dataclass
class TransformResult:
    """The raw rows of each split and the preprocessing fitted on the training rows."""

    splits: dict[str, pd.DataFrame]
    preprocessing: Preprocessing
    rows_in: int
    rows_filtered: int
    transformed: dict[str, Columns]

    def features(self, split: str = "train") -> pd.DataFrame:
        """The transformed columns of ``split`` (label included), as the steps left them."""
        import pandas as pd

        columns = self.transformed[split]
        return pd.DataFrame({name: columns.data[name] for name in columns.names})


def _step_dict(step: Any) -> dict[str, Any]:
    if hasattr(step, "model_dump"):
        data: dict[str, Any] = step.model_dump(exclude_none=True)
        return data
    if isinstance(step, Mapping):
        return dict(step)
    raise TransformError(f"a transform step must be a mapping, got {type(step).__name__}")


def _where(index: int, op: str) -> str:
    return f"steps[{index}] ({op})"


def run_transform(frame: pd.DataFrame, steps: Sequence[Any]) -> TransformResult:
    """Run ``steps`` on ``frame``; see the module docstring for the semantics."""
    specs = [_step_dict(step) for step in steps]
    _check_order(specs)
    rows_in = len(frame)

    # Leading dataset steps run on the DataFrame and define the raw schema.
    first_feature = next(
        (i for i, s in enumerate(specs) if s.get("op") in (*FEATURE_OPS, "split")), len(specs)
    )
    raw = frame
    for index, spec in enumerate(specs[:first_feature]):
        raw = _dataset_step(raw, spec, index)
    raw = raw.reset_index(drop=True)
    try:
        base = columns_from_frame(raw)
    except PreprocessingError as exc:
        raise TransformError(f"input data: {exc.message}", code=exc.code) from exc
    inputs = infer_inputs(raw)
    body = list(enumerate(specs))[first_feature:]

    has_split = any(spec.get("op") == "split" for _, spec in body)
    plan = _run(raw, base, body, None) if has_split else None
    fitted, columns, positions, assignment = _run(
        raw, base, body, None if plan is None else plan[3]
    )
    if assignment is None:
        assignment = np.full(len(raw), _TRAIN, dtype=np.int64)
    splits: dict[str, pd.DataFrame] = {}
    transformed: dict[str, Columns] = {}
    labels = assignment[positions]
    for code, name in enumerate(SPLITS):
        mask = labels == code
        if code != _TRAIN and not has_split:
            continue
        splits[name] = raw.iloc[positions[mask]].reset_index(drop=True)
        transformed[name] = columns.take(mask)
    return TransformResult(
        splits=splits,
        preprocessing=Preprocessing(inputs, fitted),
        rows_in=rows_in,
        rows_filtered=rows_in - len(positions),
        transformed=transformed,
    )


def _check_order(specs: list[dict[str, Any]]) -> None:
    seen_feature: int | None = None
    split_at: int | None = None
    for index, spec in enumerate(specs):
        op = spec.get("op")
        if op not in FEATURE_OPS and op not in DATASET_OPS:
            raise TransformError(
                f"{_where(index, str(op))}: unknown op {op!r} (expected one of "
                f"{', '.join((*FEATURE_OPS, *DATASET_OPS))})",
                code="invalid_step",
            )
        if op in FEATURE_OPS or op == "split":
            seen_feature = index if seen_feature is None else seen_feature
        if op == "python" and seen_feature is not None:
            raise TransformError(
                f"{_where(index, 'python')}: python steps run on the whole dataset and cannot "
                f"be replayed on one record when serving; move it before steps[{seen_feature}]",
                code="invalid_step",
            )
        if op == "split":
            if split_at is not None:
                raise TransformError(
                    f"{_where(index, 'split')}: a second split (the first is steps[{split_at}])",
                    code="invalid_step",
                )
            split_at = index


def _dataset_step(frame: pd.DataFrame, spec: Mapping[str, Any], index: int) -> pd.DataFrame:
    """A leading python or filter step, on the DataFrame."""
    import pandas as pd

    where = _where(index, str(spec["op"]))
    if spec["op"] == "filter":
        columns = columns_from_frame(frame)
        mask = _filter_mask(spec, columns, where)
        return frame.loc[mask]
    target = spec.get("callable")
    extra = sorted(set(spec) - {"op", "callable", "kwargs"})
    if extra:
        raise TransformError(
            f"{where}: unknown argument(s) {', '.join(extra)} (allowed: callable, kwargs)"
        )
    if not isinstance(target, str) or ":" not in target:
        raise TransformError(f"{where}: 'callable' must be 'module:function', got {target!r}")
    module_name, _, function_name = target.partition(":")
    try:
        function: Any = importlib.import_module(module_name)
        for part in function_name.split("."):
            function = getattr(function, part)
    except (ImportError, AttributeError) as exc:
        raise TransformError(f"{where}: cannot import {target!r}: {exc}") from exc
    result = function(frame, **dict(spec.get("kwargs") or {}))
    if not isinstance(result, pd.DataFrame):
        raise TransformError(
            f"{where}: {target} returned {type(result).__name__}, expected a DataFrame"
        )
    return result


def _filter_mask(spec: Mapping[str, Any], columns: Columns, where: str) -> np.ndarray[Any, Any]:
    extra = sorted(set(spec) - {"op", "expression"})
    if extra or not isinstance(spec.get("expression"), str):
        raise TransformError(f"{where}: filter takes one argument, 'expression' (a string)")
    try:
        values = Expression(spec["expression"], where=where).evaluate(columns)
    except PreprocessingError as exc:
        raise TransformError(exc.message, code=exc.code) from exc
    return _truth(values)


def _run(
    raw: pd.DataFrame,
    base: Columns,
    body: list[tuple[int, dict[str, Any]]],
    plan: np.ndarray[Any, Any] | None,
) -> tuple[list[Step], Columns, np.ndarray[Any, Any], np.ndarray[Any, Any] | None]:
    """One pass over the steps; with a ``plan`` (split labels by raw row), fit on train rows."""
    columns = base
    positions = np.arange(len(raw))
    assignment = plan
    fitted: list[Step] = []
    for index, spec in body:
        op = str(spec["op"])
        where = _where(index, op)
        try:
            if op in FEATURE_OPS:
                fit_rows = columns if plan is None else columns.take(plan[positions] == _TRAIN)
                step = fit_step(spec, fit_rows, where)
                columns = step.apply(columns, where)
                fitted.append(step)
            elif op == "filter":
                mask = _filter_mask(spec, columns, where)
                columns = columns.take(mask)
                positions = positions[mask]
            elif op == "split" and plan is None:
                assignment = np.full(len(raw), -1, dtype=np.int64)
                assignment[positions] = _split(spec, columns, where)
        except _ValueProblem as problem:
            raise TransformError(
                f"{where}: column {problem.column!r}, row {positions[problem.position]}: "
                f"{problem.message}",
                code="invalid_value",
            ) from None
        except PreprocessingError as exc:
            raise TransformError(exc.message, code=exc.code) from exc
    return fitted, columns, positions, assignment


def _split(spec: Mapping[str, Any], columns: Columns, where: str) -> np.ndarray[Any, Any]:
    """Seeded, optionally stratified assignment of each current row to train/validation/test."""
    extra = sorted(set(spec) - {"op", "test_size", "validation_size", "stratify", "seed"})
    if extra:
        raise TransformError(
            f"{where}: unknown argument(s) {', '.join(extra)} (allowed: test_size, "
            "validation_size, stratify, seed)",
            code="invalid_step",
        )
    test_size = float(spec.get("test_size", 0.2))
    validation_size = float(spec.get("validation_size", 0.1))
    seed = int(spec.get("seed", 42))
    if not (0 <= test_size < 1 and 0 <= validation_size < 1 and test_size + validation_size < 1):
        raise TransformError(
            f"{where}: test_size ({test_size}) and validation_size ({validation_size}) must be "
            "fractions in [0, 1) summing to less than 1",
            code="invalid_step",
        )
    stratify = spec.get("stratify")
    if stratify is None:
        keys = np.zeros(columns.size, dtype=np.int64)
    else:
        if stratify not in columns.data:
            raise TransformError(
                f"{where}: stratify column {stratify!r} not found "
                f"(columns: {', '.join(columns.names)})",
                code="missing_column",
            )
        values = columns.data[stratify]
        text = [repr(v) for v in values] if values.dtype == object else None
        keys = np.unique(
            np.array(text if text is not None else [repr(float(v)) for v in values]),
            return_inverse=True,
        )[1]
    rng = np.random.default_rng(seed)
    out = np.full(columns.size, _TRAIN, dtype=np.int64)
    for key in np.unique(keys):
        members = rng.permutation(np.flatnonzero(keys == key))
        n_test = int(np.floor(len(members) * test_size + 0.5))
        n_validation = int(np.floor(len(members) * validation_size + 0.5))
        out[members[:n_test]] = _TEST
        out[members[n_test : n_test + n_validation]] = _VALIDATION
    return out
