"""Serving's signals, received from a live ``python -m serving`` (issue #17):

- every serving metric the Grafana dashboards and the alert rules name is in its
  ``GET /metrics`` (parsed with prometheus_client's parser);
- with ``MLWP_SERVING_OTEL_ENDPOINT`` set, its spans reach an OTLP/HTTP receiver run by the
  test (decoded with OpenTelemetry's own protobuf messages): a request's span carries the
  request id; the deploy client's ``POST /admin/reload`` (mlwp.registry.serving_client, what the
  deploy task calls) continues the caller's trace, and the registry sync it started is a
  span of the same trace;
- the JSON log line of a request holds the request id and the trace id together.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from observability_names import dashboard_exprs, metric_names, rule_exprs
from otlp_receiver import OtlpReceiver
from telco import register_version, sample_records
from test_server_limits import _serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def traced_service(
    mlflow_server: str, model_dirs: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    from serving.keys.store import KeyStore

    receiver = OtlpReceiver()
    home = tmp_path_factory.mktemp("observability-home")
    name = f"churn-otel-{os.getpid()}"
    version = register_version(mlflow_server, name, model_dirs["v1"], aliases=("champion",))
    env = {
        "MLWP_SERVING_MLFLOW_TRACKING_URI": mlflow_server,
        "MLWP_SERVING_MODELS": f'["{name}"]',
        "MLWP_SERVING_OTEL_ENDPOINT": receiver.url,
        "MLWP_SERVING_LOG_LEVEL": "DEBUG",  # the access log line of a 2xx is at debug
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: export batches quickly
    }
    try:
        with _serve(home, env) as base:
            store = KeyStore(f"sqlite:///{home / 'serving.db'}")
            _, token = store.create("observability", ["admin"], rate_limit="100000/second")
            store.close()
            yield {
                "base": base,
                "token": token,
                "model": name,
                "version": version,
                "receiver": receiver,
                "log": home / "uvicorn.log",
            }
    finally:
        receiver.close()


def test_every_serving_metric_of_the_dashboards_and_rules_is_exported(
    traced_service: dict[str, Any],
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    base, model = traced_service["base"], traced_service["model"]
    headers = {"Authorization": f"Bearer {traced_service['token']}"}
    scored = httpx.post(
        f"{base}/v1/models/{model}/predict", json={"data": sample_records(3)}, headers=headers
    )
    assert scored.status_code == 200, scored.text
    exported: set[str] = set()
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        # A family is exported even before its first sample (HELP and TYPE lines).
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",),
        }[family.type]
        exported |= {family.name + suffix for suffix in suffixes}
    used = {
        (source, title, name)
        for source, title, expr in [*dashboard_exprs(), *rule_exprs()]
        for name in metric_names(expr)
        if name.startswith("mlwp_serving_")
    }
    assert used
    missing = sorted(
        f"{source}: {title}: {name}" for source, title, name in used if name not in exported
    )
    assert not missing, missing


def test_a_deploys_reload_joins_its_trace_and_logs_carry_both_ids(
    traced_service: dict[str, Any],
) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from mlwp.registry.serving_client import reload_and_wait

    base, model, receiver = (
        traced_service["base"],
        traced_service["model"],
        traced_service["receiver"],
    )
    tracer = TracerProvider().get_tracer("the deploy task")
    with tracer.start_as_current_span("deploy") as deploy:
        outcome = reload_and_wait(
            base,
            model,
            "champion",
            traced_service["version"],
            None,
            api_key=traced_service["token"],
            timeout=60,
        )
    assert outcome.state == "serving", outcome
    trace_id = format(deploy.get_span_context().trace_id, "032x")
    deploy_span_id = format(deploy.get_span_context().span_id, "016x")

    (reload_span,) = receiver.wait_for(
        lambda s: s["trace_id"] == trace_id and s["name"] == "POST /admin/reload"
    )
    assert reload_span["parent_span_id"] == deploy_span_id  # the caller's span is its parent
    assert reload_span["resource"]["service.name"] == "mlwp-serving"
    assert reload_span["attributes"]["http.route"] == "/admin/reload"
    assert reload_span["attributes"]["mlwp.request_id"]
    syncs = receiver.wait_for(
        lambda s: s["trace_id"] == trace_id and s["name"] == "serving.registry_sync"
    )
    assert syncs[0]["attributes"]["mlwp.sync.trigger"] == "reload"

    # A prediction: its span has the request id; its log line has both ids.
    request_id = "obs-" + os.urandom(8).hex()
    headers = {"Authorization": f"Bearer {traced_service['token']}", "X-Request-ID": request_id}
    scored = httpx.post(
        f"{base}/v1/models/{model}/predict", json={"data": sample_records(2)}, headers=headers
    )
    assert scored.status_code == 200, scored.text
    (predict,) = receiver.wait_for(lambda s: s["attributes"].get("mlwp.request_id") == request_id)
    assert predict["name"] == "POST /v1/models/{model}/predict"
    assert predict["parent_span_id"] == ""  # no caller context: a trace of its own
    log: Path = traced_service["log"]
    deadline = time.monotonic() + 10
    while True:
        lines = [
            json.loads(line)
            for line in log.read_text().splitlines()
            if line.startswith("{") and request_id in line
        ]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert lines, log.read_text()[-2000:]
    assert all(line["trace_id"] == predict["trace_id"] for line in lines), lines
    assert any(line.get("event") == "request" for line in lines), lines
