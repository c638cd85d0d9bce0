"""The statistics of the monitor: traffic mismatch, metric intervals, sequential comparisons.

Everything here is plain numpy/scipy on arrays, vectorised where a simulation needs it, so the
tests run thousands of simulated experiments in seconds through the very functions the
monitor calls (``tests/unit/test_monitoring_stats.py``). The methods, and what they assume:

- **Sample-ratio mismatch** (:func:`srm_check`): Pearson's chi-square goodness-of-fit test of
  the observed counts per variant against the configured traffic split; a mismatch is
  ``p < 0.001`` (the threshold used by Microsoft's ExP and most A/B platforms, low because the
  check runs on every look and a false alarm stops an analysis). Units must be independent:
  the monitor counts sticky routing keys (or requests without one), not rows of a request.
- **Metric intervals**: proportions (accuracy, positive rate) get Wilson score intervals
  (:func:`wilson_interval`; good coverage down to small n and near 0 or 1); means of per-row
  losses (log loss, Brier, absolute error) get normal (CLT) intervals; RMSE is the square root
  of the MSE interval's ends; ROC AUC gets DeLong's asymptotic variance (:func:`auc_delong`,
  computed with the midrank algorithm of Sun & Xu 2014), no bootstrap.
- **Always-valid comparison** (:func:`msprt`, :func:`sequential_compare`): the mixture
  sequential probability ratio test (mSPRT) with a normal mixing distribution N(0, tau^2) over
  the difference of means, as in Johari, Koomen, Pekelis & Walsh, "Always Valid Inference:
  Continuous Monitoring of A/B Tests", Operations Research 70(3), 2022. For an estimate
  ``d ~ N(theta, V)`` the mixture likelihood ratio is
  ``L = sqrt(V / (V + tau^2)) * exp(d^2 tau^2 / (2 V (V + tau^2)))``; ``1/L`` is an
  always-valid p-value (Ville's inequality: under theta = 0 the chance that ``L`` *ever*
  exceeds ``1/alpha`` is at most alpha), so the result may be read every day, and acted upon
  the first day it is significant, without inflating the false-positive rate. The matching
  confidence sequence is ``d +- sqrt(V (V + tau^2) / tau^2 * (log((V + tau^2) / V) - 2 log
  alpha))``. V is estimated from the data (plug-in variances), which makes the guarantee
  asymptotic (Waudby-Smith et al., "Time-uniform central limit theory and asymptotic
  confidence sequences", 2021); a minimum number of labelled rows per arm guards small n.
- **Shadow** (:func:`paired_compare`): the same mSPRT on per-row differences of the shadow's
  and the served model's loss on the same requests (same ``inference_id``/``row``), so the
  request-to-request variance cancels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Array = np.ndarray[Any, Any]

SRM_ALPHA = 0.001
DEFAULT_ALPHA = 0.05
DEFAULT_CONFIDENCE = 0.95
# Below this many labelled rows per arm the normal approximation behind the plug-in
# variance is not trusted and the comparison says "no_difference_yet".
DEFAULT_MIN_SAMPLES = 100
# Default mixing scale: an effect of a tenth of the per-row standard deviation (a "small"
# standardised effect), the size of lift a model change usually brings.
DEFAULT_STANDARDISED_EFFECT = 0.1

Decision = Literal["challenger_better", "challenger_worse", "no_difference_yet"]


class StatsError(ValueError):
    """The data or a parameter cannot be analysed as asked; the message says which."""


# --- sample-ratio mismatch -----------------------------------------------------------------


@dataclass(frozen=True)
class SrmResult:
    """The outcome of a sample-ratio-mismatch check."""

    observed: dict[str, int]
    expected_share: dict[str, float]
    statistic: float
    p_value: float
    alpha: float
    mismatch: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def srm_p_values(counts: Array, shares: Array) -> Array:
    """Chi-square goodness-of-fit p-values of ``counts`` (..., k) against ``shares`` (k,)."""
    from scipy import stats

    counts = np.asarray(counts, dtype=float)
    shares = np.asarray(shares, dtype=float)
    total = counts.sum(axis=-1, keepdims=True)
    expected = total * shares / shares.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = np.where(expected > 0, (counts - expected) ** 2 / expected, 0.0).sum(axis=-1)
    dof = max(int(np.count_nonzero(shares)) - 1, 1)
    return np.asarray(stats.chi2.sf(statistic, dof))


def srm_check(
    counts: Mapping[str, int], split: Mapping[str, float], *, alpha: float = SRM_ALPHA
) -> SrmResult:
    """Check observed counts per variant against the configured split (percent or shares).

    Variants in ``split`` with no count observed count 0; a count for a variant the split
    gives no traffic is a mismatch by itself (it should not exist).
    """
    if not split or sum(split.values()) <= 0:
        raise StatsError(f"traffic split {dict(split)!r} has no positive share")
    variants = sorted(set(split) | set(counts))
    observed = np.array([int(counts.get(v, 0)) for v in variants], dtype=float)
    shares = np.array([float(split.get(v, 0.0)) for v in variants])
    total_share = shares.sum()
    expected_share = {v: float(s / total_share) for v, s in zip(variants, shares, strict=True)}
    unexpected = any(observed[i] > 0 and shares[i] == 0 for i in range(len(variants)))
    if observed.sum() == 0:
        return SrmResult({v: 0 for v in variants}, expected_share, 0.0, 1.0, alpha, mismatch=False)
    from scipy import stats

    keep = shares > 0
    expected = observed[keep].sum() * shares[keep] / shares[keep].sum()
    statistic = float(((observed[keep] - expected) ** 2 / expected).sum())
    dof = max(int(keep.sum()) - 1, 1)
    p_value = 0.0 if unexpected else float(stats.chi2.sf(statistic, dof))
    return SrmResult(
        {v: int(c) for v, c in zip(variants, observed, strict=True)},
        expected_share,
        statistic,
        p_value,
        alpha,
        mismatch=bool(p_value < alpha),
    )


# --- estimates with confidence intervals ---------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A metric's value on ``n`` rows with its confidence interval and how it was made."""

    value: float
    low: float
    high: float
    n: int
    method: str
    confidence: float = DEFAULT_CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }


