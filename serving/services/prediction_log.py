"""The sampled prediction log: a Redis stream when Redis is configured, else a JSONL file.

Each sampled request writes one entry (model, variant, version, inputs, outputs, request id,
timestamp) for monitoring and A/B analysis. Writing never fails a request.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import orjson

from serving.core.metrics import Metrics
from serving.services.cache import REDIS_ERRORS
from serving.services.redis_link import RedisLink


class PredictionLog:
    """Write a sample of predictions to a Redis stream (capped) or a local JSONL file."""

    def __init__(
        self,
        *,
        sample_rate: float,
        metrics: Metrics,
        link: RedisLink | None,
        stream: str,
        maxlen: int,
        file: Path,
    ) -> None:
        self.sample_rate = sample_rate
        self.metrics = metrics
        self.link = link
        self.stream = stream
        self.maxlen = maxlen
        self.file = file
        self._lock = threading.Lock()

    def sampled(self) -> bool:
        return self.sample_rate > 0 and random.random() < self.sample_rate

    async def write(self, entry: dict[str, Any]) -> None:
        payload = orjson.dumps(entry, option=orjson.OPT_SERIALIZE_NUMPY)
        if self.link is not None and self.link.up:
            try:
                await self.link.client.xadd(
                    self.stream, {"entry": payload}, maxlen=self.maxlen, approximate=True
                )
                self.metrics.predictions_logged.labels("redis").inc()
                return
            except REDIS_ERRORS as exc:
                self.link.failed("prediction_log", exc)
        self._append(payload)
        self.metrics.predictions_logged.labels("file").inc()

    def _append(self, payload: bytes) -> None:
        with self._lock:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with self.file.open("ab") as handle:
                handle.write(payload + b"\n")
