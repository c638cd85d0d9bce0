"""Drift of served inputs and predictions against the training baseline, with Evidently.

**Baseline.** At training time (:func:`log_baseline`, called by
:func:`mlwp.training.tracking.log_model_run` for every backend) a sample of the training
split, at most :data:`BASELINE_ROWS` rows of the model's raw features, is scored by the model
and logged on the training run as ``baseline/profile.parquet`` (features plus the model's
``prediction``, a class index or value, and ``probability`` of the positive class for a
binary model), beside ``baseline/profile.json`` (column kinds, per-column summaries, the
model's objective and classes). Every registered version points at its run, so every version
carries its baseline.

**Comparison.** :func:`detect_drift` runs an Evidently ``Report`` of one ``ValueDrift``
metric per column on (window of captured rows, baseline). The method and threshold of each
column come from the definition (``drift.columns.<name>``, else ``drift.method`` /
``drift.threshold``), else Evidently's own choice: K-S (numerical) or chi-square / Z
(categorical) p-values when the reference has at most 1,000 rows, Wasserstein distance
(normed) or Jensen-Shannon distance above that, with its defaults (p < 0.05; distance >= 0.1).
The report is kept for its HTML and JSON (logged to MLflow by the monitor); per column the
result is Evidently's own verdict (its drift test's status).

**Alarm.** ``drifted`` is true when the share of drifted columns reaches ``drift_share``
(None: any one column), and ``prediction_drifted`` when the prediction or probability column
drifted. With a p-value method at threshold ``t``, a column without drift is flagged in a
share ``t`` of the windows (that is what a p-value threshold means); with several columns the
chance that *some* column is flagged grows, so set ``drift_share`` or a lower threshold (for
example ``t / columns``, Bonferroni) when one alarm a month is too many. Distance methods have
no such rate: they flag a change of the distribution of at least the threshold's size, which
a window without drift does not reach once it has a few hundred rows.

**Compatibility.** Evidently 0.7.23 imports ``pandas.core.dtypes.common.
infer_dtype_from_object``, which pandas 3 removed; only a legacy data-integrity test of
Evidently uses it (nothing here does), so :func:`_evidently` defines it before the import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlwp.errors import MlwpError
from mlwp.monitoring.drift_methods import threshold_problem

if TYPE_CHECKING:
    import pandas as pd

    from mlwp.model import Model

BASELINE_ROWS = 5000
BASELINE_DIR = "baseline"
PROFILE_PARQUET = f"{BASELINE_DIR}/profile.parquet"
PROFILE_JSON = f"{BASELINE_DIR}/profile.json"
PREDICTION = "prediction"
PROBABILITY = "probability"
NUMERICAL = "numerical"
CATEGORICAL = "categorical"
# Evidently 0.7's drift methods (its stattest registry) and the column kinds each applies to,
# to check settings without importing Evidently.
_BOTH = (NUMERICAL, CATEGORICAL)
METHODS: dict[str, tuple[str, ...]] = {
    "anderson": (NUMERICAL,),
    "chisquare": (CATEGORICAL,),
    "cramer_von_mises": (NUMERICAL,),
    "ed": (NUMERICAL,),
    "empirical_mmd": (NUMERICAL,),
    "es": (NUMERICAL,),
    "fisher_exact": (CATEGORICAL,),
    "g_test": (CATEGORICAL,),
    "hellinger": _BOTH,
    "jensenshannon": _BOTH,
    "kl_div": _BOTH,
    "ks": (NUMERICAL,),
    "mannw": (NUMERICAL,),
    "psi": _BOTH,
    "t_test": (NUMERICAL,),
    "TVD": (CATEGORICAL,),
    "wasserstein": (NUMERICAL,),
    "z": (CATEGORICAL,),
}


class DriftError(MlwpError):
    """Drift cannot be computed as asked (no baseline, unknown column or method)."""

    code = "drift_error"


def _evidently() -> Any:
    """Import Evidently (seconds: import it only where drift is computed)."""
    import pandas as pd
    import pandas.core.dtypes.common as pandas_common

    if not hasattr(pandas_common, "infer_dtype_from_object"):
        # removed in pandas 3; imported (not called on our path) by evidently.legacy.tests
        pandas_common.infer_dtype_from_object = lambda dtype: pd.api.types.pandas_dtype(dtype).type
    import evidently

    return evidently


# --------------------------------------------------------------------------- baseline


def _kind(dtype: str) -> str:
    return NUMERICAL if dtype in ("float", "int") else CATEGORICAL


def baseline_frame(
    model: Model, frame: pd.DataFrame, *, rows: int = BASELINE_ROWS, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A sample of ``frame`` (the training split) with the model's outputs, and its profile."""
    names = [f.name for f in model.features if f.name in frame.columns]
    if not names:
        raise DriftError("the training frame has none of the model's features")
    sample = frame[names]
    if len(sample) > rows:
        sample = sample.sample(n=rows, random_state=seed)
    sample = sample.reset_index(drop=True)
    columns: dict[str, dict[str, Any]] = {
        f.name: {"kind": _kind(f.dtype), "dtype": f.dtype}
        for f in model.features
        if f.name in names
    }
    outputs = model_outputs(model, sample)
    for name, values in outputs.items():
        if name in sample.columns:
            continue  # a feature of that name wins; the output is not compared then
        sample[name] = values
        kind = CATEGORICAL if name == PREDICTION and model.objective != "regression" else NUMERICAL
        columns[name] = {"kind": kind, "dtype": "float", "output": True}
    profile = {
        "format": 1,
        "rows": len(sample),
        "source_rows": len(frame),
        "objective": model.objective,
        "classes": model.classes,
        "columns": columns,
        "summary": summarise(sample, columns),
    }
    return sample, profile


