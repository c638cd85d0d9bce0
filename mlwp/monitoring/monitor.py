"""One look of the monitor: read capture and labels, analyse, check drift, log to MLflow.

:func:`run_monitor` is what the ``monitor`` task does (``operators/monitor.py`` adds Airflow:
XCom, gauges, alerts, the retrain asset). It needs only storage and an MLflow server:

1. the registry says which version is behind each alias (``champion``, ``challenger``,
   ``shadow``) and the traffic split (the ``mlwp.traffic`` tag);
2. serving's spooled captures are compacted into Parquet
   (:func:`mlwp.monitoring.capture.compact_capture`), then captured rows of the last
   ``lookback`` are read and joined with every label received so far (late labels count),
   and :func:`mlwp.monitoring.report.analyse` computes traffic and SRM (over the last
   ``window``), coverage, metrics and the comparisons;
3. the last ``window`` of each served variant's captured inputs and outputs is compared
   with the baseline of *its* version (logged on the version's training run);
4. one MLflow run in the monitoring experiment gets the numbers as metrics, the result as
   ``monitor/result.json``, a readable ``monitor/report.html``, and Evidently's
   ``drift/<variant>/report.html`` and ``.json``; it is tagged with the model and both
   versions, and each analysed version gets the tag ``mlwp.monitoring_run`` pointing back.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mlwp.monitoring import stats
from mlwp.monitoring.drift import DriftError, DriftSettings
from mlwp.monitoring.report import SERVED_VARIANTS, alerts, analyse, flat_metrics, to_html

MONITORING_RUN_TAG = "mlwp.monitoring_run"


@dataclass(frozen=True)
class MonitorSettings:
    """What the monitor task's definition says (defaults as in docs/monitoring.md)."""

    model: str
    window: timedelta = timedelta(days=1)
    lookback: timedelta = timedelta(days=30)
    metric: str | None = None
    alpha: float = stats.DEFAULT_ALPHA
    effect: float | None = None
    min_samples: int = stats.DEFAULT_MIN_SAMPLES
    confidence: float = stats.DEFAULT_CONFIDENCE
    drift: DriftSettings = field(default_factory=DriftSettings)
    check_drift: bool = True


@dataclass
class MonitorOutcome:
    """The result document, and where it went in MLflow."""

    result: dict[str, Any]
    run_id: str | None
    experiment_id: str | None


