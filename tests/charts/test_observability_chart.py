"""The Helm charts ship mlwp's observability: each Grafana dashboard as a ConfigMap labelled
for Grafana's dashboard sidecar, the alert rules (ConfigMap, or PrometheusRule for the
Prometheus Operator), and the StatsD mapping in the Airflow chart's values."""

from __future__ import annotations

import json

import yaml
from chart_render import render
from checkers import REPO_ROOT
from observability_names import DASHBOARDS, MAPPING

MINIMAL = REPO_ROOT / "charts" / "mlwp" / "ci" / "minimal-values.yaml"


def test_chart_ships_each_dashboard_for_the_sidecar_and_the_rules() -> None:
    objects = render(MINIMAL)
    maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    for path in DASHBOARDS:
        suffix = "dashboard-" + path.stem.removeprefix("mlwp-")
        (found,) = [m for n, m in maps.items() if n.endswith(suffix)]
        assert found["metadata"]["labels"]["grafana_dashboard"] == "1", suffix
        assert json.loads(found["data"][path.name]) == json.loads(path.read_text())
    (rules,) = [m for n, m in maps.items() if n.endswith("alert-rules")]
    shipped = yaml.safe_load(rules["data"]["mlwp-alerts.yaml"])
    source = yaml.safe_load(
        (REPO_ROOT / "observability/prometheus/rules/mlwp-alerts.yaml").read_text()
    )
    assert shipped == source
    operator = render(MINIMAL, values={"monitoring": {"rules": {"prometheusRule": True}}})
    (rule,) = [o for o in operator if o["kind"] == "PrometheusRule"]
    assert rule["spec"] == source


def test_chart_values_carry_the_statsd_mapping() -> None:
    mapping = yaml.safe_load(MAPPING.read_text())["mappings"]
    airflow = yaml.safe_load((REPO_ROOT / "charts" / "airflow-values.yaml").read_text())
    assert airflow["statsd"]["overrideMappings"] == mapping
    platform = yaml.safe_load((REPO_ROOT / "charts" / "mlwp-platform" / "values.yaml").read_text())
    assert platform["airflow"]["statsd"]["overrideMappings"] == mapping