def model_outputs(model: Model, frame: pd.DataFrame) -> dict[str, np.ndarray[Any, Any]]:
    """The model's prediction (class index or value) and positive-class probability, as
    capture records them (:mod:`mlwp.monitoring.capture`)."""
    records = frame.to_dict(orient="records")
    result = model.predict(records)
    if model.objective == "regression":
        return {PREDICTION: np.asarray(result.predictions, dtype=float)}
    classes = list(model.classes or [])
    index = {c: i for i, c in enumerate(classes)}
    outputs = {PREDICTION: np.asarray([index.get(p, np.nan) for p in result.predictions], float)}
    if model.objective == "binary" and result.probabilities is not None:
        outputs[PROBABILITY] = np.asarray([p[1] for p in result.probabilities], dtype=float)
    return outputs


def summarise(frame: pd.DataFrame, columns: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Small per-column statistics for people reading the profile (not used by the tests)."""
    import pandas as pd

    out: dict[str, Any] = {}
    for name, spec in columns.items():
        if name not in frame.columns:
            continue
        series = frame[name]
        entry: dict[str, Any] = {"missing": int(series.isna().sum())}
        if spec["kind"] == NUMERICAL:
            values = pd.to_numeric(series, errors="coerce")
            entry.update(
                mean=_num(values.mean()),
                std=_num(values.std()),
                min=_num(values.min()),
                p50=_num(values.median()),
                max=_num(values.max()),
            )
        else:
            counts = series.astype("string").value_counts(normalize=True).head(20)
            entry["top"] = {str(k): round(float(v), 6) for k, v in counts.items()}
        out[name] = entry
    return out


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def log_baseline(run_id: str, model: Model, frame: pd.DataFrame) -> dict[str, Any]:
    """Log the baseline of ``model`` trained on ``frame`` to the MLflow run ``run_id``."""
    import tempfile

    import mlflow

    sample, profile = baseline_frame(model, frame)
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory(prefix="mlwp-baseline-") as tmp:
        folder = Path(tmp) / BASELINE_DIR
        folder.mkdir()
        sample.to_parquet(folder / "profile.parquet", index=False)
        (folder / "profile.json").write_text(json.dumps(profile, indent=2, default=str))
        client.log_artifacts(run_id, str(folder), BASELINE_DIR)
    return profile


def load_baseline(run_id: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The baseline sample and profile logged on the training run ``run_id``."""
    import tempfile

    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="mlwp-baseline-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=BASELINE_DIR, dst_path=tmp
            )
        except (MlflowException, OSError) as exc:
            raise DriftError(
                f"training run {run_id} has no {BASELINE_DIR}/ artifact (trained before "
                f"baselines were logged? retrain to get one): {exc}",
                code="no_baseline",
            ) from exc
        folder = Path(local)
        if not (folder / "profile.parquet").exists():
            raise DriftError(f"training run {run_id} has no {PROFILE_PARQUET}", code="no_baseline")
        frame = pd.read_parquet(folder / "profile.parquet")
        profile = json.loads((folder / "profile.json").read_text())
    return frame, profile


# --------------------------------------------------------------------------- current window


def current_frame(capture: pd.DataFrame, profile: Mapping[str, Any]) -> pd.DataFrame:
    """The captured rows as a frame of the baseline's columns (inputs parsed from JSON)."""
    import pandas as pd

    columns = profile["columns"]
    inputs = [_record(text) for text in capture["inputs"].tolist()] if len(capture) else []
    frame = pd.DataFrame.from_records(inputs, index=range(len(inputs)))
    out = pd.DataFrame(index=range(len(capture)))
    for name, spec in columns.items():
        if spec.get("output"):
            source = capture[name] if name in capture.columns else None
            values = source.to_numpy(dtype=float, na_value=np.nan) if source is not None else None
        else:
            values = frame[name].to_numpy() if name in frame.columns else None
        out[name] = values if values is not None else np.nan
    return out


def _record(text: Any) -> dict[str, Any]:
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _typed(frame: pd.DataFrame, columns: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Numerical columns as floats, categorical ones as strings (the same on both sides)."""
    import pandas as pd

    out = pd.DataFrame(index=frame.index)
    for name, spec in columns.items():
        series = frame[name] if name in frame.columns else pd.Series(np.nan, index=frame.index)
        if spec["kind"] == NUMERICAL:
            out[name] = pd.to_numeric(series, errors="coerce").astype(float)
        else:
            text = series.map(lambda v: None if _is_missing(v) else _category(v))
            out[name] = text.astype(object)
    return out


def _is_missing(value: Any) -> bool:
    import pandas as pd

    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _category(value: Any) -> str:
    # 1 and 1.0 (an index written as float) are the same category
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class DriftSettings:
    """Per-column methods and thresholds, and what raises the alarm."""

    method: str | None = None
    threshold: float | None = None
    columns: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    drift_share: float | None = None  # None: any one column
    predictions: bool = True
    min_rows: int = 100

    def for_column(self, name: str, kind: str) -> tuple[str | None, float | None]:
        """The method and threshold of column ``name`` (None: Evidently's default).

        A column's own method must suit its kind; the shared ``method`` applies to the
        columns it suits and leaves the others to Evidently's default (with ``threshold``
        only when the shared method applies, as thresholds mean different things per method:
        a column's own method takes the shared threshold only when it is the shared method,
        else its own or Evidently's default for it).
        """
        own = self.columns.get(name, {})
        method = own.get("method")
        if method is not None:
            _check_method(method, kind, f"column {name!r}")
            shared = self.threshold if method == self.method else None
            return _checked(name, method, own.get("threshold", shared))
        if self.method is not None:
            _check_method(self.method, None, "drift")
            if kind in METHODS[self.method]:
                return _checked(name, self.method, own.get("threshold", self.threshold))
            return None, own.get("threshold")
        return None, own.get("threshold", self.threshold)


def _checked(name: str, method: str, threshold: float | None) -> tuple[str, float | None]:
    problem = threshold_problem(method, threshold)
    if problem is not None:
        raise DriftError(f"drift of column {name!r}: {problem}")
    return method, threshold


def _check_method(method: str, kind: str | None, where: str) -> None:
    if method not in METHODS:
        raise DriftError(
            f"drift method {method!r} of {where} is not one of Evidently's: {', '.join(METHODS)}"
        )
    if kind is not None and kind not in METHODS[method]:
        raise DriftError(
            f"drift method {method!r} of {where} does not apply to a {kind} column; it applies "
            f"to {' and '.join(METHODS[method])} columns"
        )


@dataclass
class DriftResult:
    """Per-column verdicts, the alarm, and the Evidently snapshot behind them."""

    columns: dict[str, dict[str, Any]]
    drifted: bool
    prediction_drifted: bool
    share: float
    rows: int
    reference_rows: int
    skipped: str | None = None
    snapshot: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "drifted": self.drifted,
            "prediction_drifted": self.prediction_drifted,
            "share": self.share,
            "rows": self.rows,
            "reference_rows": self.reference_rows,
            "skipped": self.skipped,
        }

    def save_html(self, path: str | Path) -> bool:
        if self.snapshot is None:
            return False
        self.snapshot.save_html(str(path))
        return True

    def evidently_json(self) -> str | None:
        return None if self.snapshot is None else str(self.snapshot.json())


def detect_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Mapping[str, Mapping[str, Any]],
    settings: DriftSettings | None = None,
) -> DriftResult:
    """Compare ``current`` with ``reference`` column by column (see the module doc)."""
    settings = settings or DriftSettings()
    unknown = sorted(set(settings.columns) - set(columns))
    if unknown:
        raise DriftError(
            f"drift settings name unknown columns {', '.join(unknown)}; the model's columns "
            f"are {', '.join(columns)}"
        )
    chosen = {
        name: spec
        for name, spec in columns.items()
        if settings.predictions or not spec.get("output")
    }
    ref = _typed(reference, chosen)
    cur = _typed(current, chosen)
    # a column with no value on one side cannot be compared (e.g. no probability captured)
    usable = [n for n in chosen if ref[n].notna().any() and cur[n].notna().any()]
    if len(cur) < settings.min_rows or not usable:
        reason = (
            f"{len(cur)} captured rows in the window, fewer than {settings.min_rows}"
            if len(cur) < settings.min_rows
            else "no column has values on both sides"
        )
        return DriftResult({}, False, False, 0.0, len(cur), len(ref), skipped=reason)
    evidently = _evidently()
    from evidently.metrics import ValueDrift

    definition = evidently.DataDefinition(
        numerical_columns=[n for n in usable if chosen[n]["kind"] == NUMERICAL],
        categorical_columns=[n for n in usable if chosen[n]["kind"] == CATEGORICAL],
    )
    metrics = []
    for name in usable:
        method, threshold = settings.for_column(name, chosen[name]["kind"])
        metrics.append(ValueDrift(column=name, method=method, threshold=threshold))
    report = evidently.Report(metrics, include_tests=True)
    snapshot = report.run(
        evidently.Dataset.from_pandas(cur[usable], data_definition=definition),
        evidently.Dataset.from_pandas(ref[usable], data_definition=definition),
    )
    document = snapshot.dict()
    status = {
        test["metric_config"]["metric_id"]: test["status"] for test in document.get("tests", [])
    }
    results: dict[str, dict[str, Any]] = {}
    for metric in document["metrics"]:
        config = metric["config"]
        name = config["column"]
        results[name] = {
            "method": config.get("method"),
            "threshold": config.get("threshold"),
            "score": _num(metric["value"]),
            "drifted": status.get(metric["id"]) == "FAIL",
            "kind": chosen[name]["kind"],
            "output": bool(chosen[name].get("output")),
        }
    drifted_count = sum(r["drifted"] for r in results.values())
    share = drifted_count / len(results)
    alarm = drifted_count >= 1 if settings.drift_share is None else share >= settings.drift_share
    return DriftResult(
        columns=results,
        drifted=bool(alarm),
        prediction_drifted=any(r["drifted"] and r["output"] for r in results.values()),
        share=share,
        rows=len(cur),
        reference_rows=len(ref),
        snapshot=snapshot,
    )


def drifted_columns(result: DriftResult) -> Sequence[str]:
    """The names of the columns found drifted, inputs first."""
    return sorted(
        (n for n, r in result.columns.items() if r["drifted"]),
        key=lambda n: (result.columns[n]["output"], n),
    )
