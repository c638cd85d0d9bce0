"""Prometheus metrics of the serving service, in a registry of their own per application."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LOAD_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120)


class Metrics:
    """Every metric the service exports (``GET /metrics``): name, help text, labels."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, documentation, labels, registry=registry)

        def gauge(name: str, documentation: str, labels: Sequence[str]) -> Gauge:
            return Gauge(name, documentation, labels, registry=registry)

        def histogram(
            name: str,
            documentation: str,
            labels: Sequence[str],
            buckets: Sequence[float] = LATENCY_BUCKETS,
        ) -> Histogram:
            return Histogram(name, documentation, labels, buckets=buckets, registry=registry)

        # HTTP
        self.requests = counter(
            "mlwp_serving_requests", "HTTP requests answered.", ("route", "method", "status")
        )
        self.request_seconds = histogram(
            "mlwp_serving_request_seconds", "HTTP request latency by route.", ("route",)
        )
        # Predictions
        self.predictions = counter(
            "mlwp_serving_predictions",
            "Rows scored, by model, variant and version.",
            ("model", "variant", "version"),
        )
        self.prediction_requests = counter(
            "mlwp_serving_prediction_requests",
            "Prediction requests, by model and variant.",
            ("model", "variant"),
        )
        self.prediction_errors = counter(
            "mlwp_serving_prediction_errors",
            "Prediction requests a variant failed to score, by model, variant and kind "
            "(invalid_input: the variant refused the records; error: it raised).",
            ("model", "variant", "kind"),
        )
        self.prediction_seconds = histogram(
            "mlwp_serving_prediction_seconds",
            "Scoring latency by model and variant.",
            ("model", "variant"),
        )
        # Shadow variant
        self.shadow_predictions = counter(
            "mlwp_serving_shadow_predictions",
            "Rows scored by the shadow variant.",
            ("model", "version"),
        )
        self.shadow_disagreements = counter(
            "mlwp_serving_shadow_disagreements",
            "Rows where the shadow's prediction differed from the served one.",
            ("model", "version"),
        )
        self.shadow_errors = counter(
            "mlwp_serving_shadow_errors", "Shadow scorings that failed.", ("model",)
        )
        # Cache, rate limits, Redis
        self.cache = counter(
            "mlwp_serving_cache",
            "Prediction cache lookups by result (hit, miss, error).",
            ("result",),
        )
        self.rate_limited = counter(
            "mlwp_serving_rate_limited", "Requests refused by a rate limit."
        )
        self.auth_failures = counter(
            "mlwp_serving_auth_failures", "Requests whose API key was invalid or revoked."
        )
        self.auth_rate_limited = counter(
            "mlwp_serving_auth_rate_limited",
            "Requests refused because their address failed authentication too often.",
        )
        self.redis_errors = counter(
            "mlwp_serving_redis_errors",
            "Redis operations that failed (then bypassed).",
            ("operation",),
        )
        # Models and the registry
        self.load_failures = counter(
            "mlwp_serving_model_load_failures",
            "Model versions that failed to load.",
            ("model", "alias"),
        )
        self.load_failed = gauge(
            "mlwp_serving_model_load_failed",
            "1 while the latest load of the alias's version failed (the previous one serves).",
            ("model", "alias"),
        )
        self.load_seconds = histogram(
            "mlwp_serving_model_load_seconds",
            "Time to download, load and warm a version.",
            ("model",),
            buckets=LOAD_BUCKETS,
        )
        self.model_info = gauge(
            "mlwp_serving_model_info",
            "1 for each version serving under an alias.",
            ("model", "alias", "version"),
        )
        self.registry_errors = counter(
            "mlwp_serving_registry_errors", "Registry syncs that failed (MLflow unreachable)."
        )
        # Capture for monitoring (serving/services/capture.py)
        self.capture_written = counter(
            "mlwp_serving_capture_written",
            "Captured rows written to storage, by model.",
            ("model",),
        )
        self.capture_dropped = counter(
            "mlwp_serving_capture_dropped",
            "Captured rows dropped, by model and reason (buffer_full, write_failed).",
            ("model", "reason"),
        )
        self.capture_buffered = Gauge(
            "mlwp_serving_capture_buffered",
            "Captured rows waiting in memory or being written.",
            registry=registry,
        )
        self.labels_received = counter(
            "mlwp_serving_labels_received",
            "Labels stored through the feedback endpoint, by model.",
            ("model",),
        )
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._prediction_children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}

    def request_children(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        """The children of ``requests`` and ``request_seconds`` a response counts in, bound
        once per route, method and status (one lookup per request instead of two
        ``labels()`` calls)."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            if len(self._request_children) >= 4096:  # methods are the clients' to make up
                self._request_children.clear()
            children = (
                self.requests.labels(route, method, str(status)),
                self.request_seconds.labels(route),
            )
            self._request_children[key] = children
        return children

    def prediction_children(self, model: str, variant: str, version: str) -> tuple[Any, Any, Any]:
        """The children of ``prediction_seconds``, ``prediction_requests`` and
        ``predictions`` a scored request counts in, bound once per model, variant and
        version."""
        key = (model, variant, version)
        children = self._prediction_children.get(key)
        if children is None:
            if len(self._prediction_children) >= 4096:
                self._prediction_children.clear()
            children = (
                self.prediction_seconds.labels(model, variant),
                self.prediction_requests.labels(model, variant),
                self.predictions.labels(model, variant, version),
            )
            self._prediction_children[key] = children
        return children


@lru_cache(maxsize=4096)
def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, remembered: the hot path asks for the same few children
    on every request, and ``labels()`` validates and locks each time."""
    return metric.labels(*labels)
