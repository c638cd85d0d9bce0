"""The monitor's statistics, tested by simulation (issue #14): every figure docs/monitoring.md
states is asserted here, through the same functions the monitor calls, vectorised so that
thousands of simulated experiments take a second or two.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlwp.monitoring import stats
from mlwp.monitoring.stats import StatsError

pytestmark = pytest.mark.unit

RUNS = 2000
ALPHA = 0.05


def _simulate_daily_looks(
    rng: np.random.Generator,
    p_champion: float,
    p_challenger: float,
    *,
    days: int,
    per_day_champion: int,
    per_day_challenger: int,
    runs: int = RUNS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``runs`` experiments on a 0/1 metric, read once a day on all data so far.

    Returns (significant at each look (runs, days), champion n per look, challenger n per look);
    with a real lift, "significant" means significant in the lift's direction.
    """
    k_a = rng.binomial(per_day_champion, p_champion, (runs, days)).cumsum(axis=1)
    k_b = rng.binomial(per_day_challenger, p_challenger, (runs, days)).cumsum(axis=1)
    n_a = np.arange(1, days + 1) * per_day_champion
    n_b = np.arange(1, days + 1) * per_day_challenger
    m_a, m_b = k_a / n_a, k_b / n_b
    v_a = m_a * (1 - m_a) * n_a / (n_a - 1)  # sample variance (ddof=1) of 0/1 rows
    v_b = m_b * (1 - m_b) * n_b / (n_b - 1)
    d, p, _, _, _ = stats.compare_summaries(m_a, v_a, n_a, m_b, v_b, n_b, alpha=ALPHA)
    enough = np.minimum(n_a, n_b) >= stats.DEFAULT_MIN_SAMPLES
    # a real lift counts only when found in its direction; an A/A error in either
    direction = (d > 0) if p_challenger > p_champion else np.ones_like(d, dtype=bool)
    return (p < ALPHA) & enough & direction, n_a, n_b


@pytest.mark.parametrize(
    ("per_day_champion", "per_day_challenger"), [(200, 200), (900, 100)], ids=["50-50", "90-10"]
)
def test_aa_false_positive_rate_under_daily_peeking(
    per_day_champion: int, per_day_challenger: int
) -> None:
    """A/A: 2,000 experiments read every day for 30 days; at most 5 % are ever significant."""
    rng = np.random.default_rng(14)
    significant, _, _ = _simulate_daily_looks(
        rng,
        0.8,
        0.8,
        days=30,
        per_day_champion=per_day_champion,
        per_day_challenger=per_day_challenger,
    )
    ever = significant.any(axis=1).mean()
    assert ever <= ALPHA, f"A/A false-positive rate {ever:.3f} under daily peeking"
    # The same looks with a fixed-horizon z-test would be wrong far more often: the simulation
    # has the power to see peeking's harm, so the bound above is not vacuous.
    k = rng.binomial(per_day_champion, 0.8, (RUNS, 30)).cumsum(axis=1)
    j = rng.binomial(per_day_challenger, 0.8, (RUNS, 30)).cumsum(axis=1)
    n_a = np.arange(1, 31) * per_day_champion
    n_b = np.arange(1, 31) * per_day_challenger
    m_a, m_b = k / n_a, j / n_b
    z = (m_b - m_a) / np.sqrt(m_a * (1 - m_a) / n_a + m_b * (1 - m_b) / n_b)
    naive = (np.abs(z) > 1.96).any(axis=1).mean()
    assert naive > 0.15, naive


def test_lift_detected_at_the_stated_sample_size() -> None:
    """Accuracy 0.80 -> 0.83 on a 50/50 split: >= 80 % of runs significant by 5,000 labelled
    rows per arm and about 90 % by 6,000 (docs/monitoring.md), in the right direction."""
    rng = np.random.default_rng(15)
    significant, n_a, _ = _simulate_daily_looks(
        rng, 0.80, 0.83, days=24, per_day_champion=250, per_day_challenger=250
    )
    by = {int(n): significant[:, : i + 1].any(axis=1).mean() for i, n in enumerate(n_a)}
    assert by[5000] >= 0.80, by
    assert by[6000] >= 0.88, by


def test_lift_detected_on_a_90_10_split() -> None:
    """0.80 -> 0.83 with the challenger on 10 %: >= 85 % by 3,000 challenger rows."""
    rng = np.random.default_rng(16)
    significant, _, n_b = _simulate_daily_looks(
        rng, 0.80, 0.83, days=60, per_day_champion=450, per_day_challenger=50
    )
    day = int(np.flatnonzero(n_b == 3000)[0])
    assert significant[:, : day + 1].any(axis=1).mean() >= 0.85


