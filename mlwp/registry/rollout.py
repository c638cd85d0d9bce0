"""Guarded rollout: move traffic to the challenger in steps, only while guardrails hold.

Airflow-free (``operators/rollout.py`` runs it as a deferrable task). The pieces:

- :class:`Guardrails` and :class:`RolloutPolicy`: what a definition's ``rollout`` task says;
- where the numbers come from: serving's own Prometheus metrics at ``GET /metrics``
  (:func:`scrape_serving`, two scrapes subtracted give a step's window), or a Prometheus
  server when ``MLWP_PROMETHEUS_URL`` is set (:func:`query_prometheus`, which sees every
  serving replica); and the monitor task's latest ``MonitorResult`` for the two versions
  (:func:`read_monitor_result`, from MLflow);
- :func:`evaluate`: the guardrails' verdict on one window (breaches and evidence);
- :func:`next_action`: the state machine's step (``rollback``, ``advance`` or ``wait``).

Every change it leads to goes through :mod:`mlwp.registry.model_changes`, so it is in the model's
history. docs/monitoring.md ("Guarded rollout and rollback") is the user's view.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from mlwp.errors import MlwpError

REQUESTS = "mlwp_serving_prediction_requests"
ERRORS = "mlwp_serving_prediction_errors"
LATENCY = "mlwp_serving_prediction_seconds"
VARIANTS = ("champion", "challenger")
# Where the monitor task points each analysed version (mlwp.monitoring.monitor).
MONITORING_RUN_TAG = "mlwp.monitoring_run"
MONITOR_RESULT_ARTIFACT = "monitor/result.json"


class RolloutError(MlwpError):
    """The rollout cannot go on as asked (bad policy, unreadable metrics)."""

    code = "rollout_error"


@dataclass(frozen=True)
class Guardrails:
    """What must hold for the challenger while it gets traffic (docs/monitoring.md)."""

    max_error_rate: float | None = 0.01
    max_p99_latency_ms: float | None = None
    min_requests: int = 100
    drift: bool = True
    labels: bool = True


@dataclass(frozen=True)
class RolloutPolicy:
    """The steps (challenger percent, increasing; 100 promotes) and their timing."""

    steps: tuple[int, ...]
    step_seconds: float = 3600.0
    check_seconds: float = 300.0
    guardrails: Guardrails = field(default_factory=Guardrails)

    def __post_init__(self) -> None:
        if not self.steps:
            raise RolloutError("a rollout needs at least one step")
        for before, after in itertools.pairwise(self.steps):
            if after <= before:
                raise RolloutError(f"steps must increase, got {list(self.steps)}")
        if not all(0 < s <= 100 for s in self.steps):
            raise RolloutError(f"steps are percents in 1-100, got {list(self.steps)}")

    def split(self, index: int) -> dict[str, int]:
        """The traffic split of step ``index``."""
        percent = self.steps[index]
        return {"champion": 100 - percent, "challenger": percent}


# ------------------------------------------------------------------------------- metrics


@dataclass
class VariantWindow:
    """One variant's prediction requests in a window: answered, failed, latency buckets."""

    requests: float = 0.0
    errors: float = 0.0
    # cumulative bucket counts by upper bound (seconds), as Prometheus exposes them
    buckets: dict[str, float] = field(default_factory=dict)
    p99_ms: float | None = None

    @property
    def attempts(self) -> float:
        return self.requests + self.errors

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.attempts if self.attempts else None

    def quantile_ms(self, q: float = 0.99) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile (conservative), in ms."""
        if self.p99_ms is not None:
            return self.p99_ms
        ordered = sorted(((float(le), n) for le, n in self.buckets.items()), key=lambda x: x[0])
        total = ordered[-1][1] if ordered else 0.0
        if total <= 0:
            return None
        for bound, count in ordered:
            if count >= q * total:
                return bound * 1000 if math.isfinite(bound) else math.inf
        return math.inf

    def to_dict(self) -> dict[str, Any]:
        p99 = self.quantile_ms()
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "p99_ms": None if p99 is None or not math.isfinite(p99) else p99,
            "p99_over_ms": (
                max(float(le) for le in self.buckets if math.isfinite(float(le))) * 1000
                if p99 is not None and not math.isfinite(p99)
                else None
            ),
        }


def parse_serving_metrics(text: str, model: str) -> dict[str, dict[str, Any]]:
    """Serving's counters of ``model`` per variant from the Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, Any]] = {
        v: {"requests": 0.0, "errors": 0.0, "buckets": {}} for v in VARIANTS
    }
    for family in text_string_to_metric_families(text):
        if family.name not in (REQUESTS, ERRORS, LATENCY):
            continue
        for sample in family.samples:
            labels = sample.labels
            variant = labels.get("variant")
            if labels.get("model") != model or variant not in out:
                continue
            if family.name == REQUESTS and sample.name.endswith("_total"):
                out[variant]["requests"] += sample.value
            elif family.name == ERRORS and sample.name.endswith("_total"):
                out[variant]["errors"] += sample.value
            elif family.name == LATENCY and sample.name.endswith("_bucket"):
                out[variant]["buckets"][labels["le"]] = sample.value
    return out


