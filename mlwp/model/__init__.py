"""The model runtime shared by training and serving: the saved format, preprocessing, record
encoding and predictors.

- ``format``: the mlwp model directory (booster, metadata, preprocessing) and ``load``/``save``;
- ``features``, ``expressions``, ``steps``, ``columns``, ``preprocessing``: the fitted,
  JSON-serialisable preprocessing and the column frames it runs on;
- ``record_encoder``: the record-wise fast path from raw records to the feature matrix;
- ``json_records``: a JSON request body's records decoded straight into the feature matrix;
- ``predictor``, ``compiled_trees``: evaluating the booster on that matrix.

Registered MLflow models name this package as their pyfunc ``loader_module`` (``mlwp.model``,
written into every MLmodel by :mod:`mlwp.training.flavor`), so it must keep exposing
``_load_pyfunc``: models registered before the package existed still load through it.
"""

from mlwp.model.features import RecordError
from mlwp.model.format import (
    FORMAT,
    METADATA_FILE,
    MODEL_FILE,
    OBJECTIVES,
    PREPROCESSING_FILE,
    Model,
    ModelFormatError,
    Prediction,
    PyfuncModel,
    _load_pyfunc,
    load,
    save,
)

__all__ = [
    "FORMAT",
    "METADATA_FILE",
    "MODEL_FILE",
    "OBJECTIVES",
    "PREPROCESSING_FILE",
    "Model",
    "ModelFormatError",
    "Prediction",
    "PyfuncModel",
    "RecordError",
    "_load_pyfunc",
    "load",
    "save",
]
