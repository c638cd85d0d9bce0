"""What ``mlwp models list`` shows: every registered model, or one with its versions."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson

from mlwp.registry.connection import client
from mlwp.registry.lineage import TAG, Lineage
from mlwp.registry.registration import TEST_METRICS_TAG, versions
from mlwp.registry.traffic import TRAFFIC_TAG, snapshot


def describe(name: str) -> dict[str, Any]:
    """A registered model's aliases, traffic and versions (for ``mlwp models list NAME``)."""
    state = snapshot(name)
    by_version: dict[str, list[str]] = {}
    for alias, version in state["aliases"].items():
        by_version.setdefault(version, []).append(alias)
    return {
        "name": name,
        **state,
        "versions": [
            {
                "version": str(v.version),
                "aliases": sorted(by_version.get(str(v.version), [])),
                "run_id": v.run_id,
                "created": v.creation_timestamp,
                "status": v.status,
                "dag_id": v.tags.get(f"{TAG}dag_id"),
                "airflow_run_id": v.tags.get(f"{TAG}airflow_run_id"),
                "dataset_sha256": v.tags.get(f"{TAG}dataset_sha256"),
                "test_metrics": orjson.loads(v.tags[TEST_METRICS_TAG])
                if TEST_METRICS_TAG in v.tags
                else None,
                "lineage": asdict(Lineage.from_tags(v.tags)),
                # The newest monitor look that analysed this version (mlwp.monitoring.monitor).
                "monitoring_run": v.tags.get(f"{TAG}monitoring_run"),
            }
            for v in versions(name)
        ],
    }


def list_models() -> list[dict[str, Any]]:
    """Every registered model with its aliases and traffic."""
    out = []
    for model in client().search_registered_models(max_results=1000):
        tags = model.tags or {}
        out.append(
            {
                "name": model.name,
                "aliases": {a: str(v) for a, v in (model.aliases or {}).items()},
                "traffic": orjson.loads(tags[TRAFFIC_TAG])
                if TRAFFIC_TAG in tags
                else {"champion": 100},
                "latest_version": max(
                    (int(v.version) for v in model.latest_versions or []), default=None
                ),
            }
        )
    return out