def test_sequential_compare_matches_the_vectorised_core_and_decides() -> None:
    rng = np.random.default_rng(17)
    champion = (rng.random(6000) < 0.80).astype(float)
    challenger = (rng.random(6000) < 0.85).astype(float)
    result = stats.sequential_compare(champion, challenger, metric="accuracy")
    assert result.decision == "challenger_better"
    assert result.p_value < ALPHA and result.e_value > 1 / ALPHA
    assert result.low > 0 and result.low < result.difference < result.high
    m_a, m_b = champion.mean(), challenger.mean()
    _, p, _, _, _ = stats.compare_summaries(
        m_a, champion.var(ddof=1), 6000, m_b, challenger.var(ddof=1), 6000
    )
    assert math.isclose(result.p_value, float(p), rel_tol=1e-12)
    # lower-is-better metrics flip the direction
    worse = stats.sequential_compare(1 - champion, 1 - challenger, metric="log_loss")
    assert worse.decision == "challenger_better"
    worse = stats.sequential_compare(champion, challenger, metric="brier")
    assert worse.decision == "challenger_worse"
    # too few rows: never a decision
    few = stats.sequential_compare(champion[:50], challenger[:50] + 1, metric="accuracy")
    assert few.decision == "no_difference_yet"
    with pytest.raises(StatsError, match="unknown metric 'auc'"):
        stats.sequential_compare(champion, challenger, metric="auc")


def test_confidence_sequence_covers_the_true_difference_at_every_look() -> None:
    """The always-valid interval holds the true lift at all 30 looks in >= 95 % of runs."""
    rng = np.random.default_rng(18)
    k_a = rng.binomial(200, 0.80, (RUNS, 30)).cumsum(axis=1)
    k_b = rng.binomial(200, 0.83, (RUNS, 30)).cumsum(axis=1)
    n = np.arange(1, 31) * 200
    m_a, m_b = k_a / n, k_b / n
    d, _, _, half, _ = stats.compare_summaries(m_a, m_a * (1 - m_a), n, m_b, m_b * (1 - m_b), n)
    covered = (np.abs(d - 0.03) <= half).all(axis=1).mean()
    assert covered >= 0.95


def test_shadow_paired_comparison() -> None:
    """Shadow vs served on the same rows: a 2-point better shadow is found, an identical one
    is not, and the pairing needs far fewer rows than two independent arms would."""
    rng = np.random.default_rng(19)
    n = 3000
    served = (rng.random(n) < 0.80).astype(float)
    # the shadow agrees with the served model except on a few rows: it fixes 15 % of the
    # served model's errors and breaks 1 % of its right answers (+2.2 points)
    u = rng.random(n)
    shadow = np.where((served == 0) & (u < 0.15), 1.0, served)
    shadow = np.where((served == 1) & (u < 0.01), 0.0, shadow)
    paired = stats.paired_compare(served, shadow, metric="accuracy")
    assert paired.decision == "challenger_better", paired
    assert paired.method == "paired msprt"
    unpaired = stats.sequential_compare(served, shadow, metric="accuracy")
    assert unpaired.p_value > paired.p_value
    same = stats.paired_compare(served, served, metric="accuracy")
    assert same.decision == "no_difference_yet" and same.p_value == 1.0
    with pytest.raises(StatsError, match="differ in length"):
        stats.paired_compare(served, shadow[:-1], metric="accuracy")


def test_shadow_paired_aa_false_positive_rate() -> None:
    """Paired A/A under daily peeking: two models equally good on different rows."""
    rng = np.random.default_rng(20)
    days, per_day = 30, 200
    # per-row difference of two equally accurate models' 0/1 correctness: -1, 0 or +1
    d = rng.choice([-1.0, 0.0, 1.0], p=[0.05, 0.9, 0.05], size=(1000, days * per_day))
    n = np.arange(1, days + 1) * per_day
    cs = d.cumsum(axis=1)[:, n - 1]
    cs2 = (d**2).cumsum(axis=1)[:, n - 1]
    mean = cs / n
    var = (cs2 - n * mean**2) / (n - 1)
    tau = stats.DEFAULT_STANDARDISED_EFFECT * 0.4  # sd of 0/1 correctness around 0.8
    _, p, _ = stats.msprt(mean, var / n, tau, ALPHA)
    assert (p < ALPHA).any(axis=1).mean() <= ALPHA


def test_srm_catches_two_percent_imbalance_at_the_stated_size() -> None:
    """2 % of traffic on the wrong arm: 50/50 delivering 52/48 is caught in >= 95 % of runs at
    20,000 requests, 90/10 delivering 92/8 at 5,000; a correct split alarms ~0.1 % of runs."""
    rng = np.random.default_rng(21)
    p = stats.srm_p_values(rng.multinomial(20_000, [0.52, 0.48], RUNS), np.array([50, 50]))
    assert (p < stats.SRM_ALPHA).mean() >= 0.95
    p = stats.srm_p_values(rng.multinomial(5_000, [0.92, 0.08], RUNS), np.array([90, 10]))
    assert (p < stats.SRM_ALPHA).mean() >= 0.90
    p = stats.srm_p_values(rng.multinomial(20_000, [0.9, 0.1], 20_000), np.array([90, 10]))
    assert (p < stats.SRM_ALPHA).mean() <= 0.002


