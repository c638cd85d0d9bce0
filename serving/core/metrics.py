"""Prometheus metrics of the serving service, in a registry of their own per application."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Every metric the service exports (``GET /metrics``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "mlwp_serving_requests",
            "HTTP requests answered.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "mlwp_serving_request_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "mlwp_serving_predictions",
            "Rows scored, by model, variant and version.",
            ["model", "variant", "version"],
            registry=r,
        )
        self.prediction_requests = Counter(
            "mlwp_serving_prediction_requests",
            "Prediction requests, by model and variant.",
            ["model", "variant"],
            registry=r,
        )
        self.prediction_seconds = Histogram(
            "mlwp_serving_prediction_seconds",
            "Scoring latency by model and variant.",
            ["model", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shadow_predictions = Counter(
            "mlwp_serving_shadow_predictions",
            "Rows scored by the shadow variant.",
            ["model", "version"],
            registry=r,
        )
        self.shadow_disagreements = Counter(
            "mlwp_serving_shadow_disagreements",
            "Rows where the shadow's prediction differed from the served one.",
            ["model", "version"],
            registry=r,
        )
        self.shadow_errors = Counter(
            "mlwp_serving_shadow_errors",
            "Shadow scorings that failed.",
            ["model"],
            registry=r,
        )
        self.cache = Counter(
            "mlwp_serving_cache",
            "Prediction cache lookups by result (hit, miss, error).",
            ["result"],
            registry=r,
        )
        self.rate_limited = Counter(
            "mlwp_serving_rate_limited",
            "Requests refused by a rate limit.",
            registry=r,
        )
        self.redis_errors = Counter(
            "mlwp_serving_redis_errors",
            "Redis operations that failed (then bypassed).",
            ["operation"],
            registry=r,
        )
        self.load_failures = Counter(
            "mlwp_serving_model_load_failures",
            "Model versions that failed to load.",
            ["model", "alias"],
            registry=r,
        )
        self.load_failed = Gauge(
            "mlwp_serving_model_load_failed",
            "1 while the latest load of the alias's version failed (the previous one serves).",
            ["model", "alias"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "mlwp_serving_model_load_seconds",
            "Time to download, load and warm a version.",
            ["model"],
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.model_info = Gauge(
            "mlwp_serving_model_info",
            "1 for each version serving under an alias.",
            ["model", "alias", "version"],
            registry=r,
        )
        self.registry_errors = Counter(
            "mlwp_serving_registry_errors",
            "Registry syncs that failed (MLflow unreachable).",
            registry=r,
        )
        self.predictions_logged = Counter(
            "mlwp_serving_predictions_logged",
            "Sampled predictions written to the log.",
            ["sink"],
            registry=r,
        )
