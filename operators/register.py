"""RegisterOperator: the registration gate and an idempotent MLflow model version."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson
from airflow.sdk.exceptions import AirflowSkipException

from operators._common import MlwpOperator

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
        from operators import _registry
        from operators.evaluate import evaluation_document

        training = self.upstream_document(context, "model_uri", self.input)
        evaluation = training.get("evaluation") or evaluation_document(
            self, training, None, self.model
        )
        champion = evaluation.get("champion")
        decision = _registry.gate_decision(
            self.gate, evaluation["metrics"], (champion or {}).get("metrics")
        )
        lineage = self.lineage(context)
        base = {
            "model": self.model,
            "run_id": training["run_id"],
            "model_uri": training["model_uri"],
            "metrics": evaluation["metrics"],
            "champion": champion,
            "gate": decision,
            "dataset_uri": (training.get("input") or {}).get("uri"),
        }
        context["ti"].xcom_push(key="gate", value=decision)
        if not decision["passed"]:
            self.log.warning(
                "Gate failed for %s: %s. Nothing is registered; aliases are untouched.",
                self.model,
                decision["summary"],
            )
            self.stat("incr", "register.gate_failed")
            raise AirflowSkipException(f"gate failed: {decision['summary']}")
        identity = {
            "mlwp.dag_id": lineage["dag_id"],
            "mlwp.airflow_run_id": lineage["run_id"],
            "mlwp.task_id": self.task_id,
        }
        existing = _registry.find_version(self.model, identity)
        if existing is not None:
            self.log.info(
                "Version %s of %s was already registered by this DAG run; reusing it",
                existing.version,
                self.model,
            )
            return {**base, "version": str(existing.version), "reused": True}
        tags = {**identity, **self._lineage_tags(training, evaluation)}
        version = _registry.register(self.model, training["model_uri"], training["run_id"], tags)
        self.log.info(
            "Registered %s version %s (%s); gate: %s",
            self.model,
            version.version,
            training["model_uri"],
            decision["summary"],
        )
        self.stat("incr", "register.registered")
        return {**base, "version": str(version.version), "reused": False}

    def _lineage_tags(self, training: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, str]:
        from operators import _registry

        source = training.get("input") or {}
        train_split = (training.get("splits") or {}).get("train") or {}
        validation = training.get("validation") or {}
        # The sidecar keeps one entry per suite; report them all in one tag each.
        gx_success = all(v.get("success") for v in validation.values()) if validation else None
        tags = {
            "mlwp.project": self.project,
            "mlwp.workflow": self.workflow,
            "mlwp.mlflow_run_id": training["run_id"],
            "mlwp.dataset_uri": source.get("uri", ""),
            "mlwp.dataset_sha256": source.get("sha256", ""),
            "mlwp.train_dataset_uri": train_split.get("uri", ""),
            "mlwp.train_dataset_sha256": train_split.get("sha256", ""),
            "mlwp.gx_success": "" if gx_success is None else str(gx_success).lower(),
            "mlwp.gx_statistics": orjson.dumps(
                {suite: v.get("statistics") for suite, v in validation.items()}
            ).decode(),
            "mlwp.code_version": _registry.code_version(self.project_dir),
            "mlwp.backend": str(training.get("backend", "local")),
            "mlwp.training_job": f"{training['run_id']}",
            "mlwp.test_metrics": orjson.dumps(evaluation["metrics"]).decode(),
        }
        return {key: value for key, value in tags.items() if value != ""}
