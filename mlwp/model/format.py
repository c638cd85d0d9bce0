"""The mlwp model format: load a model directory and score raw feature records.

A model directory (the SageMaker ``SM_MODEL_DIR`` output, and the MLflow model logged from it)
holds:

- ``model.ubj``: the native XGBoost booster, already cut to the best early-stopping iteration;
- ``mlwp.json``: objective, target, class labels, raw features, training metrics and params;
- ``preprocessing.json``: the fitted :class:`~mlwp.model.preprocessing.Preprocessing`;
- in the MLflow copy also ``MLmodel`` with an ``xgboost`` flavour and a ``python_function``
  flavour whose loader module is this module (:func:`_load_pyfunc`).

``load(path).predict(records)`` runs without pandas: records -> numpy columns -> the fitted
preprocessing -> ``Booster.inplace_predict``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from mlwp.errors import MlwpError
from mlwp.model.features import Feature, RecordError
from mlwp.model.predictor import BoosterPredictor
from mlwp.model.preprocessing import Preprocessing

if TYPE_CHECKING:
    import pandas as pd
    import xgboost

    from mlwp.model.json_records import JsonRecords

__all__ = [
    "METADATA_FILE",
    "MODEL_FILE",
    "OBJECTIVES",
    "PREPROCESSING_FILE",
    "Feature",
    "Model",
    "ModelFormatError",
    "Prediction",
    "RecordError",
    "load",
    "save",
]

FORMAT = "mlwp.model/1"
MODEL_FILE = "model.ubj"
METADATA_FILE = "mlwp.json"
PREPROCESSING_FILE = "preprocessing.json"
OBJECTIVES = ("binary", "multiclass", "regression")
# the objectives whose booster has one output: a record at a time without numpy (_predict_one)
_ONE_OUTPUT = ("binary", "regression")


class ModelFormatError(MlwpError):
    """A model directory is incomplete or was written by an incompatible version."""

    code = "model_format_error"


@dataclass(frozen=True)
class Prediction:
    """Scores of a batch of records, in the records' order.

    ``probabilities[i][k]`` is the probability of ``classes[k]`` for record ``i``; it is None
    for regression models.
    """

    predictions: list[Any]
    probabilities: list[list[float]] | None


@dataclass
class Model:
    """A loaded mlwp model: the booster, its preprocessing and its metadata."""

    path: Path
    booster: xgboost.Booster
    preprocessing: Preprocessing
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def objective(self) -> str:
        return str(self.metadata["objective"])

    @property
    def target(self) -> str | None:
        return self.metadata.get("target")

    @property
    def classes(self) -> list[Any] | None:
        classes = self.metadata.get("classes")
        return None if classes is None else list(classes)

    @property
    def features(self) -> list[Feature]:
        """The raw input fields, as clients send them."""
        return self.preprocessing.features

    @property
    def threshold(self) -> float:
        return float(self.metadata.get("threshold", 0.5))

    def transform(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray[Any, Any]:
        """The feature matrix of raw records (raises RecordError on bad records)."""
        return self.preprocessing.transform_records(records)

    def predict(self, records: Sequence[Mapping[str, Any]]) -> Prediction:
        """Score raw feature records."""
        if len(records) == 1:
            scored = self._predict_one(records[0])
            if scored is not None:
                return scored
        matrix = self.transform(records)
        return self.predict_matrix(matrix)

    def _predict_one(self, record: Mapping[str, Any]) -> Prediction | None:
        """One record of a one-output model through the record encoder and the compiled
        trees as Python values: the same prediction as the matrix path, bit for bit, with
        two numpy calls where that path makes about a dozen (most requests carry one record,
        and in a busy server's cold caches each call costs several times its warm timing).
        None when the model or the record takes the matrix path: no record encoder or
        compiled trees, several outputs, or anything the encoder refuses (the matrix path
        then reads the record again and reports its problem as it always does)."""
        compiled = self.predictor.row_trees
        encoder = self.preprocessing.record_encoder
        if compiled is None or encoder is None or not compiled.single_output:
            return None
        objective = self.metadata.get("objective")
        classes = self.metadata.get("classes") or []
        if objective not in _ONE_OUTPUT or (objective == "binary" and len(classes) < 2):
            return None
        try:
            row = encoder.encode_row(record)
            score = compiled.predict_row(row)
        except Exception:  # whatever it is, the matrix path meets it again and reports it
            return None
        if objective == "regression":
            return Prediction([score], None)
        # decide()'s binary case on one value
        label = classes[1] if score >= float(self.metadata.get("threshold", 0.5)) else classes[0]
        return Prediction([label], [[1.0 - score, score]])

    @property
    def json_records(self) -> JsonRecords | None:
        """The decoder of JSON request bodies straight into the feature matrix (None when
        the preprocessing needs the column path); see :mod:`mlwp.model.json_records`."""
        return self.preprocessing.json_records

    def predict_decoded(self, records: list[Any]) -> Prediction:
        """Score records decoded by :attr:`json_records` (the same as :meth:`predict` of
        the records orjson reads from the body)."""
        decoder = self.preprocessing.json_records
        assert decoder is not None, "records decoded without a decoder"
        return self.predict_matrix(decoder.matrix(records))

    @cached_property
    def predictor(self) -> BoosterPredictor:
        return BoosterPredictor(self.booster)

    def compile_trees(self, native_cache: Path | None = None, build: bool = True) -> str:
        """Compile the trees (a service does it once at load): to C, built in (or loaded
        from) ``native_cache`` when given (see :mod:`mlwp.model.native_trees`), else or when
        that fails to Python for small batches (see :mod:`mlwp.model.compiled_trees`); says
        which, for which batch sizes, or why not. With ``build=False`` the C trees are only
        loaded from the cache; when not there, :attr:`native_trees_pending` is true and
        :meth:`build_native_trees` builds and attaches them later."""
        predictor = self.predictor
        rows = predictor.compile_trees(
            np.zeros((1, self.booster.num_features())), native_cache=native_cache, build=build
        )
        if rows < 0:
            return "trees compiled to C (batches: against XGBoost on the first served)"
        c = ""
        if predictor.native_pending:
            c = "; C trees building in the background"
        elif native_cache is not None:
            c = f"; not compiled to C: {predictor.not_native}"
        if rows:
            return f"compiled trees for batches of up to {rows} rows{c}"
        return f"XGBoost for every batch ({predictor.not_compiled}{c})"

    @property
    def native_trees_pending(self) -> bool:
        """Whether ``compile_trees(build=False)`` left the C trees for
        :meth:`build_native_trees`."""
        return self.predictor.native_pending

    def build_native_trees(self, native_cache: Path) -> str:
        """Build the C trees and attach them once checked (any thread, while others
        predict; see ``BoosterPredictor.build_native``); says the outcome."""
        if self.predictor.build_native(native_cache):
            return "C trees (batches: against XGBoost on the next served)"
        return f"not compiled to C: {self.predictor.not_native}"

    def tune_encoder(self, record: Mapping[str, Any]) -> str:
        """Time the record encoder's two ways on copies of ``record`` (a service does it
        once at load; see :meth:`mlwp.model.record_encoder.RecordEncoder.tune`); says where it
        switches, or why records take the column path."""
        encoder = self.preprocessing.record_encoder
        if encoder is None:
            return "column path (the steps include a derive)"
        rows = encoder.tune(record)
        decoder = self.preprocessing.json_records
        if decoder is not None:
            decoder.min_bytes = len(orjson.dumps({"data": [record] * (rows + 1)}))
        return f"records one by one up to {rows}, a field at a time above"

    def predict_matrix(self, matrix: np.ndarray[Any, Any]) -> Prediction:
        """Score an already preprocessed feature matrix."""
        if matrix.shape[0] == 0:
            return Prediction([], None if self.objective == "regression" else [])
        raw = np.asarray(self.predictor.predict(matrix), dtype=np.float64)
        return self.decide(raw)

    def decide(self, raw: np.ndarray[Any, Any]) -> Prediction:
        """Turn booster outputs into labels and class probabilities."""
        if self.objective == "regression":
            return Prediction(raw.reshape(-1).tolist(), None)
        classes = self.classes or []
        if self.objective == "binary":
            # plain floats: for the few rows of a request numpy's calls cost more than this
            negative, positive, threshold = classes[0], classes[1], self.threshold
            scores = raw.reshape(-1).tolist()
            return Prediction(
                [positive if p >= threshold else negative for p in scores],
                [[1.0 - p, p] for p in scores],
            )
        probabilities = raw.reshape(raw.shape[0], -1)
        chosen = np.argmax(probabilities, axis=1)
        return Prediction([classes[i] for i in chosen.tolist()], probabilities.tolist())


def load(path: str | Path) -> Model:
    """Load a local model directory (an SM_MODEL_DIR output or a downloaded MLflow model)."""
    import xgboost

    root = Path(path)
    for name in (MODEL_FILE, METADATA_FILE, PREPROCESSING_FILE):
        if not (root / name).is_file():
            raise ModelFormatError(f"{root}: not an mlwp model directory ({name} is missing)")
    metadata = orjson.loads((root / METADATA_FILE).read_bytes())
    if metadata.get("format") != FORMAT:
        raise ModelFormatError(
            f"{root / METADATA_FILE}: unsupported format {metadata.get('format')!r} "
            f"(expected {FORMAT})"
        )
    if metadata.get("objective") not in OBJECTIVES:
        raise ModelFormatError(
            f"{root / METADATA_FILE}: objective {metadata.get('objective')!r} is not one of "
            f"{', '.join(OBJECTIVES)}"
        )
    preprocessing = Preprocessing.from_json((root / PREPROCESSING_FILE).read_bytes())
    booster = xgboost.Booster(model_file=str(root / MODEL_FILE))
    _check_features(root, booster, preprocessing.outputs)
    return Model(root, booster, preprocessing, metadata)


def _check_features(root: Path, booster: xgboost.Booster, outputs: list[str]) -> None:
    """Refuse a booster whose inputs are not the preprocessing's outputs: it would score
    shifted or reshaped columns (a matrix of M columns read by a booster of N features comes
    back as a different number of predictions), so name the cause at load."""
    expected = booster.num_features()
    names = booster.feature_names
    if expected != len(outputs):
        missing = [n for n in names or () if n not in outputs][:5]
        extra = [n for n in outputs if names is not None and n not in names][:5]
        hint = ""
        if missing or extra:
            hint = f" (booster only: {missing}; preprocessing only: {extra})"
        raise ModelFormatError(
            f"{root}: the booster expects {expected} features, the preprocessing produces "
            f"{len(outputs)}{hint}"
        )
    if names is not None and list(names) != list(outputs):
        index = next(i for i, (a, b) in enumerate(zip(names, outputs, strict=True)) if a != b)
        raise ModelFormatError(
            f"{root}: the booster's feature {index} is {names[index]!r}, the preprocessing "
            f"produces {outputs[index]!r} there"
        )


def save(
    path: str | Path,
    booster: xgboost.Booster,
    preprocessing: Preprocessing,
    *,
    objective: str,
    classes: Sequence[Any] | None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model directory: booster, ``mlwp.json`` and ``preprocessing.json``."""
    if objective not in OBJECTIVES:
        raise ModelFormatError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(root / MODEL_FILE))
    metadata = {
        "format": FORMAT,
        "objective": objective,
        "target": preprocessing.target,
        "classes": None if classes is None else [_json_value(c) for c in classes],
        "features": [f.to_dict() for f in preprocessing.features],
        "feature_names": preprocessing.outputs,
        **(extra or {}),
    }
    (root / METADATA_FILE).write_bytes(
        orjson.dumps(metadata, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    (root / PREPROCESSING_FILE).write_bytes(preprocessing.to_json())
    return root


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


class PyfuncModel:
    """What ``mlflow.pyfunc.load_model`` returns: predict takes a DataFrame of raw features."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            records = model_input.to_dict(orient="records")
        elif isinstance(model_input, Mapping):
            records = [dict(model_input)]
        else:
            records = list(model_input)
        result = self.model.predict(records)
        frame = pd.DataFrame({"prediction": result.predictions})
        if result.probabilities is not None and self.model.classes is not None:
            for k, label in enumerate(self.model.classes):
                frame[f"probability_{label}"] = [row[k] for row in result.probabilities]
        return frame


def _load_pyfunc(path: str) -> PyfuncModel:
    """MLflow ``python_function`` loader: ``path`` is the model directory."""
    return PyfuncModel(load(path))
