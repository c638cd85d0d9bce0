"""The capture writer's column building: JSON per row without Python per row, its fallback,
class indices and entity keys (no service needed)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from mlwp.monitoring.capture import capture_schema
from serving.core.config import ServingSettings
from serving.core.metrics import Metrics
from serving.services.capture import CaptureBuffer, Captured, json_rows

pytestmark = pytest.mark.unit


def test_json_rows_cuts_one_dump_and_falls_back_when_it_cannot() -> None:
    values = [{"a": 1, "b": "x"}, {}, {"c": [1, 2], "d": None}]
    rows = json_rows(values).to_pylist()
    assert [orjson.loads(text) for text in rows] == values
    tricky = [{"a": "},{"}, {"b": [{"c": 1}, {"d": 2}]}, {"e": 1.5}]
    assert [orjson.loads(t) for t in json_rows(tricky).to_pylist()] == tricky
    assert json_rows([]).to_pylist() == []


def test_table_of_mixed_requests(tmp_path: Path) -> None:
    settings = ServingSettings(home=tmp_path, entity_fields={"m": "customer"})
    buffer = CaptureBuffer(settings, Metrics())
    common = {"time_ms": 1_764_000_000_000, "model": "m", "routing_key": None}
    buffer.add(
        Captured(
            inference_id="r1",
            version="1",
            variant="champion",
            served=True,
            records=[{"x": 1, "customer": 7}, {"x": 2, "customer": "c2"}],
            predictions=["Yes", "No"],
            probabilities=[[0.2, 0.8], [0.9, 0.1]],
            classes=["No", "Yes"],
            latency_ms=1.0,
            **common,
        )
    )
    buffer.add(
        Captured(
            inference_id="r2",
            version="2",
            variant="shadow",
            served=False,
            records=[{"x": 3}],
            predictions=[1.0],  # a cached answer's JSON for the class 1
            probabilities=None,
            classes=[0, 1],
            latency_ms=2.0,
            **common,
        )
    )
    table = buffer._table(buffer._pending)
    assert table.schema == capture_schema()
    rows = table.to_pylist()
    assert [r["inference_id"] for r in rows] == ["r1", "r1", "r2"]
    assert [r["row"] for r in rows] == [0, 1, 0]
    assert [r["prediction"] for r in rows] == [1.0, 0.0, 1.0]
    assert [r["probability"] for r in rows] == [0.8, 0.1, None]
    assert [r["entity_key"] for r in rows] == ["7", "c2", None]
    assert [r["served"] for r in rows] == [True, True, False]
    assert orjson.loads(rows[1]["outputs"]) == {"prediction": "No", "probabilities": [0.9, 0.1]}
    assert orjson.loads(rows[2]["inputs"]) == {"x": 3}
