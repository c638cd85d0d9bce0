"""TrainOperator: XGBoost training (with optional Optuna tuning) tracked in MLflow."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from operators._common import MlwpOperator, check_choice, mlflow_tracking_uri
from operators.links import MLflowRunLink

if TYPE_CHECKING:
    from airflow.sdk import Context

OBJECTIVES = ("binary", "multiclass", "regression")
BACKENDS = ("local", "sagemaker")
DATA_MODES = ("auto", "in_memory", "external_memory")


def task_params(params: Any) -> dict[str, Any]:
    """The train task's own ``params`` (XGBoost parameters) without the DAG's params.

    BaseOperator merges the DAG's ``params`` (the trigger form) into every task's
    ``params``; a train task's ``params`` field has the same name, so only the entries the
    task itself set (source ``task``) are XGBoost parameters.
    """
    from airflow.sdk.definitions.param import ParamsDict

    if not params:
        return {}
    if not isinstance(params, ParamsDict):
        return dict(params)
    return ParamsDict.filter_params_by_source(params, source="task").dump()


class TrainOperator(MlwpOperator):
    """Train on the upstream transform's splits and log one MLflow run.

    The local backend runs the SageMaker script-mode entry point in a subprocess
    (``mlwp.training``); its output streams into the task log and a failure surfaces the
    stderr tail. With ``tuning`` the Optuna trials are nested runs and the best parameters
    train the final model. Returns ``run_id``, ``model_uri``, ``metrics`` and the splits.

    ``data`` chooses how the entry point holds the splits: ``in_memory``, ``external_memory``
    (XGBoost's external memory; the splits stay in storage and are streamed, never read by
    this task) or ``auto`` (external memory above ``AUTO_CELLS`` cells of the train split,
    unless tuning, which needs the data in memory). docs/scale.md.
    """

    template_fields: Sequence[str] = ("target", "hyperparameters", "tuning", "input")
    template_fields_renderers = {"hyperparameters": "json", "tuning": "json"}
    ui_color = "#e8daef"
    operator_extra_links = (MLflowRunLink(),)

    def __init__(
        self,
        *,
        target: str,
        objective: str = "binary",
        backend: str = "local",
        params: Any = None,
        num_boost_round: int = 100,
        early_stopping_rounds: int | None = None,
        seed: int = 42,
        threshold: float | None = None,
        tuning: dict[str, Any] | None = None,
        sagemaker: dict[str, Any] | None = None,
        input: str | None = None,
        experiment: str | None = None,
        data: str = "auto",
        **kwargs: Any,
    ) -> None:
        # `params` stays BaseOperator's too (merged with the DAG's params), see task_params.
        super().__init__(params=params, **kwargs)
        if not target:
            raise ValueError(f"task {self.task_id!r}: 'target' is required")
        check_choice(self.task_id, "objective", objective, OBJECTIVES)
        check_choice(self.task_id, "backend", backend, BACKENDS)
        check_choice(self.task_id, "data", data, DATA_MODES)
        if num_boost_round < 1:
            raise ValueError(f"task {self.task_id!r}: num_boost_round must be >= 1")
        self.target = target
        self.objective = objective
        self.backend = backend
        self.hyperparameters = task_params(params)
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        if threshold is not None and not 0 < threshold < 1:
            raise ValueError(f"task {self.task_id!r}: threshold must be in (0, 1)")
        self.seed = seed
        self.threshold = threshold
        self.tuning = tuning
        self.sagemaker = sagemaker
        self.input = input
        self.experiment = experiment
        self.data = data

    def execute(self, context: Context) -> dict[str, Any]:
        import mlflow

        from mlwp.errors import MlwpError
        from mlwp.model.preprocessing import Preprocessing
        from mlwp.training.external_memory import AUTO, uses_external_memory
        from mlwp.training.local import StoredSplit
        from mlwp.training.pipeline import hyperparameters_of, train_model
        from operators.links import mlflow_run_url

        if self.backend != "local":
            raise AirflowFailException(
                f"task {self.task_id!r}: backend {self.backend!r} is not available in this "
                "build; use backend: local"
            )
        started = time.monotonic()
        mlflow.set_tracking_uri(mlflow_tracking_uri())
        storage = self.storage()
        features = self.upstream_document(context, "splits", self.input)
        documents = features["splits"]
        train_document = documents["train"]
        external = uses_external_memory(
            self.data,
            int(train_document.get("rows") or 0),
            len(train_document.get("columns") or []),
        )
        if external and self.tuning and self.data == AUTO:
            self.log.info(
                "train split of %s rows: above the external-memory size, but tuning needs the "
                "data in memory; training in memory",
                train_document.get("rows"),
            )
            external = False
        splits: dict[str, Any]
        if external:
            # The splits stay in storage; the entry point streams their files.
            splits = {name: StoredSplit(storage, d["uri"]) for name, d in documents.items()}
            columns = {name: list(d.get("columns") or []) for name, d in documents.items()}
        else:
            splits = {name: storage.read_dataset(d["uri"]) for name, d in documents.items()}
            columns = {name: list(frame.columns) for name, frame in splits.items()}
        missing = [name for name, names in columns.items() if self.target not in names]
        if missing:
            raise AirflowFailException(
                f"task {self.task_id!r}: target column {self.target!r} is not in the "
                f"{', '.join(missing)} split(s); columns are {columns[missing[0]]}"
            )
        preprocessing = (
            Preprocessing.from_json(storage.read_bytes(features["preprocessing_uri"]))
            if features.get("preprocessing_uri")
            else None
        )
        hyperparameters = hyperparameters_of(
            target=self.target,
            objective=self.objective,
            params=self.hyperparameters,
            num_boost_round=self.num_boost_round,
            early_stopping_rounds=self.early_stopping_rounds,
            seed=self.seed,
            threshold=self.threshold,
        )
        hyperparameters["data"] = "external_memory" if external else "in_memory"
        self.log.info("training %s", "with external memory" if external else "in memory")
        lineage = self.lineage(context)
        train_split = features["splits"]["train"]
        tags = {
            "mlwp.project": self.project,
            "mlwp.workflow": self.workflow,
            "mlwp.dag_id": lineage["dag_id"],
            "mlwp.airflow_run_id": lineage["run_id"],
            "mlwp.task_id": self.task_id,
            "mlwp.dataset_uri": train_split["uri"],
            "mlwp.dataset_sha256": train_split["sha256"],
        }
        try:
            outcome = train_model(
                splits,
                preprocessing,
                hyperparameters,
                experiment=self.experiment or lineage["dag_id"],
                run_name=f"{lineage['run_id']}.{self.task_id}",
                tags=tags,
                tuning=self.tuning,
                on_line=lambda line: self.log.info("%s", line),
                timeout=(
                    self.execution_timeout.total_seconds() if self.execution_timeout else None
                ),
            )
        except MlwpError as exc:
            # A bad config or a failing training subprocess fails the same way on a retry.
            raise AirflowFailException(f"task {self.task_id!r}: {exc.message}") from exc
        MLflowRunLink.persist(context, mlflow_run_url(outcome.run_id, outcome.experiment_id))
        self.log.info(
            "MLflow run %s, model %s, metrics %s",
            outcome.run_id,
            outcome.model_uri,
            outcome.metrics,
        )
        for name, value in outcome.metrics.items():
            self.stat("gauge", f"train.{name.replace(':', '.')}", value)
        self.stat("timing", "train.seconds", (time.monotonic() - started) * 1000)
        return {
            **outcome.to_xcom(),
            "objective": self.objective,
            "target": self.target,
            "backend": self.backend,
            "tuning": outcome.tuning
            and {k: v for k, v in outcome.tuning.items() if k in ("best_params", "best_value")},
            "splits": features["splits"],
            "preprocessing_uri": features.get("preprocessing_uri"),
            "input": features.get("input"),
            "validation": features.get("validation"),
            "task_id": self.task_id,
        }
