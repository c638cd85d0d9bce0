"""Grafana dashboards of observability/grafana: valid, every panel's PromQL parsed by real
PromQL parsers (promql-parser, and Prometheus's own through ``promtool check rules``), and
each metric they name made by serving or by the StatsD mapping; shipped by docker compose
and the Helm chart.

Which metrics really arrive is proven elsewhere: serving's names against a live serving
process (tests/serving/test_metric_names.py), Airflow's against the packets of a real DAG
run through the mapping (tests/integration/test_first_run.py).
"""

from __future__ import annotations

import json

import pytest
import yaml
from checkers import REPO_ROOT, checker, run_checker
from observability_names import (
    DASHBOARDS,
    MAPPING,
    dashboard_exprs,
    mapped_name_patterns,
    metric_names,
    promql,
    rule_exprs,
)

pytestmark = pytest.mark.unit

SERVING_PREFIX = "mlwp_serving_"


def test_three_dashboards_each_with_panels_and_queries() -> None:
    assert {p.stem for p in DASHBOARDS} == {"mlwp-serving", "mlwp-pipelines", "mlwp-models"}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] == path.stem
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        assert len(panels) >= 6, path.name
        for panel in panels:
            assert panel["targets"], (path.name, panel["title"])
            assert panel["description"], (path.name, panel["title"])
            assert panel["datasource"]["uid"] == "${datasource}"


def test_every_query_parses_and_names_known_metrics() -> None:
    patterns = mapped_name_patterns()
    for source, title, expr in [*dashboard_exprs(), *rule_exprs()]:
        for name in metric_names(expr):
            if name == "up" or name.startswith(SERVING_PREFIX):
                continue  # Prometheus's own, or serving's (checked against a live process)
            assert any(p.match(name) for p in patterns), (
                f"{source}: {title}: {name} is neither serving's nor made by {MAPPING.name}"
            )


def test_promtool_parses_every_dashboard_query(tmp_path: pytest.TempPathFactory) -> None:
    """Prometheus's own parser: each query becomes a recording rule `promtool check rules`
    reads (a record rule takes any expression)."""
    rules = [
        {"record": f"mlwp:check:{i}", "expr": promql(expr)}
        for i, (_, _, expr) in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.yaml"  # type: ignore[operator]
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run_checker([checker("promtool"), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_serving_dashboard_covers_what_the_issue_asks() -> None:
    serving = {
        n
        for source, _, e in dashboard_exprs()
        if source == "mlwp-serving.json"
        for n in metric_names(e)
    }
    for name in (
        "mlwp_serving_requests_total",
        "mlwp_serving_request_seconds_bucket",
        "mlwp_serving_prediction_requests_total",
        "mlwp_serving_cache_total",
        "mlwp_serving_model_load_failures_total",
        "mlwp_serving_capture_dropped_total",
    ):
        assert name in serving, name
    pipelines = {
        n
        for source, _, e in dashboard_exprs()
        if source == "mlwp-pipelines.json"
        for n in metric_names(e)
    }
    for name in (
        "airflow_dagrun_duration_seconds_bucket",
        "airflow_dagrun_duration_seconds_count",
        "airflow_task_scheduled_duration_seconds_bucket",
        "airflow_dagrun_first_task_start_delay_seconds_bucket",
        "airflow_scheduler_heartbeat_total",
    ):
        assert name in pipelines, name


def test_compose_provisions_the_dashboards_rules_and_mapping() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())
    services = compose["services"]
    grafana = services["grafana"]["volumes"]
    assert "./observability/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana
    assert "./observability/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    assert (
        "./observability/prometheus/rules:/etc/prometheus/rules:ro"
        in services["prometheus"]["volumes"]
    )
    exporter = services["statsd-exporter"]
    assert "profiles" not in exporter  # on in every compose run, as Airflow's statsd is
    assert "./observability/statsd/mapping.yaml:/etc/statsd/mapping.yaml:ro" in exporter["volumes"]
    provider = yaml.safe_load(
        (REPO_ROOT / "observability/grafana/provisioning/dashboards/mlwp.yaml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    prometheus = yaml.safe_load((REPO_ROOT / "observability/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    assert jobs == {"mlwp-serving", "airflow-statsd"}  # the job names the rules use


def test_promtool_accepts_the_compose_prometheus_config() -> None:
    config = REPO_ROOT / "observability" / "prometheus" / "prometheus.yml"
    result = run_checker([checker("promtool"), "check", "config", "--syntax-only", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr
