"""Save an mlwp model directory as an MLflow model with two flavours.

``mlflow.models.Model.log(flavor=mlwp.training.flavor, model_dir=...)`` calls
:func:`save_model`, which writes the ``xgboost`` flavour with MLflow's own function (so MLflow's
tools load the booster) and then points the ``python_function`` flavour at :mod:`mlwp.model`,
so ``mlflow models serve`` and ``mlflow.pyfunc.load_model`` take raw feature records and apply
the fitted preprocessing. ``mlwp.json`` and ``preprocessing.json`` sit beside ``model.ubj``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mlwp.model import METADATA_FILE, PREPROCESSING_FILE

PYFUNC_LOADER = "mlwp.model"


def pip_requirements() -> list[str]:
    """What a serving environment needs besides mlwp itself (which is not on PyPI)."""
    import numpy
    import orjson
    import xgboost

    return [
        f"xgboost=={xgboost.__version__}",
        f"numpy=={numpy.__version__}",
        f"orjson=={orjson.__version__}",
        "pandas",
    ]


def save_model(
    path: str,
    mlflow_model: Any = None,
    *,
    model_dir: str | Path,
    signature: Any = None,
    input_example: Any = None,
    metadata: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    """Write the MLflow model for the mlwp model directory ``model_dir`` into ``path``."""
    import mlflow.xgboost
    import xgboost
    from mlflow.models import Model

    source = Path(model_dir)
    booster = xgboost.Booster(model_file=str(source / "model.ubj"))
    model = mlflow_model if mlflow_model is not None else Model()
    mlflow.xgboost.save_model(
        booster,
        path,
        mlflow_model=model,
        signature=signature,
        input_example=input_example,
        pip_requirements=pip_requirements(),
        model_format="ubj",
        metadata=metadata,
    )
    for name in (METADATA_FILE, PREPROCESSING_FILE):
        shutil.copyfile(source / name, Path(path) / name)
    pyfunc = dict(model.flavors["python_function"])
    pyfunc["loader_module"] = PYFUNC_LOADER
    pyfunc.pop("data", None)  # the loader gets the model directory itself
    model.flavors["python_function"] = pyfunc
    model.save(str(Path(path) / "MLmodel"))