def scrape_serving(url: str, model: str, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """``GET <url>/metrics`` of one serving process, parsed (see :func:`parse_serving_metrics`)."""
    import httpx

    try:
        response = httpx.get(f"{url.rstrip('/')}/metrics", timeout=timeout)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise RolloutError(f"cannot read serving metrics at {url}/metrics: {exc}") from exc
    return parse_serving_metrics(response.text, model)


def window(
    now: Mapping[str, Mapping[str, Any]], start: Mapping[str, Mapping[str, Any]]
) -> dict[str, VariantWindow]:
    """What happened between two scrapes, per variant (a counter reset counts from zero)."""

    def delta(new: float, old: float) -> float:
        return new - old if new >= old else new

    out: dict[str, VariantWindow] = {}
    for variant in VARIANTS:
        new = now.get(variant) or {}
        old = start.get(variant) or {}
        buckets_new: Mapping[str, float] = new.get("buckets") or {}
        buckets_old: Mapping[str, float] = old.get("buckets") or {}
        out[variant] = VariantWindow(
            requests=delta(new.get("requests", 0.0), old.get("requests", 0.0)),
            errors=delta(new.get("errors", 0.0), old.get("errors", 0.0)),
            buckets={
                le: delta(count, buckets_old.get(le, 0.0)) for le, count in buckets_new.items()
            },
        )
    return out


def prometheus_queries(model: str, seconds: float) -> dict[str, str]:
    """The PromQL a rollout asks a Prometheus server, over the last ``seconds``."""
    span = f"{max(math.ceil(seconds), 1)}s"
    selector = f'{{model="{model}"}}'
    return {
        "requests": f"sum by (variant) (increase({REQUESTS}_total{selector}[{span}]))",
        "errors": f"sum by (variant) (increase({ERRORS}_total{selector}[{span}]))",
        "p99": (
            f"histogram_quantile(0.99, sum by (variant, le) "
            f"(rate({LATENCY}_bucket{selector}[{span}])))"
        ),
    }


def query_prometheus(
    url: str, model: str, seconds: float, timeout: float = 10.0
) -> dict[str, VariantWindow]:
    """The window of the last ``seconds`` from a Prometheus server (every serving replica)."""
    import httpx

    out = {variant: VariantWindow() for variant in VARIANTS}
    for name, query in prometheus_queries(model, seconds).items():
        try:
            response = httpx.get(
                f"{url.rstrip('/')}/api/v1/query", params={"query": query}, timeout=timeout
            )
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise RolloutError(f"Prometheus at {url}: query {query!r} failed: {exc}") from exc
        if body.get("status") != "success":
            raise RolloutError(f"Prometheus at {url}: query {query!r}: {body.get('error')}")
        for item in body["data"]["result"]:
            variant = item["metric"].get("variant")
            if variant not in out:
                continue
            value = float(item["value"][1])
            if name == "p99":
                out[variant].p99_ms = value * 1000 if math.isfinite(value) else None
            else:
                setattr(out[variant], name, value)
    return out


# ------------------------------------------------------------------------- monitor result


def read_monitor_result(model: str, champion: str, challenger: str) -> dict[str, Any] | None:
    """The newest MonitorResult of the monitor task about these two versions, or None.

    The monitor task tags each analysed version with ``mlwp.monitoring_run`` (its MLflow run)
    and logs the result as ``monitor/result.json`` there; the run's tags name both versions,
    so a result about another pair is not taken.
    """
    import json
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    from mlwp import registry

    client = registry.client()
    try:
        version = client.get_model_version(model, challenger)
        run_id = (version.tags or {}).get(MONITORING_RUN_TAG)
        if not run_id:
            return None
        run = client.get_run(run_id)
    except MlflowException:
        return None
    tags = run.data.tags
    if (
        tags.get("mlwp.champion_version") != champion
        or tags.get("mlwp.challenger_version") != challenger
    ):
        return None
    with tempfile.TemporaryDirectory(prefix="mlwp-rollout-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=MONITOR_RESULT_ARTIFACT, dst_path=tmp
            )
        except (MlflowException, OSError):
            return None
        with open(path, encoding="utf-8") as handle:
            result: dict[str, Any] = json.load(handle)
    result.setdefault("mlflow_run_id", run_id)
    return result


# --------------------------------------------------------------------------- the verdict


@dataclass
class Verdict:
    """The guardrails on one window: what broke (empty: they hold) and what was seen."""

    breaches: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def holds(self) -> bool:
        return not self.breaches

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    guardrails: Guardrails,
    observed: Mapping[str, VariantWindow],
    monitor: Mapping[str, Any] | None = None,
) -> Verdict:
    """Judge the challenger on one window of serving numbers and the monitor's result.

    Error rate and p99 latency are judged once the challenger has ``min_requests`` attempts
    in the window (fewer say little: one failure in three requests is not a 33 % error rate);
    prediction drift and the labelled comparison whenever the monitor has a result for the
    two versions (the comparison says ``challenger_worse`` only once enough labels exist).
    """
    verdict = Verdict(
        evidence={"serving": {v: w.to_dict() for v, w in observed.items()}},
    )
    challenger = observed.get("challenger") or VariantWindow()
    if challenger.attempts < guardrails.min_requests:
        verdict.pending.append(
            f"challenger answered {challenger.attempts:g} of the {guardrails.min_requests} "
            "requests needed to judge its error rate and latency"
        )
    else:
        rate = challenger.error_rate or 0.0
        if guardrails.max_error_rate is not None and rate > guardrails.max_error_rate:
            verdict.breaches.append(
                f"challenger error rate {rate:.2%} > {guardrails.max_error_rate:.2%} "
                f"({challenger.errors:g} of {challenger.attempts:g} requests)"
            )
        p99 = challenger.quantile_ms()
        if (
            guardrails.max_p99_latency_ms is not None
            and p99 is not None
            and p99 > guardrails.max_p99_latency_ms
        ):
            shown = f"{p99:.1f} ms" if math.isfinite(p99) else "beyond the largest bucket"
            verdict.breaches.append(
                f"challenger p99 latency {shown} > {guardrails.max_p99_latency_ms:g} ms"
            )
    if monitor is None:
        if guardrails.drift or guardrails.labels:
            verdict.pending.append("no monitor result for these versions yet")
        return verdict
    verdict.evidence["monitor"] = _monitor_summary(monitor)
    if guardrails.drift and _challenger_drifted(monitor.get("drift") or {}):
        verdict.breaches.append("the challenger's predictions drifted from its baseline")
    if guardrails.labels:
        comparison = monitor.get("comparison") or {}
        if comparison.get("decision") == "challenger_worse":
            verdict.breaches.append(
                f"labelled outcomes: challenger significantly worse on "
                f"{comparison.get('metric', 'the metric')}"
            )
    return verdict


