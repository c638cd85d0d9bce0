"""The per-request helpers of the hot path: timestamps, request ids, bound metric children."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta

from serving.api.middleware import new_request_id, rendered_security_headers, response_headers
from serving.api.responses import now_iso
from serving.core.metrics import Metrics


def test_now_iso_is_datetime_isoformat() -> None:
    before = datetime.now(UTC)
    stamps = [now_iso() for _ in range(2000)]
    after = datetime.now(UTC)
    for stamp in stamps:
        parsed = datetime.fromisoformat(stamp)
        assert before <= parsed <= after
        assert stamp == parsed.isoformat()  # the same text datetime writes
    assert before - timedelta(seconds=1) <= datetime.fromisoformat(now_iso()) <= datetime.now(UTC)


def test_request_ids_are_random_hex_and_not_shared_with_a_forked_child() -> None:
    ids = [new_request_id() for _ in range(5000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_id = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child_id != new_request_id()


def test_request_and_prediction_children_are_the_labelled_ones() -> None:
    metrics = Metrics()
    count, seconds = metrics.request_children("/predict", "POST", 200)
    assert count is metrics.requests.labels("/predict", "POST", "200")
    assert seconds is metrics.request_seconds.labels("/predict")
    assert metrics.request_children("/predict", "POST", 200) == (count, seconds)
    timed, requests, rows = metrics.prediction_children("churn", "champion", "3")
    assert timed is metrics.prediction_seconds.labels("churn", "champion")
    assert requests is metrics.prediction_requests.labels("churn", "champion")
    assert rows is metrics.predictions.labels("churn", "champion", "3")


def test_rendered_security_headers_are_the_added_ones() -> None:
    for path in ("/v1/models/m/predict", "/predict", "/docs", "/redoc"):
        added = response_headers("id", path)[1:]  # after the request id
        assert rendered_security_headers(path) == b"".join(
            name + b": " + value + b"\r\n" for name, value in added
        )
