"""Simulated serving traffic in the capture contract's schema (docs/monitoring.md), for the
monitor's tests: captured rows (champion, challenger and optional shadow) and their labels,
written as real Parquet parts with :mod:`mlwp.monitoring.capture`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

Records = Callable[[np.random.Generator, int], list[dict[str, Any]]]


def simulate(
    rng: np.random.Generator,
    *,
    model: str,
    requests: int,
    split: Mapping[str, float],
    versions: Mapping[str, str],
    accuracy: Mapping[str, float],
    records: Records,
    start: datetime,
    span: timedelta,
    shadow_accuracy: float | None = None,
    label_share: float = 1.0,
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """``requests`` one-row requests spread over ``span`` from ``start``, routed by ``split``;
    each variant is right with probability ``accuracy[variant]`` (binary labels). Returns the
    capture frame and label records (a share ``label_share`` of requests labelled)."""
    variants = list(split)
    shares = np.array([split[v] for v in variants], dtype=float)
    chosen = rng.choice(len(variants), size=requests, p=shares / shares.sum())
    inputs = records(rng, requests)
    labels = (rng.random(requests) < 0.3).astype(float)
    times = [start + span * (i / requests) for i in range(requests)]
    rows: list[dict[str, Any]] = []
    label_records: list[dict[str, Any]] = []

    def scored(p_right: float, label: float) -> tuple[float, float]:
        right = rng.random() < p_right
        prediction = label if right else 1.0 - label
        probability = float(np.clip(0.5 + (0.3 if prediction else -0.3) + rng.normal(0, 0.1), 0, 1))
        return prediction, probability

    for i in range(requests):
        inference_id = str(uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | i))
        variant = variants[chosen[i]]
        prediction, probability = scored(accuracy[variant], labels[i])
        base = {
            "inference_id": inference_id,
            "row": 0,
            "time": times[i],
            "model": model,
            "routing_key": None,
            "entity_key": f"customer-{i}",
            "inputs": json.dumps(inputs[i]),
            "latency_ms": 3.0,
        }
        rows.append(
            {
                **base,
                "version": versions[variant],
                "variant": variant,
                "served": True,
                "prediction": prediction,
                "probability": probability,
                "outputs": json.dumps({"prediction": prediction, "probability": probability}),
            }
        )
        if shadow_accuracy is not None:
            p, q = scored(shadow_accuracy, labels[i])
            rows.append(
                {
                    **base,
                    "version": versions["shadow"],
                    "variant": "shadow",
                    "served": False,
                    "prediction": p,
                    "probability": q,
                    "outputs": json.dumps({"prediction": p, "probability": q}),
                }
            )
        if rng.random() < label_share:
            label_records.append(
                {
                    "inference_id": inference_id,
                    "row": 0,
                    "label": labels[i],
                    "label_time": times[i] + timedelta(hours=1),
                }
            )
    frame = pd.DataFrame(rows)
    frame["time"] = pd.to_datetime(frame["time"], utc=True).astype("datetime64[ms, UTC]")
    return frame, label_records


def write(root: str, model: str, capture: pd.DataFrame, labels: list[dict[str, Any]]) -> None:
    """Store the capture frame and the labels as the capture module's Parquet parts."""
    import pyarrow as pa

    from mlwp.monitoring.capture import CAPTURE, capture_schema, write_labels, write_parts

    table = pa.Table.from_pandas(capture, schema=capture_schema(), preserve_index=False)
    write_parts(root, CAPTURE, model, table)
    if labels:
        write_labels(root, model, labels, source="api")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)
