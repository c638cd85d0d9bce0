"""RegisterOperator: the registration gate and an idempotent MLflow model version."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowSkipException

from operators._common import MlwpOperator
from operators.links import MLflowModelVersionLink, MLflowRunLink

if TYPE_CHECKING:
    from airflow.sdk import Context


class RegisterOperator(MlwpOperator):
    """Register the trained model as a new version of ``model`` if it passes ``gate``.

    The gate (``metric`` at least ``min``; ``beat: champion`` by ``margin``) is checked on
    the evaluation of the test split (computed here when no evaluate task ran). A model that
    fails the gate is a normal outcome, not an error: the task logs why and ends *skipped*,
    so approve and deploy are skipped too, aliases are untouched and the run still succeeds
    (see docs/pipeline.md). The version carries the lineage tags; a retried task or a re-run
    of the same DAG run finds the version it already created instead of adding another.
    """

    template_fields: Sequence[str] = ("model", "gate", "input")
    template_fields_renderers = {"gate": "json"}
    ui_color = "#d4efdf"
    operator_extra_links = (MLflowModelVersionLink(), MLflowRunLink())

    def __init__(
        self,
        *,
        model: str,
        gate: dict[str, Any] | None = None,
        input: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not model:
            raise ValueError(f"task {self.task_id!r}: 'model' is required")
        if gate is not None and not gate.get("metric"):
            raise ValueError(f"task {self.task_id!r}: gate needs a 'metric'")
        self.model = model
        self.gate = gate
        self.input = input

    def execute(self, context: Context) -> dict[str, Any]:
        from mlwp import registry
        from operators import _registry
        from operators.evaluate import evaluation_document
        from operators.links import mlflow_model_version_url, mlflow_run_url

        _registry.use_tracking_server()
        training = self.upstream_document(context, "model_uri", self.input)
        evaluation = training.get("evaluation") or evaluation_document(
            self, training, None, self.model
        )
        champion = evaluation.get("champion")
        decision = self._decide(evaluation)
        lineage = self._lineage(context, training)
        base = {
            "model": self.model,
            "run_id": training["run_id"],
            "model_uri": training["model_uri"],
            "metrics": evaluation["metrics"],
            "champion": champion,
            "gate": decision,
            "dataset_uri": lineage.dataset_uri,
        }
        context["ti"].xcom_push(key="gate", value=decision)
        MLflowRunLink.persist(
            context, mlflow_run_url(training["run_id"], training.get("experiment_id"))
        )
        if not decision["passed"]:
            self.log.warning(
                "%s. Nothing is registered; aliases are untouched.", decision["summary"]
            )
            self.stat("incr", "register.gate_failed")
            raise AirflowSkipException(decision["summary"])
        registration = registry.register(
            self.model,
            training["model_uri"],
            lineage,
            test_metrics=evaluation["metrics"],
            description=f"{lineage.dag_id} run {lineage.airflow_run_id}: {decision['summary']}",
        )
        MLflowModelVersionLink.persist(
            context, mlflow_model_version_url(self.model, registration.version)
        )
        if registration.created:
            self.log.info(
                "Registered %s version %s from %s; %s",
                self.model,
                registration.version,
                training["model_uri"],
                decision["summary"],
            )
            self.stat("incr", "register.registered")
        else:
            self.log.info(
                "Version %s of %s was already registered by this DAG run; reusing it",
                registration.version,
                self.model,
            )
        return {**base, "version": registration.version, "reused": not registration.created}

    def _decide(self, evaluation: dict[str, Any]) -> dict[str, Any]:
        from mlwp import registry

        if not self.gate:
            return {"passed": True, "reasons": ["no gate"], "summary": "no gate"}
        champion = evaluation.get("champion") or {}
        comparison = registry.Comparison(
            evaluation["metrics"], champion.get("metrics"), champion.get("version")
        )
        decision = registry.gate(
            comparison,
            str(self.gate["metric"]),
            minimum=self.gate.get("min"),
            beat_champion=self.gate.get("beat") == "champion",
            margin=float(self.gate.get("margin") or 0.0),
        )
        return {**decision.to_dict(), "summary": decision.summary}

    def _lineage(self, context: Context, training: dict[str, Any]) -> Any:
        from mlwp import registry

        ids = self.lineage(context)
        source = training.get("input") or {}
        # Per suite (from the dataset's sidecar): success and statistics.
        validation = training.get("validation") or {}
        return registry.Lineage(
            project=self.project,
            workflow=self.workflow,
            dag_id=ids["dag_id"],
            airflow_run_id=ids["run_id"],
            task_id=self.task_id,
            mlflow_run_id=training["run_id"],
            dataset_uri=source.get("uri"),
            dataset_sha256=source.get("sha256"),
            gx_success=(
                all(bool(v.get("success")) for v in validation.values()) if validation else None
            ),
            gx_statistics=(
                {suite: v.get("statistics") for suite, v in validation.items()}
                if validation
                else None
            ),
            code_version=registry.code_version(Path(self.project_dir))
            if self.project_dir
            else None,
            backend=str(training.get("backend", "local")),
            job_name=f"{ids['run_id']}.{training.get('task_id', 'train')}",
        )
