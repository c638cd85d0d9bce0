"""Predictions through the real service: real models from a real MLflow registry."""

from __future__ import annotations

from typing import Any

import pytest
from serving_harness import running
from telco import register_version, sample_records, set_traffic

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.anyio]


async def test_predict_answers_with_variant_version_and_probabilities(
    make_settings: Any, mlflow_server: str, model_dirs: Any, model_name: str, records: Any
) -> None:
    version = register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    set_traffic(mlflow_server, model_name, {"champion": 100})
    async with running(make_settings(models=[model_name])) as svc:
        response = await svc.client.post(
            f"/v1/models/{model_name}/predict",
            json={"data": records},
            headers={**svc.auth(), "X-Request-ID": "req-123"},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == version
        assert body["variant"] == "champion"
        assert body["request_id"] == "req-123"
        assert response.headers["x-request-id"] == "req-123"
        assert len(body["predictions"]) == len(records)
        assert set(body["predictions"]) <= {"Yes", "No"}
        assert all(abs(sum(p) - 1) < 1e-6 for p in body["probabilities"])
        # same numbers as the model loaded directly: the service adds nothing to the scores
        from mlwp import model as mlwp_model

        direct = mlwp_model.load(model_dirs["v1"]).predict(records)
        assert body["predictions"] == direct.predictions
        flat = [p for row in body["probabilities"] for p in row]
        assert flat == pytest.approx([p for row in direct.probabilities or [] for p in row])

        # a larger batch, which the service decodes from JSON straight into the matrix
        # (mlwp.model.json_records): the same predictions and probabilities, bit for bit
        many = sample_records(60, offset=100)
        response = await svc.client.post(
            f"/v1/models/{model_name}/predict",
            json={"data": many, "routing_key": 12},
            headers=svc.auth(),
        )
        assert response.status_code == 200, response.text
        direct = mlwp_model.load(model_dirs["v1"]).predict(many)
        assert response.json()["predictions"] == direct.predictions
        assert response.json()["probabilities"] == direct.probabilities

        default = await svc.client.post("/predict", json={"data": records[:1]}, headers=svc.auth())
        assert default.status_code == 200
        assert default.json()["model"] == model_name

        listed = (await svc.client.get("/v1/models", headers=svc.auth())).json()
        (entry,) = listed["models"]
        assert entry["name"] == model_name
        assert entry["variants"][0]["version"] == version
        assert "tenure" in entry["signature"]["properties"]
        # an integer feature is documented as any number, which is what is accepted
        tenure = entry["signature"]["properties"]["tenure"]
        assert tenure["anyOf"][0] == {"type": "number"}
        assert "integer" in tenure["description"]

        metrics = (await svc.client.get("/metrics")).text
        assert (
            f'mlwp_serving_predictions_total{{model="{model_name}",variant="champion",'
            f'version="{version}"}} 66.0'
        ) in metrics
        fraction = await svc.client.post(
            f"/v1/models/{model_name}/predict",
            json={"data": [{**records[0], "tenure": 12.5}]},
            headers=svc.auth(),
        )
        assert fraction.status_code == 200, fraction.text

        schema = (await svc.client.get("/openapi.json")).json()
        path = schema["paths"][f"/v1/models/{model_name}/predict"]["post"]
        ref = path["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        body_schema = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert body_schema["example"]["data"][0]["tenure"] == 1


async def test_errors_name_row_and_field_and_follow_the_schema(
    make_settings: Any, mlflow_server: str, model_dirs: Any, model_name: str, records: Any
) -> None:
    register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    async with running(
        make_settings(models=[model_name], max_rows=10, max_body_bytes=16384)
    ) as svc:
        url = f"/v1/models/{model_name}/predict"
        bad = [dict(r) for r in records[:3]]
        bad[2]["tenure"] = "twelve"
        response = await svc.client.post(url, json={"data": bad}, headers=svc.auth())
        assert response.status_code == 422
        error = response.json()["error"]
        assert set(error) == {"code", "message", "details", "request_id", "timestamp"}
        assert error["code"] == "invalid_input"
        assert error["message"] == "row 2, field 'tenure': expected an integer, got str 'twelve'"
        assert error["details"][0]["row"] == 2 and error["details"][0]["field"] == "tenure"

        missing = [dict(records[0])]
        del missing[0]["contract"]
        response = await svc.client.post(url, json={"data": missing}, headers=svc.auth())
        assert response.status_code == 422
        assert response.json()["error"]["details"][0]["field"] == "contract"
        # Counted per variant: a guarded rollout (mlwp.registry.rollout) judges challengers by it.
        metrics = (await svc.client.get("/metrics")).text
        assert (
            'mlwp_serving_prediction_errors_total{kind="invalid_input",'
            f'model="{model_name}",variant="champion"}} 2.0'
        ) in metrics

        response = await svc.client.post(url, content=b"{not json", headers=svc.auth())
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_json"

        response = await svc.client.post(url, json={"data": records * 3}, headers=svc.auth())
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "too_many_rows"

        response = await svc.client.post(url, content=b"x" * 20000, headers=svc.auth())
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"

        response = await svc.client.post(
            "/v1/models/nope/predict", json={"data": records}, headers=svc.auth()
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "unknown_model"

        response = await svc.client.post(url, json={"data": records})
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "missing_api_key"
        assert response.headers["www-authenticate"] == "Bearer"

        response = await svc.client.post(
            url, json={"data": records}, headers=svc.auth("mlwp_0123456789abcdef_" + "x" * 43)
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"

        other = svc.key("model:other")
        response = await svc.client.post(url, json={"data": records}, headers=svc.auth(other))
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "model_scope_required"
        response = await svc.client.post("/admin/reload", headers=svc.auth(other))
        assert response.status_code == 403

        scoped = svc.key(f"model:{model_name}")
        response = await svc.client.post(url, json={"data": records}, headers=svc.auth(scoped))
        assert response.status_code == 200
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "traceback" not in response.text.lower()


async def test_rate_limit_answers_429_with_retry_after(
    make_settings: Any, mlflow_server: str, model_dirs: Any, model_name: str, records: Any
) -> None:
    register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    async with running(make_settings(models=[model_name])) as svc:
        token = svc.key(f"model:{model_name}", rate_limit="3/minute")
        url = f"/v1/models/{model_name}/predict"
        statuses = []
        for _ in range(5):
            response = await svc.client.post(
                url, json={"data": records[:1]}, headers=svc.auth(token)
            )
            statuses.append(response.status_code)
        assert statuses == [200, 200, 200, 429, 429]
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert response.json()["error"]["code"] == "rate_limited"
        # another key has its own budget
        other = svc.key(f"model:{model_name}", rate_limit="3/minute")
        response = await svc.client.post(url, json={"data": records[:1]}, headers=svc.auth(other))
        assert response.status_code == 200


async def test_schema_and_code_follow_one_rule_for_rows_and_routing_key(
    make_settings: Any, mlflow_server: str, model_dirs: Any, model_name: str, records: Any
) -> None:
    """Every body the OpenAPI schema accepts is scored, every body it refuses is refused."""
    import jsonschema

    register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    async with running(make_settings(models=[model_name], max_rows=3)) as svc:
        spec = (await svc.client.get("/openapi.json")).json()
        schemas = spec["components"]["schemas"]
        for path in (f"/v1/models/{model_name}/predict", "/predict"):
            ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
            body_schema = schemas[ref["schema"]["$ref"].rsplit("/", 1)[1]]
            assert body_schema["properties"]["data"]["minItems"] == 1
            assert body_schema["properties"]["data"]["maxItems"] == 3
        generic = schemas["PredictRequest"]["properties"]
        assert (generic["data"]["minItems"], generic["data"]["maxItems"]) == (1, 3)
        routing_schema = generic["routing_key"]

        url = f"/v1/models/{model_name}/predict"
        for value in ("user-1", 123, 7.5, None, {}, {"a": [1]}, [1], True):
            valid = jsonschema.Draft202012Validator(routing_schema).is_valid(value)
            response = await svc.client.post(
                url, json={"data": records[:1], "routing_key": value}, headers=svc.auth()
            )
            assert response.status_code == (200 if valid else 422), (value, response.text)
        for data in ([], records[:4]):
            response = await svc.client.post(url, json={"data": data}, headers=svc.auth())
            assert response.status_code in (413, 422)  # both refused, as the schema says
        # a number is its decimal text: 7, 7.0 and "7" are one key
        from serving.api.routes.predict import routing_key

        assert {routing_key(key, "routing_key") for key in (7, 7.0, "7")} == {"7"}
        assert routing_key(0.5, "routing_key") == "0.5"