def run_monitor(
    storage_root: str,
    settings: MonitorSettings,
    *,
    experiment: str,
    now: datetime | None = None,
    storage_options: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> MonitorOutcome:
    """Run one look (see the module doc); MLflow's tracking URI must be set."""
    from mlwp import registry
    from mlwp.monitoring.capture import (
        MonitoringError,
        compact_capture,
        join_labels,
        read_capture,
        read_labels,
    )

    now = (now or datetime.now(UTC)).astimezone(UTC)
    if not registry.registered_model_exists(settings.model):
        raise MonitoringError(
            f"model {settings.model!r} is not registered in MLflow: nothing serves it, so there "
            "is nothing to monitor (check the monitor task's 'model')",
            code="unknown_model",
        )
    versions = registry.aliases(settings.model)
    split = registry.get_traffic(settings.model)
    # serving spools what it captures as framed .spool parts (mlwp.monitoring.capture);
    # fold them into zstd Parquet here, out of the serving process (docs/monitoring.md,
    # "Capture"). Reading does not need it: a storage that refuses the deletes is reported,
    # not fatal
    try:
        compacted: dict[str, Any] = compact_capture(storage_root, settings.model, storage_options)
    except OSError as exc:
        compacted = {"error": f"capture compaction failed: {exc!r}"}
    capture = read_capture(
        storage_root, settings.model, now - settings.lookback, now, storage_options
    )
    labels = read_labels(storage_root, settings.model, None, None, storage_options)
    joined = join_labels(capture, labels)
    window_start = now - settings.window
    result = analyse(
        joined,
        split=split,
        versions=versions,
        metric=settings.metric,
        alpha=settings.alpha,
        effect=settings.effect,
        min_samples=settings.min_samples,
        confidence=settings.confidence,
        srm_since=window_start,
    )
    result.update(
        model=settings.model,
        time=now.isoformat(),
        window={"start": window_start.isoformat(), "end": now.isoformat()},
        lookback_start=(now - settings.lookback).isoformat(),
        capture_compaction=compacted,
    )
    snapshots: dict[str, Any] = {}
    if settings.check_drift:
        result["drift"], snapshots = _drift(joined, versions, window_start, settings)
    result["alerts"] = alerts(result)
    run_id, experiment_id = _log(result, snapshots, settings, versions, experiment, tags)
    result["mlflow_run_id"] = run_id
    return MonitorOutcome(result, run_id, experiment_id)


def _drift(
    joined: Any, versions: Mapping[str, str], since: datetime, settings: MonitorSettings
) -> tuple[dict[str, Any], dict[str, Any]]:
    from mlwp import registry
    from mlwp.monitoring.drift import current_frame, detect_drift, load_baseline

    recent = joined[joined["time"] >= since] if len(joined) else joined
    variants: dict[str, Any] = {}
    snapshots: dict[str, Any] = {}
    for variant in SERVED_VARIANTS:
        version = versions.get(variant)
        if version is None:
            continue
        rows = recent[(recent["variant"] == variant) & (recent["version"] == version)]
        try:
            run_id = registry.client().get_model_version(settings.model, version).run_id
            if not run_id:
                raise DriftError(f"version {version} has no training run", code="no_baseline")
            reference, profile = load_baseline(run_id)
        except DriftError as exc:
            variants[variant] = {
                "version": version,
                "skipped": exc.message,
                "drifted": False,
                "prediction_drifted": False,
                "columns": {},
            }
            continue
        found = detect_drift(
            reference, current_frame(rows, profile), profile["columns"], settings.drift
        )
        variants[variant] = {"version": version, **found.to_dict()}
        if found.snapshot is not None:
            snapshots[variant] = found
    main = variants.get("champion") or next(iter(variants.values()), None) or {}
    summary = {
        "drifted": any(v.get("drifted") for v in variants.values()),
        "prediction_drifted": any(v.get("prediction_drifted") for v in variants.values()),
        "columns": main.get("columns", {}),
        "share": main.get("share", 0.0),
        "skipped": main.get("skipped"),
        "variants": variants,
    }
    return summary, snapshots


def _log(  # noqa: PLR0917 - private, one caller
    result: dict[str, Any],
    snapshots: Mapping[str, Any],
    settings: MonitorSettings,
    versions: Mapping[str, str],
    experiment: str,
    tags: Mapping[str, str] | None,
) -> tuple[str, str]:
    import mlflow

    from mlwp import registry
    from mlwp.training.tracking import experiment_id as experiment_id_of

    client = mlflow.MlflowClient()
    experiment_id = experiment_id_of(client, experiment)
    run_tags = {
        "mlwp.kind": "monitoring",
        "mlwp.model": settings.model,
        **{f"mlwp.{alias}_version": version for alias, version in versions.items()},
        "mlwp.decision": str(result["comparison"].get("decision")),
        **dict(tags or {}),
    }
    names = "/".join(f"{a} v{v}" for a, v in sorted(versions.items())) or "no versions"
    run = client.create_run(
        experiment_id, run_name=f"monitor {settings.model} ({names})", tags=run_tags
    )
    run_id = run.info.run_id
    try:
        metrics = flat_metrics(result)
        if metrics:
            client.log_batch(
                run_id,
                metrics=[mlflow.entities.Metric(k, v, 0, 0) for k, v in metrics.items()],
            )
        with tempfile.TemporaryDirectory(prefix="mlwp-monitor-") as tmp:
            folder = Path(tmp)
            (folder / "monitor").mkdir()
            text = json.dumps(result, indent=2, default=str)
            (folder / "monitor" / "result.json").write_text(text)
            (folder / "monitor" / "report.html").write_text(
                to_html(result, title=f"Monitoring of {settings.model} ({names})")
            )
            for variant, found in snapshots.items():
                target = folder / "drift" / variant
                target.mkdir(parents=True)
                found.save_html(target / "report.html")
                (target / "report.json").write_text(found.evidently_json() or "{}")
            client.log_artifacts(run_id, str(folder))
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    for version in set(versions.values()):
        registry.client().set_model_version_tag(settings.model, version, MONITORING_RUN_TAG, run_id)
    return run_id, experiment_id
