"""``POST /v1/models/{model}/feedback`` while the model is not loaded (its MLflow registry
unreachable, so no version ever loads): no MLflow server, the app in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from serving_harness import running

pytestmark = [pytest.mark.anyio]

URL = "/v1/models/churn/feedback"


def _settings(tmp_path: Path) -> Any:
    from serving.core.config import ServingSettings

    return ServingSettings(
        home=tmp_path / "home",
        mlflow_tracking_uri="http://127.0.0.1:9",  # nothing listens: the model never loads
        poll_interval_seconds=0,
        models=["churn"],
        storage_root=(tmp_path / "storage").as_uri(),
    )


async def test_a_class_label_waits_for_the_model_and_numbers_do_not(tmp_path: Path) -> None:
    """A label given as a class ("Yes") is mapped with the champion's classes. Before the
    champion loaded, the label was refused as a bad one (422 bad_label, "not a number or a
    class of the model"), which tells a client not to retry, so a right label was lost: it
    is 503 model_not_loaded with Retry-After now. Class indices and values need no classes
    and are stored; an infinite one is refused, naming the label."""
    async with running(_settings(tmp_path), wait_ready=False) as svc:
        headers = svc.auth(svc.key("feedback:churn"))
        named = await svc.client.post(
            URL,
            json={
                "labels": [{"inference_id": "a", "label": 1}, {"entity_key": "c", "label": "Yes"}]
            },
            headers=headers,
        )
        assert named.status_code == 503, named.text
        error = named.json()["error"]
        assert error["code"] == "model_not_loaded"
        assert "label 'Yes' cannot be mapped" in error["message"]
        assert named.headers["Retry-After"] == "5"

        numbers = await svc.client.post(
            URL,
            json={"labels": [{"inference_id": "a", "label": 1}, {"entity_key": "c", "label": "0"}]},
            headers=headers,
        )
        assert numbers.status_code == 200, numbers.text
        assert numbers.json()["accepted"] == 2

        infinite = await svc.client.post(
            URL, json={"labels": [{"inference_id": "a", "label": "inf"}]}, headers=headers
        )
        assert infinite.status_code == 422, infinite.text
        assert infinite.json()["error"]["code"] == "bad_label"
        assert infinite.json()["error"]["message"].startswith("labels[0].label: ")


async def test_schema_errors_name_fields_as_the_routes_own_errors_do(tmp_path: Path) -> None:
    """Pydantic's 422s named a field ``body.labels.0.label`` (and a union's alternatives
    ``body.labels.0.label.float`` and ``.str``), while the route's own checks of the same
    body say ``labels[0].label``: one client saw both forms. Both say ``labels[0].label``
    now, one problem per field."""
    async with running(_settings(tmp_path), wait_ready=False) as svc:
        headers = svc.auth(svc.key("feedback:churn"))

        async def error(**request: Any) -> dict[str, Any]:
            request["headers"] = {**headers, **request.get("headers", {})}
            response = await svc.client.post(URL, **request)
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "invalid_input"
            found: dict[str, Any] = response.json()["error"]
            return found

        typed = await error(json={"labels": [{"inference_id": "a", "label": 1, "row": -1}]})
        assert typed["message"] == "labels[0].row: Input should be greater than or equal to 0"
        assert typed["details"] == [
            {
                "location": "labels[0].row",
                "in": "body",
                "message": "Input should be greater than or equal to 0",
            }
        ]
        union = await error(json={"labels": [{"inference_id": "a", "label": 1}, {"label": None}]})
        assert union["message"] == (
            "labels[1].label: Input should be a valid number; Input should be a valid string"
        )
        assert [d["location"] for d in union["details"]] == ["labels[1].label"]
        missing = await error(json={"labels": [{"inference_id": "a"}]})
        assert missing["message"] == "labels[0].label: Field required"
        assert (await error(json={"labels": []}))["message"].startswith("labels: List should")
        assert (await error(json=[1]))["message"].startswith("body: Input should be a valid")
        broken = await error(content=b'{"labels": [', headers={"content-type": "application/json"})
        assert broken["message"].startswith("body: invalid JSON at character 12: ")
        # a misspelt field was ignored: "labeltime" stored the label with label_time = now
        typo = await error(
            json={"labels": [{"entity_key": "c", "label": 1, "labeltime": "2026-01-01T00:00:00Z"}]}
        )
        assert typo["message"] == "labels[0].labeltime: Extra inputs are not permitted"


async def test_a_label_time_in_the_future_is_refused(tmp_path: Path) -> None:
    """A label_time later than now was accepted and stored (an entity's label then claims
    the predictions made up to that time, after the outcome). Five minutes ahead is clock
    skew and is stored; later is 422, naming the label's label_time, and nothing is."""
    from datetime import UTC, datetime, timedelta

    from mlwp.monitoring.capture import read_labels

    now = datetime.now(UTC)
    async with running(_settings(tmp_path), wait_ready=False) as svc:
        headers = svc.auth(svc.key("feedback:churn"))
        future = await svc.client.post(
            URL,
            json={
                "labels": [
                    {"inference_id": "a", "label": 1},
                    {"entity_key": "c", "label": 0, "label_time": "2099-01-01T00:00:00Z"},
                ]
            },
            headers=headers,
        )
        assert future.status_code == 422, future.text
        error = future.json()["error"]
        assert error["code"] == "bad_time"
        assert error["message"].startswith(
            "labels[1].label_time: 2099-01-01T00:00:00+00:00 is in the future"
        )
        assert "at most 5 minutes later" in error["message"]

        skewed = (now + timedelta(minutes=2)).isoformat()
        ahead = await svc.client.post(
            URL,
            json={"labels": [{"entity_key": "c", "label": 0, "label_time": skewed}]},
            headers=headers,
        )
        assert ahead.status_code == 200, ahead.text
    stored = read_labels((tmp_path / "storage").as_uri(), "churn", latest=False)
    assert list(stored["entity_key"]) == ["c"]


