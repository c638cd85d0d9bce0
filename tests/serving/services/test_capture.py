"""Capture and feedback through the real service: real models from a real MLflow registry,
captured rows (spooled as framed parts, compacted into Parquet) and labels read back (local
folder and S3 on a moto server)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from serving_harness import running
from telco import register_version, set_traffic

from mlwp.monitoring import capture as contract
from mlwp.monitoring.capture import (
    compact_capture,
    join_labels,
    label_report,
    read_capture,
    read_labels,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.anyio]


def spooled(path: Path) -> pa.Table:
    """A spool part serving wrote (framed: contract.write_spool_part), as its requests."""
    return contract.read_spool(f"file://{path}")


def metric(text: str, line_start: str) -> float:
    """The value of the first exposition line starting with ``line_start`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_capture_with_shadow_then_feedback_by_id_and_entity(
    make_settings: Any,
    mlflow_server: str,
    model_dirs: Any,
    model_name: str,
    records: Any,
    tmp_path: Path,
) -> None:
    champion = register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    shadow = register_version(mlflow_server, model_name, model_dirs["v2"], aliases=("shadow",))
    set_traffic(mlflow_server, model_name, {"champion": 100})
    root = (tmp_path / "storage").as_uri()
    sent = [{**record, "customer": f"c{i}"} for i, record in enumerate(records[:3])]
    settings = make_settings(
        models=[model_name],
        storage_root=root,
        capture_percent=100,
        entity_fields={model_name: "customer"},
        capture_flush_seconds=0.2,
    )
    async with running(settings) as svc:
        response = await svc.client.post(
            f"/v1/models/{model_name}/predict",
            json={"data": sent, "routing_key": "user-7"},
            headers={**svc.auth(), "X-Request-ID": "req-capture-1"},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        for _ in range(100):  # the shadow scores after the response, then the writer flushes
            if len(read_capture(root, model_name)) == 6:
                break
            await asyncio.sleep(0.1)
        metrics = (await svc.client.get("/metrics")).text
        assert metric(metrics, f'mlwp_serving_capture_written_total{{model="{model_name}"}}') == 6

        frame = read_capture(root, model_name)
        parts = sorted((tmp_path / "storage/monitoring/capture").rglob("*.spool"))
        # spooled per request (format 2, framed spool parts), read back per record
        assert parts and all(spooled(p).schema == contract.request_schema() for p in parts)
        assert not list((tmp_path / "storage/monitoring/capture").rglob("*.parquet"))
        assert parts[0].parent.parent.name == f"model={model_name}"
        served = frame[frame["served"]].sort_values("row")
        assert list(served["inference_id"]) == ["req-capture-1"] * 3
        assert list(served["row"]) == [0, 1, 2]
        assert set(served["version"]) == {champion} and set(served["variant"]) == {"champion"}
        assert set(served["routing_key"]) == {"user-7"}
        assert list(served["entity_key"]) == ["c0", "c1", "c2"]
        assert [orjson.loads(text) for text in served["inputs"]] == sent
        stored = [r for part in parts for r in spooled(part).to_pylist()]
        assert {orjson.loads(r["request"])["routing_key"] for r in stored} == {"user-7"}
        assert response.content in [r["response"] for r in stored]  # the body as sent
        assert [orjson.loads(t)["prediction"] for t in served["outputs"]] == body["predictions"]
        classes = ["No", "Yes"]  # the telco models' classes, in order
        assert list(served["prediction"]) == [classes.index(p) for p in body["predictions"]]
        assert list(served["probability"]) == pytest.approx([p[1] for p in body["probabilities"]])
        assert (served["latency_ms"] > 0).all()
        mirrored = frame[~frame["served"]]
        assert set(mirrored["variant"]) == {"shadow"} and set(mirrored["version"]) == {shadow}
        assert list(mirrored.sort_values("row")["inference_id"]) == ["req-capture-1"] * 3

        # the monitor's compaction folds the spool into zstd Parquet: the same rows read back
        counts = compact_capture(root, model_name)
        assert counts["spooled"] == len(parts) and counts["requests"] == 2
        assert not list((tmp_path / "storage/monitoring/capture").rglob("*.spool"))
        compacted = sorted((tmp_path / "storage/monitoring/capture").rglob("*.parquet"))
        assert len(compacted) == 1
        assert pq.ParquetFile(compacted[0]).metadata.row_group(0).column(9).compression == "ZSTD"
        again = read_capture(root, model_name)
        for column in ("inputs", "outputs"):  # a record's text may end in a space or not
            again[column], frame[column] = again[column].str.strip(), frame[column].str.strip()
        assert again.equals(frame)

        url = f"/v1/models/{model_name}/feedback"
        predict_only = svc.key(f"model:{model_name}")
        refused = await svc.client.post(
            url,
            json={"labels": [{"inference_id": "x", "label": 1}]},
            headers=svc.auth(predict_only),
        )
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "feedback_scope_required"

        feedback = svc.key(f"feedback:{model_name}")
        labels = {
            "labels": [
                {"inference_id": "req-capture-1", "row": 1, "label": "Yes"},
                {"entity_key": "c2", "label": 0},
            ]
        }
        for _ in range(2):  # sending again changes nothing
            answer = await svc.client.post(url, json=labels, headers=svc.auth(feedback))
            assert answer.status_code == 200, answer.text
            assert answer.json()["accepted"] == 2
        bad = await svc.client.post(
            url,
            json={"labels": [{"entity_key": "c1", "label": "Maybe"}]},
            headers=svc.auth(feedback),
        )
        assert bad.status_code == 422
        assert bad.json()["error"]["message"] == (
            "labels[0].label: label 'Maybe' is not a number or a class of the model "
            "(the model's classes are ['No', 'Yes'])"
        )
        missing = await svc.client.post(
            url, json={"labels": [{"label": 1}]}, headers=svc.auth(feedback)
        )
        assert missing.status_code == 422
        assert missing.json()["error"]["code"] == "missing_key"
        unknown = await svc.client.post("/v1/models/nope/feedback", json=labels, headers=svc.auth())
        assert unknown.status_code == 404
        metrics = (await svc.client.get("/metrics")).text
        assert metric(metrics, f'mlwp_serving_labels_received_total{{model="{model_name}"}}') == 4

    label_parts = sorted((tmp_path / "storage/monitoring/labels").rglob("*.parquet"))
    assert label_parts and pq.read_schema(label_parts[0]) == contract.LABEL_SCHEMA
    assert len(read_labels(root, model_name, latest=False)) == 4
    joined = join_labels(read_capture(root, model_name), read_labels(root, model_name))
    served = joined[joined["served"]].sort_values("row")
    assert served["label"].tolist()[1:] == [1.0, 0.0]
    assert math.isnan(served["label"].tolist()[0])
    report = label_report(joined)
    assert report["champion"]["labelled"] == 2 and report["shadow"]["labelled"] == 2
    assert report["champion"]["delay_s_p50"] >= 0


async def test_full_buffer_drops_and_counts_and_requests_never_fail(
    make_settings: Any,
    mlflow_server: str,
    model_dirs: Any,
    model_name: str,
    records: Any,
    tmp_path: Path,
) -> None:
    register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the storage folder should be")
    settings = make_settings(
        models=[model_name],
        storage_root=blocked.as_uri(),  # every write fails
        capture_buffer_rows=4,
        capture_batch_rows=1000,
        capture_flush_seconds=3600,  # nothing is written before shutdown
    )
    async with running(settings) as svc:
        url = f"/v1/models/{model_name}/predict"
        for _ in range(5):
            response = await svc.client.post(url, json={"data": records[:2]}, headers=svc.auth())
            assert response.status_code == 200, response.text
        metrics = (await svc.client.get("/metrics")).text
        dropped = f'mlwp_serving_capture_dropped_total{{model="{model_name}",reason='
        assert metric(metrics, dropped + '"buffer_full"}') == 6  # 2 requests fit, 3 did not
        assert metric(metrics, "mlwp_serving_capture_buffered ") == 4
        # the writer fails at shutdown; it counts, logs, and the service still stops cleanly
        services = svc.services
    text = services.metrics.registry
    from prometheus_client import generate_latest

    exposition = generate_latest(text).decode()
    assert metric(exposition, dropped + '"write_failed"}') == 4
    assert metric(exposition, "mlwp_serving_capture_buffered ") == 0


async def test_capture_and_labels_on_s3_with_a_per_model_share(
    make_settings: Any,
    mlflow_server: str,
    model_dirs: Any,
    model_name: str,
    records: Any,
    s3_bucket: str,
) -> None:
    register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    root = f"s3://{s3_bucket}/platform"
    settings = make_settings(
        models=[model_name],
        storage_root=root,
        capture_percent=0,
        capture_model_percent={model_name: 100, "other": 0},
    )
    async with running(settings) as svc:
        response = await svc.client.post(
            f"/v1/models/{model_name}/predict", json={"data": records[:1]}, headers=svc.auth()
        )
        assert response.status_code == 200
        request_id = response.json()["request_id"]
        answer = await svc.client.post(
            f"/v1/models/{model_name}/feedback",
            json={"labels": [{"inference_id": request_id, "label": 1}]},
            headers=svc.auth(),
        )
        assert answer.status_code == 200, answer.text
    # written at shutdown; read from the spool, then again once compacted
    joined = join_labels(read_capture(root, model_name), read_labels(root, model_name))
    assert joined["inference_id"].tolist() == [request_id]
    assert joined["label"].tolist() == [1.0]
    assert compact_capture(root, model_name)["removed"] == 1
    assert compact_capture(root, model_name)["removed"] == 0
    joined = join_labels(read_capture(root, model_name), read_labels(root, model_name))
    assert joined["inference_id"].tolist() == [request_id]