def _z(confidence: float) -> float:
    from scipy import stats

    if not 0 < confidence < 1:
        raise StatsError(f"confidence must be between 0 and 1, got {confidence!r}")
    return float(stats.norm.ppf(0.5 + confidence / 2))


def wilson_interval(
    successes: Array | int, n: Array | int, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[Array, Array]:
    """Wilson score interval for a proportion; vectorised over ``successes`` and ``n``."""
    z = _z(confidence)
    k = np.asarray(successes, dtype=float)
    m = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k / m
        denom = 1 + z**2 / m
        centre = (p + z**2 / (2 * m)) / denom
        half = z * np.sqrt(p * (1 - p) / m + z**2 / (4 * m**2)) / denom
    low = np.where(m > 0, np.clip(centre - half, 0, 1), np.nan)
    high = np.where(m > 0, np.clip(centre + half, 0, 1), np.nan)
    return low, high


def proportion(successes: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> Estimate:
    """A proportion with its Wilson interval."""
    low, high = wilson_interval(successes, n, confidence)
    value = successes / n if n else math.nan
    return Estimate(value, float(low), float(high), int(n), "wilson", confidence)


def mean_estimate(values: Array, confidence: float = DEFAULT_CONFIDENCE) -> Estimate:
    """A mean with its normal (CLT) interval."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "normal", confidence)
    mean = float(x.mean())
    if n < 2:
        return Estimate(mean, math.nan, math.nan, n, "normal", confidence)
    half = _z(confidence) * float(x.std(ddof=1)) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, "normal", confidence)


def _midrank(x: Array) -> Array:
    from scipy import stats

    return np.asarray(stats.rankdata(x, method="average"), dtype=float)


def auc_delong(labels: Array, scores: Array, confidence: float = DEFAULT_CONFIDENCE) -> Estimate:
    """ROC AUC with DeLong's variance (DeLong, DeLong & Clarke-Pearson 1988; Sun & Xu 2014).

    ``labels`` are 0/1; both classes must be present, otherwise the AUC is undefined (NaN).
    """
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    ok = np.isfinite(y) & np.isfinite(s)
    y, s = y[ok], s[ok]
    positives, negatives = s[y == 1], s[y == 0]
    m, n = positives.size, negatives.size
    if m == 0 or n == 0:
        return Estimate(math.nan, math.nan, math.nan, int(y.size), "delong", confidence)
    tz = _midrank(np.concatenate([positives, negatives]))
    tx, ty = _midrank(positives), _midrank(negatives)
    auc = float((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
    v10 = (tz[:m] - tx) / n
    v01 = 1 - (tz[m:] - ty) / m
    var = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    half = _z(confidence) * math.sqrt(max(float(var), 0.0))
    return Estimate(
        auc, max(auc - half, 0.0), min(auc + half, 1.0), int(m + n), "delong", confidence
    )


# --- per-row metrics -----------------------------------------------------------------------

# name -> higher is better
ROW_METRICS: dict[str, bool] = {
    "accuracy": True,
    "log_loss": False,
    "brier": False,
    "absolute_error": False,
    "squared_error": False,
}


def row_metric(
    name: str, labels: Array, predictions: Array, probabilities: Array | None = None
) -> Array:
    """The per-row value of a metric whose mean is the model's score (NaN where undefined)."""
    y = np.asarray(labels, dtype=float)
    if name == "accuracy":
        pred = np.asarray(predictions, dtype=float)
        return np.where(np.isfinite(pred) & np.isfinite(y), (pred == y).astype(float), np.nan)
    if name in ("log_loss", "brier"):
        if probabilities is None:
            raise StatsError(f"metric {name!r} needs probabilities; the model gave none")
        p = np.asarray(probabilities, dtype=float)
        if name == "brier":
            return np.asarray((p - y) ** 2)
        p = np.clip(p, 1e-15, 1 - 1e-15)
        return np.asarray(-(y * np.log(p) + (1 - y) * np.log(1 - p)))
    if name == "absolute_error":
        return np.asarray(np.abs(np.asarray(predictions, dtype=float) - y))
    if name == "squared_error":
        return np.asarray((np.asarray(predictions, dtype=float) - y) ** 2)
    raise StatsError(f"unknown metric {name!r}; known: {', '.join(ROW_METRICS)}")


def is_classification(labels: Array, predictions: Array | None = None) -> bool:
    """Whether labels look like class indices (small non-negative integers) and, when
    ``predictions`` are given, the model predicted whole numbers too.

    Labels alone cannot tell a count from a class: a regression of whole outcomes (tickets
    per customer, 0-20) was taken for a classifier, its accuracy (a float prediction
    exactly equal to the count) near 0 for every version, compared as if it meant something.
    A classifier's predictions are class indices; a regression's are not whole numbers.
    """
    y = np.asarray(labels, dtype=float)
    y = y[np.isfinite(y)]
    if predictions is not None:
        pred = np.asarray(predictions, dtype=float)
        pred = pred[np.isfinite(pred)]
        if not np.all(pred == np.round(pred)):
            return False
    return (
        bool(y.size)
        and bool(np.all(y == np.round(y)))
        and bool(np.all(y >= 0))
        and (np.unique(y).size <= 20)
    )


def model_metrics(
    labels: Array,
    predictions: Array,
    probabilities: Array | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Estimate]:
    """The model's metrics on labelled rows, each with its confidence interval."""
    y = np.asarray(labels, dtype=float)
    pred = np.asarray(predictions, dtype=float)
    out: dict[str, Estimate] = {}
    if is_classification(y, pred):
        correct = row_metric("accuracy", y, pred)
        correct = correct[np.isfinite(correct)]
        out["accuracy"] = proportion(int(correct.sum()), int(correct.size), confidence)
        binary = set(np.unique(y[np.isfinite(y)]).tolist()) <= {0.0, 1.0}
        if binary:
            out["label_rate"] = proportion(
                int((y == 1).sum()), int(np.isfinite(y).sum()), confidence
            )
            if probabilities is not None and np.isfinite(np.asarray(probabilities, float)).any():
                p = np.asarray(probabilities, dtype=float)
                keep = np.isfinite(p) & np.isfinite(y)
                out["roc_auc"] = auc_delong(y[keep], p[keep], confidence)
                out["log_loss"] = mean_estimate(
                    row_metric("log_loss", y[keep], pred[keep], p[keep]), confidence
                )
                out["brier"] = mean_estimate(
                    row_metric("brier", y[keep], pred[keep], p[keep]), confidence
                )
    else:
        out["mae"] = mean_estimate(row_metric("absolute_error", y, pred), confidence)
        mse = mean_estimate(row_metric("squared_error", y, pred), confidence)
        out["rmse"] = Estimate(
            math.sqrt(mse.value) if mse.n else math.nan,
            math.sqrt(max(mse.low, 0.0)) if mse.n > 1 else math.nan,
            math.sqrt(mse.high) if mse.n > 1 else math.nan,
            mse.n,
            "normal (sqrt of the MSE interval)",
            confidence,
        )
        out["mean_error"] = mean_estimate(pred - y, confidence)
    return out


# --- always-valid sequential comparison ----------------------------------------------------


def msprt(
    difference: Array | float, variance: Array | float, tau: Array | float, alpha: float
) -> tuple[Array, Array, Array]:
    """Normal-mixture SPRT at one look: (likelihood ratio, always-valid p, CS half-width).

    ``difference`` estimates theta with ``variance`` V; ``tau`` is the mixing scale. All are
    broadcast, so one call evaluates many looks of many simulated experiments.
    """
    d = np.asarray(difference, dtype=float)
    v = np.asarray(variance, dtype=float)
    t2 = np.asarray(tau, dtype=float) ** 2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_lr = 0.5 * np.log(v / (v + t2)) + d**2 * t2 / (2 * v * (v + t2))
        p_value = np.minimum(1.0, np.exp(-log_lr))
        half = np.sqrt(v * (v + t2) / t2 * (np.log((v + t2) / v) - 2 * math.log(alpha)))
    valid = np.isfinite(log_lr) & (v > 0)
    return (
        np.where(valid, np.exp(np.minimum(log_lr, 700.0)), 1.0),
        np.where(valid, p_value, 1.0),
        np.where(valid, half, np.inf),
    )


@dataclass(frozen=True)
class Comparison:
    """Challenger (or shadow) against the reference, on one per-row metric."""

    metric: str
    higher_is_better: bool
    reference: float
    candidate: float
    difference: float  # candidate - reference, in the metric's units
    low: float  # always-valid confidence sequence for the difference
    high: float
    p_value: float  # always-valid
    e_value: float  # the mixture likelihood ratio
    alpha: float
    tau: float
    n_reference: int
    n_candidate: int
    decision: Decision
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }


def _decide(
    difference: float, p_value: float, alpha: float, higher_is_better: bool, enough: bool
) -> Decision:
    if not enough or not p_value < alpha:
        return "no_difference_yet"
    better = difference > 0 if higher_is_better else difference < 0
    return "challenger_better" if better else "challenger_worse"


def _tau(pooled_sd: float, effect: float | None) -> float:
    if effect is not None:
        if not effect > 0:
            raise StatsError(f"effect must be a positive number, got {effect!r}")
        return float(effect)
    return max(DEFAULT_STANDARDISED_EFFECT * pooled_sd, 1e-12)


def compare_summaries(  # noqa: PLR0917 - two arms of three summaries each, read as a pair
    mean_a: Array | float,
    var_a: Array | float,
    n_a: Array | float,
    mean_b: Array | float,
    var_b: Array | float,
    n_b: Array | float,
    *,
    alpha: float = DEFAULT_ALPHA,
    effect: float | None = None,
) -> tuple[Array, Array, Array, Array, Array]:
    """The mSPRT of arm b against arm a from per-arm summaries; vectorised over looks/runs.

    ``var_*`` are the per-row sample variances (ddof=1). Returns (difference b - a,
    always-valid p-value, likelihood ratio, confidence-sequence half-width, tau).
    """
    ma, va, na = (np.asarray(x, dtype=float) for x in (mean_a, var_a, n_a))
    mb, vb, nb = (np.asarray(x, dtype=float) for x in (mean_b, var_b, n_b))
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = va / na + vb / nb
        pooled_sd = np.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
    if effect is not None:
        if not effect > 0:
            raise StatsError(f"effect must be a positive number, got {effect!r}")
        tau = np.full_like(variance, float(effect))
    else:
        tau = np.maximum(DEFAULT_STANDARDISED_EFFECT * pooled_sd, 1e-12)
    diff = mb - ma
    lr, p, half = msprt(diff, variance, tau, alpha)
    return diff, p, lr, half, tau


def sequential_compare(
    reference: Sequence[float] | Array,
    candidate: Sequence[float] | Array,
    *,
    metric: str,
    alpha: float = DEFAULT_ALPHA,
    effect: float | None = None,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> Comparison:
    """Compare two independent arms' per-row metric values with the mSPRT (two-sided).

    ``reference``/``candidate`` hold every labelled row since the experiment began (the
    guarantee holds for the growing sample, read at any time; a sliding window breaks it).
    ``effect`` is the mixing scale tau in metric units (the size of lift worth finding);
    by default a tenth of the pooled per-row standard deviation.
    """
    if metric not in ROW_METRICS:
        raise StatsError(f"unknown metric {metric!r}; known: {', '.join(ROW_METRICS)}")
    a = np.asarray(reference, dtype=float)
    b = np.asarray(candidate, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    na, nb = int(a.size), int(b.size)
    mean_a = float(a.mean()) if na else math.nan
    mean_b = float(b.mean()) if nb else math.nan
    higher = ROW_METRICS[metric]
    if na < 2 or nb < 2:
        return Comparison(
            metric,
            higher,
            mean_a,
            mean_b,
            mean_b - mean_a,
            -math.inf,
            math.inf,
            1.0,
            1.0,
            alpha,
            math.nan,
            na,
            nb,
            "no_difference_yet",
            "msprt",
        )
    diff, p, lr, half, tau = (
        float(x)
        for x in compare_summaries(
            mean_a, a.var(ddof=1), na, mean_b, b.var(ddof=1), nb, alpha=alpha, effect=effect
        )
    )
    enough = min(na, nb) >= min_samples
    return Comparison(
        metric,
        higher,
        mean_a,
        mean_b,
        diff,
        diff - half,
        diff + half,
        p,
        lr,
        alpha,
        tau,
        na,
        nb,
        _decide(diff, p, alpha, higher, enough),
        "msprt",
    )


def paired_compare(
    reference: Sequence[float] | Array,
    candidate: Sequence[float] | Array,
    *,
    metric: str,
    alpha: float = DEFAULT_ALPHA,
    effect: float | None = None,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> Comparison:
    """Compare per-row metric values of two models on the *same* rows (shadow vs served).

    Row i of ``candidate`` and of ``reference`` are the same request row; the mSPRT runs on
    the per-row differences.
    """
    if metric not in ROW_METRICS:
        raise StatsError(f"unknown metric {metric!r}; known: {', '.join(ROW_METRICS)}")
    a = np.asarray(reference, dtype=float)
    b = np.asarray(candidate, dtype=float)
    if a.shape != b.shape:
        raise StatsError(f"paired samples differ in length: {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    higher = ROW_METRICS[metric]
    d = b - a
    mean_a = float(a.mean()) if n else math.nan
    mean_b = float(b.mean()) if n else math.nan
    if n < 2:
        return Comparison(
            metric,
            higher,
            mean_a,
            mean_b,
            mean_b - mean_a,
            -math.inf,
            math.inf,
            1.0,
            1.0,
            alpha,
            math.nan,
            n,
            n,
            "no_difference_yet",
            "paired msprt",
        )
    sd = float(d.std(ddof=1))
    var = sd**2 / n
    tau = _tau(float(np.concatenate([a, b]).std(ddof=1)), effect)
    diff = float(d.mean())
    if var == 0:
        # identical outputs on every row (or a constant difference): nothing left to chance
        p = 1.0 if diff == 0 else 0.0
        lr, half = (1.0 if diff == 0 else math.inf), 0.0
    else:
        lr, p, half = (float(x) for x in msprt(diff, var, tau, alpha))
    return Comparison(
        metric,
        higher,
        mean_a,
        mean_b,
        diff,
        diff - half,
        diff + half,
        p,
        lr,
        alpha,
        tau,
        n,
        n,
        _decide(diff, p, alpha, higher, n >= min_samples),
        "paired msprt",
    )