async def test_an_entity_key_is_text_or_an_integer(tmp_path: Path) -> None:
    """``entity_key: true`` was stored as key "1" (pydantic's lax mode made the boolean an
    int), joining the predictions of entity "1"; 1.0 became "1" too. Booleans, decimals,
    objects and arrays are refused, naming labels[i].entity_key; a string or an integer is
    stored as text. ``row: true`` was row 1, and is refused too; an inference id is text
    (pydantic refused anything else already)."""
    from mlwp.monitoring.capture import read_labels

    async with running(_settings(tmp_path), wait_ready=False) as svc:
        headers = svc.auth(svc.key("feedback:churn"))

        async def refused(label: dict[str, Any]) -> str:
            labels = [{"entity_key": "c", "label": 1}, {"label": 1, **label}]
            response = await svc.client.post(URL, json={"labels": labels}, headers=headers)
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "invalid_input"
            message: str = response.json()["error"]["message"]
            return message

        for value, kind in (
            (True, "a boolean (true)"),
            (False, "a boolean (false)"),
            (1.0, "a decimal number (1.0)"),
            (1.5, "a decimal number (1.5)"),
            ({"id": 1}, "an object"),
            (["c"], "an array"),
        ):
            assert await refused({"entity_key": value}) == (
                f"labels[1].entity_key: an entity key is a string or an integer, not {kind}"
            )
        assert await refused({"inference_id": True}) == (
            "labels[1].inference_id: Input should be a valid string"
        )
        assert await refused({"inference_id": "a", "row": True}) == (
            "labels[1].row: a row is an integer, not a boolean (true)"
        )

        stored = await svc.client.post(
            URL,
            json={"labels": [{"entity_key": 17, "label": 1}, {"entity_key": "0012", "label": 0}]},
            headers=headers,
        )
        assert stored.status_code == 200, stored.text
    labels = read_labels((tmp_path / "storage").as_uri(), "churn", latest=False)
    assert sorted(labels["entity_key"]) == ["0012", "17"]


async def test_a_refused_key_is_told_its_scopes_and_the_one_needed(tmp_path: Path) -> None:
    """A key of scope feedback:churn sending labels of 'churnn' (a typo) was told "this API
    key may not send feedback for model 'churnn'", and a feedback key asking for predictions
    "may not use model 'churn'": as if the key were wrong, with nothing to compare. Both name
    the key's scopes and the scope needed now."""
    async with running(_settings(tmp_path), wait_ready=False) as svc:
        headers = svc.auth(svc.key("feedback:churn"))
        typo = await svc.client.post(
            "/v1/models/churnn/feedback",
            json={"labels": [{"inference_id": "a", "label": 1}]},
            headers=headers,
        )
        assert typo.status_code == 403, typo.text
        assert typo.json()["error"]["code"] == "feedback_scope_required"
        assert typo.json()["error"]["message"] == (
            "this API key ('test', scopes feedback:churn) may not send feedback for model "
            "'churnn': that needs scope feedback:churnn or feedback:*"
        )
        predict = await svc.client.post(
            "/v1/models/churn/predict", json={"data": [{"tenure": 1}]}, headers=headers
        )
        assert predict.status_code == 403, predict.text
        assert predict.json()["error"]["code"] == "model_scope_required"
        assert predict.json()["error"]["message"] == (
            "this API key ('test', scopes feedback:churn) may not use model 'churn': that "
            "needs scope model:churn or model:*"
        )