def test_srm_check_document() -> None:
    result = stats.srm_check(
        {"champion": 9000, "challenger": 1000}, {"champion": 90, "challenger": 10}
    )
    assert not result.mismatch and result.p_value == pytest.approx(1.0)
    assert result.expected_share == {"challenger": 0.1, "champion": 0.9}
    result = stats.srm_check(
        {"champion": 9200, "challenger": 800}, {"champion": 90, "challenger": 10}
    )
    assert result.mismatch and result.p_value < 1e-6
    # traffic to a variant the split does not name is a mismatch by itself
    result = stats.srm_check({"champion": 10, "other": 1}, {"champion": 100})
    assert result.mismatch and result.p_value == 0.0
    assert stats.srm_check({}, {"champion": 90, "challenger": 10}).mismatch is False
    with pytest.raises(StatsError, match="no positive share"):
        stats.srm_check({"champion": 1}, {"champion": 0})


def test_wilson_interval_coverage() -> None:
    """Wilson's 95 % interval covers the true proportion in ~95 % of samples, even near 0."""
    rng = np.random.default_rng(22)
    for p_true, n in ((0.5, 30), (0.05, 100), (0.8, 1000)):
        k = rng.binomial(n, p_true, 20_000)
        low, high = stats.wilson_interval(k, n)
        coverage = ((low <= p_true) & (p_true <= high)).mean()
        assert 0.93 <= coverage <= 0.98, (p_true, n, coverage)
    assert stats.proportion(0, 0).to_dict()["value"] is None


def test_auc_delong_matches_mann_whitney_and_covers() -> None:
    from scipy.stats import mannwhitneyu, norm

    rng = np.random.default_rng(23)
    y = (rng.random(2000) < 0.3).astype(float)
    score = rng.normal(y * 1.0, 1.0)
    score = np.round(score, 1)  # ties exercise the midranks
    est = stats.auc_delong(y, score)
    u = mannwhitneyu(score[y == 1], score[y == 0]).statistic
    assert est.value == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()), abs=1e-12)
    assert est.low < est.value < est.high and est.method == "delong"
    # coverage: the true AUC of N(1,1) vs N(0,1) is Phi(1/sqrt 2)
    truth = norm.cdf(1 / math.sqrt(2))
    hits = 0
    for _ in range(300):
        y = (rng.random(400) < 0.3).astype(float)
        e = stats.auc_delong(y, rng.normal(y, 1.0))
        hits += e.low <= truth <= e.high
    assert hits / 300 >= 0.92
    assert math.isnan(stats.auc_delong(np.ones(5), np.arange(5.0)).value)


def test_a_regression_of_whole_outcomes_is_not_taken_for_a_classifier() -> None:
    """Labels alone decided: a regression of counts (whole numbers 0-20) was measured and
    compared on accuracy, a float prediction exactly equal to the count, near 0 for every
    version. Its predictions, not whole numbers, say it is a regression."""
    from mlwp.monitoring.report import default_metric

    rng = np.random.default_rng(25)
    counts = rng.poisson(3, 400).astype(float)
    predicted = counts + rng.normal(0, 1, 400)
    assert stats.is_classification(counts)  # what the labels alone say
    assert not stats.is_classification(counts, predicted)
    assert set(stats.model_metrics(counts, predicted)) == {"mae", "rmse", "mean_error"}
    assert default_metric(counts, predicted) == "squared_error"
    classes = (rng.random(400) < 0.3).astype(float)
    assert default_metric(classes, np.where(rng.random(400) < 0.9, classes, 1 - classes)) == (
        "accuracy"
    )


def test_model_metrics_classification_and_regression() -> None:
    rng = np.random.default_rng(24)
    y = (rng.random(500) < 0.4).astype(float)
    proba = np.clip(y * 0.6 + rng.random(500) * 0.4, 0, 1)
    pred = (proba >= 0.5).astype(float)
    m = stats.model_metrics(y, pred, proba)
    assert set(m) == {"accuracy", "label_rate", "roc_auc", "log_loss", "brier"}
    assert m["accuracy"].method == "wilson" and m["accuracy"].n == 500
    assert m["accuracy"].low <= m["accuracy"].value <= m["accuracy"].high
    target = rng.normal(size=300) * 10
    r = stats.model_metrics(target, target + rng.normal(size=300))
    assert set(r) == {"mae", "rmse", "mean_error"}
    assert 0.8 < r["rmse"].value < 1.2 and r["rmse"].low < r["rmse"].value < r["rmse"].high
    assert stats.is_classification(y) and not stats.is_classification(target)
