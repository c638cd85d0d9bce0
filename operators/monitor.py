"""MonitorOperator: one look at a served model's captured predictions (issue #14).

The work is :func:`mlwp.monitoring.monitor.run_monitor` (capture + labels -> traffic, SRM,
label coverage, metrics with intervals, always-valid challenger decision, paired shadow,
Evidently drift -> an MLflow monitoring run). This operator adds Airflow's side:

- the ``MonitorResult`` document is the task's XCom ``return_value`` (rollout reads
  ``comparison.decision`` and ``drift.prediction_drifted``);
- gauges through Airflow's StatsD client (``Stats.gauge``, tagged with project, workflow and
  task; a no-op unless ``[metrics] statsd_on``): ``mlwp.monitor.srm_p_value``,
  ``..comparison_p_value``, ``..drift_share``, ``..drifted``, ``..label_coverage``;
- findings listed in ``alert_on`` go through the project's ``alerts.on_failure`` notifiers
  (Slack, e-mail), each failure to send logged, never failing the look;
- with ``retrain_on_drift`` the compiler adds :class:`DriftSignalOperator` after it, which
  updates the asset ``<project>.<workflow>.<task>`` only when drift was found (it skips
  otherwise, and a skipped task emits no asset event), so a workflow scheduled on that asset
  retrains.

Heavy libraries (pandas, scipy, Evidently, MLflow) are imported in ``execute`` only.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowSkipException

from operators._common import MlwpOperator, check_choice, mlflow_tracking_uri, to_jsonable
from operators.links import MLflowRunLink

if TYPE_CHECKING:
    from airflow.sdk import Context

METRICS = ("accuracy", "log_loss", "brier", "absolute_error", "squared_error")
ALERTS = ("srm", "drift", "challenger_worse", "challenger_better", "capture")
ALERT_TEXT = "mlwp monitor of {model} ({dag_id}, run {run_id}): {finding}"


def _duration(value: Any, field: str, task_id: str) -> timedelta:
    if isinstance(value, timedelta):
        return value
    from pydantic import TypeAdapter, ValidationError

    from mlwp.definitions.schema import parse_duration

    try:
        parsed = parse_duration(value)
    except ValueError:
        try:  # the ISO 8601 form a definition's JSON dump gives ("P1D")
            parsed = TypeAdapter(timedelta).validate_python(value)
        except ValidationError:
            raise ValueError(
                f"task {task_id!r}: {field} must be a duration like '1d' or '12h', got {value!r}"
            ) from None
    if not isinstance(parsed, timedelta) or parsed <= timedelta(0):
        raise ValueError(f"task {task_id!r}: {field} must be a positive duration")
    return parsed


class MonitorOperator(MlwpOperator):
    """Analyse ``model``'s captured predictions; see the module doc and docs/monitoring.md."""

    template_fields: Sequence[str] = ("model", "drift")
    template_fields_renderers = {"drift": "json"}
    ui_color = "#d5f5e3"
    operator_extra_links = (MLflowRunLink(),)

    def __init__(
        self,
        *,
        model: str,
        window: Any = "1d",
        lookback: Any = "30d",
        metric: str | None = None,
        alpha: float = 0.05,
        effect: float | None = None,
        min_samples: int = 100,
        confidence: float = 0.95,
        drift: dict[str, Any] | None = None,
        alert_on: Sequence[str] = ("srm", "drift", "challenger_worse", "capture"),
        retrain_on_drift: bool = False,
        experiment: str | None = None,
        notifiers: Sequence[Any] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not model:
            raise ValueError(f"task {self.task_id!r}: 'model' is required")
        if metric is not None:
            check_choice(self.task_id, "metric", metric, METRICS)
        for finding in alert_on:
            check_choice(self.task_id, "alert_on", finding, ALERTS)
        if not 0 < alpha < 1 or not 0 < confidence < 1:
            raise ValueError(f"task {self.task_id!r}: alpha and confidence must be in (0, 1)")
        self.model = model
        self.window = _duration(window, "window", self.task_id)
        self.lookback = _duration(lookback, "lookback", self.task_id)
        self.metric = metric
        self.alpha = alpha
        self.effect = effect
        self.min_samples = min_samples
        self.confidence = confidence
        self.drift = dict(drift or {})
        self.alert_on = tuple(alert_on)
        self.retrain_on_drift = retrain_on_drift
        self.experiment = experiment
        self.notifiers = list(notifiers)

    def settings(self) -> Any:
        """The :class:`~mlwp.monitoring.monitor.MonitorSettings` of this task."""
        from mlwp.monitoring.drift import DriftSettings
        from mlwp.monitoring.monitor import MonitorSettings

        drift = dict(self.drift)
        enabled = bool(drift.pop("enabled", True))
        return MonitorSettings(
            model=self.model,
            window=self.window,
            lookback=self.lookback,
            metric=self.metric,
            alpha=self.alpha,
            effect=self.effect,
            min_samples=self.min_samples,
            confidence=self.confidence,
            drift=DriftSettings(**drift),
            check_drift=enabled,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        import mlflow

        from mlwp.monitoring.monitor import run_monitor
        from operators.links import mlflow_run_url

        mlflow.set_tracking_uri(mlflow_tracking_uri())
        storage = self.storage()
        lineage = self.lineage(context)
        outcome = run_monitor(
            storage.root,
            self.settings(),
            experiment=self.experiment or lineage["dag_id"],
            storage_options=storage.storage_options or None,
            tags={f"mlwp.{k}": str(v) for k, v in lineage.items()},
        )
        result = to_jsonable(outcome.result)
        MLflowRunLink.persist(context, mlflow_run_url(outcome.run_id, outcome.experiment_id))
        self._gauges(result)
        self._alert(context, result)
        comparison = result.get("comparison") or {}
        drift = result.get("drift") or {}
        self.log.info(
            "monitor %s: %s rows (%s labelled), SRM p=%s, decision %s, drift %s; MLflow run %s",
            self.model,
            result.get("rows"),
            result.get("labelled_rows"),
            (result.get("srm") or {}).get("p_value"),
            comparison.get("decision"),
            drift.get("drifted"),
            outcome.run_id,
        )
        return dict(result)

    def _gauges(self, result: dict[str, Any]) -> None:
        srm = result.get("srm") or {}
        values = {
            "srm_p_value": srm.get("p_value"),
            "srm_mismatch": srm.get("mismatch"),
            "comparison_p_value": (result.get("comparison") or {}).get("p_value"),
            "drift_share": (result.get("drift") or {}).get("share"),
            "drifted": (result.get("drift") or {}).get("drifted"),
            "labelled_rows": result.get("labelled_rows"),
        }
        for variant, coverage in (result.get("label_coverage") or {}).items():
            values[f"label_coverage.{variant}"] = coverage.get("coverage")
        for name, value in values.items():
            if isinstance(value, bool | int | float):
                self.stat("gauge", f"monitor.{self.model}.{name}", float(value))

    def findings(self, result: dict[str, Any]) -> list[str]:
        """The result's alerts that ``alert_on`` asks to send."""
        selected = []
        decision = (result.get("comparison") or {}).get("decision")
        for text in result.get("alerts") or []:
            kind = (
                "srm"
                if text.startswith("sample-ratio")
                else "drift"
                if text.startswith("drift")
                else decision
                if text.startswith("challenger")
                # spool parts compaction set aside (mlwp.monitoring.report.alerts): with no
                # kind of its own this finding was in the result and never sent
                else "capture"
                if "capture spool part(s) unreadable" in text
                else None
            )
            if kind in self.alert_on:
                selected.append(text)
        return selected

    def _alert(self, context: Context, result: dict[str, Any]) -> None:
        found = self.findings(result)
        if not found:
            return
        ti = context["ti"]
        for finding in found:
            self.log.warning("monitor finding: %s", finding)
            # braces would be read as templates by the provider notifiers
            text = (
                ALERT_TEXT.format(
                    model=self.model, dag_id=ti.dag_id, run_id=ti.run_id, finding=finding
                )
                .replace("{", "(")
                .replace("}", ")")
            )
            for notifier in self.notifiers:
                try:
                    alert = copy.copy(notifier)  # the project's notifier, with this text
                    alert.text = text
                    alert.notify(context)
                except Exception as exc:  # an alert that cannot be sent must not lose the look
                    self.log.error("alert through %s failed: %r", notifier.conn_id, exc)


class DriftSignalOperator(BaseOperator):
    """Succeed (updating this task's outlet asset) when the monitor found drift; else skip."""

    ui_color = "#fadbd8"

    def __init__(self, *, monitor_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.monitor_task_id = monitor_task_id

    def execute(self, context: Context) -> dict[str, Any]:
        result = context["ti"].xcom_pull(task_ids=self.monitor_task_id) or {}
        drift = result.get("drift") or {}
        if not drift.get("drifted"):
            raise AirflowSkipException("no drift: the retrain asset is left alone")
        columns = sorted(
            {
                name
                for variant in (drift.get("variants") or {}).values()
                for name, verdict in (variant.get("columns") or {}).items()
                if verdict.get("drifted")
            }
        )
        extra = {
            "model": result.get("model"),
            "versions": result.get("versions"),
            "drifted_columns": columns,
            "mlflow_run_id": result.get("mlflow_run_id"),
        }
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = extra
        return extra