def _challenger_drifted(drift: Mapping[str, Any]) -> bool | None:
    """The challenger's prediction drift (the whole result's when not per variant)."""
    mine = (drift.get("variants") or {}).get("challenger") or {}
    value = mine.get("prediction_drifted", drift.get("prediction_drifted"))
    return None if value is None else bool(value)


def _monitor_summary(monitor: Mapping[str, Any]) -> dict[str, Any]:
    comparison = monitor.get("comparison") or {}
    drift = monitor.get("drift") or {}
    return {
        "time": monitor.get("time"),
        "mlflow_run_id": monitor.get("mlflow_run_id"),
        "decision": comparison.get("decision"),
        "metric": comparison.get("metric"),
        "p_value": comparison.get("p_value"),
        "drifted": drift.get("drifted"),
        "prediction_drifted": _challenger_drifted(drift),
        "label_coverage": monitor.get("label_coverage"),
    }


def next_action(
    policy: RolloutPolicy, verdict: Verdict, elapsed: float, observed: Mapping[str, VariantWindow]
) -> str:
    """``rollback`` on any breach; ``advance`` once the step lasted ``step_seconds`` and the
    challenger answered ``min_requests`` in it; else ``wait``."""
    if verdict.breaches:
        return "rollback"
    challenger = observed.get("challenger") or VariantWindow()
    if elapsed >= policy.step_seconds and challenger.attempts >= policy.guardrails.min_requests:
        return "advance"
    return "wait"


def elapsed_seconds(started: str, now: datetime) -> float:
    return (now - datetime.fromisoformat(started)).total_seconds()


def policy_from(
    steps: Sequence[int], step_seconds: float, check_seconds: float, guardrails: Mapping[str, Any]
) -> RolloutPolicy:
    """A policy from an operator's (JSON) arguments."""
    known = set(Guardrails.__dataclass_fields__)
    unknown = set(guardrails) - known
    if unknown:
        raise RolloutError(f"unknown guardrail(s) {sorted(unknown)}; known: {sorted(known)}")
    return RolloutPolicy(
        tuple(int(s) for s in steps),
        float(step_seconds),
        float(check_seconds),
        Guardrails(**guardrails),
    )
