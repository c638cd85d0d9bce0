"""schemathesis against the running service's OpenAPI schema (a real uvicorn process with a
real model), with every response check on: no 5xx, documented status codes, content types,
headers and bodies, schema-valid requests accepted (2xx, or an auth/rate-limit answer) and
schema-invalid ones refused with a 4xx."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from server_process import free_port, wait_for_http
from serving_harness import stop_process
from telco import register_version

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def live_service(
    mlflow_server: str, model_dirs: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """``python -m serving`` serving a real churn model; yields its URL and a key."""
    from serving.keys.store import KeyStore, migrate

    home = tmp_path_factory.mktemp("fuzz-home")
    name = f"churn-fuzz-{os.getpid()}"
    register_version(mlflow_server, name, model_dirs["v1"], aliases=("champion",))
    url_db = f"sqlite:///{home / 'serving.db'}"
    migrate(url_db)
    store = KeyStore(url_db)
    _, token = store.create("fuzz", ["admin"], rate_limit="100000/second")
    store.close()
    port = free_port()
    env = {
        **os.environ,
        "MLWP_SERVING_HOME": str(home),
        "MLWP_SERVING_MLFLOW_TRACKING_URI": mlflow_server,
        "MLWP_SERVING_MODELS": f'["{name}"]',
        "MLWP_SERVING_POLL_INTERVAL_SECONDS": "0",
        "MLWP_SERVING_LOG_LEVEL": "WARNING",
        # the ignored_auth check sends many invalid keys on purpose
        "MLWP_SERVING_FAILED_AUTH_LIMIT": "1000000/minute",
    }
    log = (home / "uvicorn.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_http(f"{base}/health/ready", timeout=300, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n{(home / 'uvicorn.log').read_text()[-3000:]}") from None
        yield {"url": base, "token": token, "model": name}
    finally:
        stop_process(proc)
        log.close()


# Checks that need state the service does not have (resources created then deleted) or
# object-level permissions are left out; every other built-in check runs.
STATEFUL_CHECKS = {"use_after_free", "ensure_resource_availability", "object_level_authorization"}


# schemathesis' expected statuses for a schema-violating request (NegativeDataRejectionConfig)
NEGATIVE_STATUSES = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429"]
NEGATIVE_STATUSES += ["5xx"]


def _checks() -> list[Any]:
    from schemathesis.checks import CHECKS, load_all_checks

    load_all_checks()
    names = [name for name in CHECKS.get_all_names() if name not in STATEFUL_CHECKS]
    assert {"positive_data_acceptance", "negative_data_rejection"} <= set(names)
    assert {"response_schema_conformance", "status_code_conformance"} <= set(names)
    return [check for check in CHECKS.get_by_names(names) if callable(check)]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_get_the_documented_answers(
    live_service: dict[str, str], mode: Any
) -> None:
    from schemathesis.config import SchemathesisConfig

    # the key goes through schemathesis' OpenAPI-aware auth (the schema's HTTPBearer scheme),
    # so negative cases know the header is sent
    config = SchemathesisConfig.from_dict(
        {
            "auth": {"openapi": {"HTTPBearer": {"bearer": live_service["token"]}}},
            # a body over max_body_bytes is refused before it is read: 413 (a negative case
            # over a list's maxItems can be that large), which schemathesis' defaults omit
            "checks": {
                "negative_data_rejection": {
                    "expected-statuses": [*NEGATIVE_STATUSES, "413"],
                }
            },
        }
    )
    schema = schemathesis.openapi.from_url(f"{live_service['url']}/openapi.json", config=config)
    checks = _checks()
    exercised: list[str] = []
    answered: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        exercised.append(operation.label)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def call(case: Any) -> None:
            response = case.call_and_validate(base_url=live_service["url"], checks=checks)
            answered.setdefault(case.operation.label, set()).add(response.status_code)

        try:
            call()
        except Unsatisfiable:
            # GET routes without parameters have nothing a negative case could break
            if mode is not GenerationMode.NEGATIVE:
                raise
    assert f"POST /v1/models/{live_service['model']}/predict" in exercised
    assert "POST /predict" in exercised and "GET /v1/models" in exercised
    if mode is GenerationMode.POSITIVE:  # the key was sent: valid bodies were scored
        assert 200 in answered[f"POST /v1/models/{live_service['model']}/predict"], answered
        assert 200 in answered["POST /predict"], answered


@pytest.mark.integration
@pytest.mark.slow
def test_schema_shows_the_model_request(live_service: dict[str, str]) -> None:
    spec = httpx.get(f"{live_service['url']}/openapi.json").json()
    path = f"/v1/models/{live_service['model']}/predict"
    assert path in spec["paths"]
    record = spec["components"]["schemas"][f"Record_{live_service['model'].replace('-', '_')}"]
    assert record["properties"]["monthly_charges"]["anyOf"][0] == {"type": "number"}
    assert "contract" in record["required"]
