"""Drift against the training baseline with Evidently (issue #14): false-alarm rates of a
no-drift replay, an injected shift caught in the one column it touches, the baseline of a
real model, and captured rows read back as the baseline's columns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlwp.monitoring import drift
from mlwp.monitoring.drift import DriftError, DriftSettings
from mlwp.monitoring.stats import wilson_interval

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "fixtures" / "data" / "telco_churn_sample.csv"

COLUMNS = {
    "tenure": {"kind": "numerical", "dtype": "float"},
    "charges": {"kind": "numerical", "dtype": "float"},
    "calls": {"kind": "numerical", "dtype": "int"},
    "contract": {"kind": "categorical", "dtype": "str"},
    "paperless": {"kind": "categorical", "dtype": "bool"},
}


def _population(rng: np.random.Generator, n: int, *, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "tenure": rng.gamma(2.0, 12.0, n) + shift * 12.0 * np.sqrt(2.0),
            "charges": rng.normal(70.0, 30.0, n),
            "calls": rng.poisson(3.0, n),
            "contract": rng.choice(["month", "year", "two_year"], n, p=[0.5, 0.3, 0.2]),
            "paperless": rng.random(n) < 0.6,
        }
    )


@pytest.mark.parametrize(
    ("kind", "method", "threshold", "window"),
    [
        ("num", "ks", 0.05, 500),
        ("cat", "chisquare", 0.05, 500),
        ("num", None, None, 1000),  # Evidently's default above 1,000 reference rows: Wasserstein
        ("cat", None, None, 1000),  # and Jensen-Shannon, threshold 0.1
    ],
    ids=["ks", "chisquare", "default-numerical", "default-categorical"],
)
def test_no_drift_replay_alarms_at_no_more_than_the_configured_rate(
    kind: str, method: str | None, threshold: float | None, window: int
) -> None:
    """500 windows of the training population against a 5,000-row baseline, through the
    stat tests Evidently's ValueDrift runs: a p-value method at threshold t flags at most a
    share t (the configured rate, within sampling error: t is not below the rate's 99.9 %
    Wilson interval); the default distance methods flag under 1 % of 1,000-row windows.
    (500 windows per method keep this a few seconds; the docs give 2,000-window figures.)"""
    drift._evidently()
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    rng = np.random.default_rng(30)
    column_type = ColumnType.Numerical if kind == "num" else ColumnType.Categorical
    runs, alarms = 500, 0
    for _ in range(runs):
        # a fresh baseline each time: the rate is over training samples as well as windows
        if kind == "num":
            ref = pd.Series(rng.gamma(2.0, 12.0, 5000))
            cur = pd.Series(rng.gamma(2.0, 12.0, window))
        else:
            p = [0.5, 0.3, 0.2]
            ref = pd.Series(rng.choice(["month", "year", "two_year"], 5000, p=p))
            cur = pd.Series(rng.choice(["month", "year", "two_year"], window, p=p))
        test = get_stattest(ref, cur, column_type, method)
        alarms += bool(test(ref, cur, column_type, threshold).drifted)
    rate = alarms / runs
    if threshold is not None:
        low, _ = wilson_interval(alarms, runs, confidence=0.999)
        assert float(low) <= threshold, (
            f"{method}: {rate:.3f} false alarms at threshold {threshold}"
        )
    else:
        assert rate < 0.01, f"default method: {rate:.3f} false alarms"


def test_detect_drift_catches_a_shift_in_one_feature(tmp_path: Path) -> None:
    rng = np.random.default_rng(31)
    reference = _population(rng, 5000)
    same = drift.detect_drift(reference, _population(rng, 1500), COLUMNS)
    assert same.drifted is False and same.skipped is None
    assert set(same.columns) == set(COLUMNS)
    assert same.columns["tenure"]["method"] == "Wasserstein distance (normed)"
    assert same.columns["contract"]["method"] == "Jensen-Shannon distance"

    shifted = drift.detect_drift(reference, _population(rng, 1500, shift=0.5), COLUMNS)
    assert shifted.drifted is True and shifted.prediction_drifted is False
    assert drift.drifted_columns(shifted) == ["tenure"]
    assert shifted.share == pytest.approx(1 / 5)
    assert shifted.save_html(tmp_path / "drift.html")
    assert (tmp_path / "drift.html").stat().st_size > 10_000
    assert "tenure" in (shifted.evidently_json() or "")
    json.dumps(shifted.to_dict())  # JSON-able for XCom and MLflow

    # per-column method and threshold from the definition; drift_share raises the bar
    settings = DriftSettings(
        method="ks",
        threshold=0.01,
        columns={"contract": {"method": "chisquare"}},
        drift_share=0.4,
    )
    ks = drift.detect_drift(reference, _population(rng, 1500, shift=0.5), COLUMNS, settings)
    assert ks.columns["tenure"]["drifted"] and ks.columns["tenure"]["threshold"] == 0.01
    assert ks.columns["contract"]["method"] == "chisquare"
    assert ks.drifted is False  # 1 of 5 columns < 40 %


def test_detect_drift_refuses_and_skips() -> None:
    rng = np.random.default_rng(32)
    reference = _population(rng, 500)
    with pytest.raises(DriftError, match="unknown columns tenur"):
        drift.detect_drift(reference, reference, COLUMNS, DriftSettings(columns={"tenur": {}}))
    with pytest.raises(DriftError, match="'kss' of drift is not one of"):
        drift.detect_drift(reference, reference, COLUMNS, DriftSettings(method="kss"))
    with pytest.raises(DriftError, match="'ks' of column 'contract' does not apply to a categ"):
        settings = DriftSettings(columns={"contract": {"method": "ks"}})
        drift.detect_drift(reference, reference, COLUMNS, settings)
    few = drift.detect_drift(reference, reference.head(20), COLUMNS)
    assert few.drifted is False and few.skipped and "20 captured rows" in few.skipped


@pytest.fixture(scope="module")
def churn_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, pd.DataFrame]:
    import yaml

    from mlwp import model as mlwp_model
    from mlwp.data.transform import run_transform
    from mlwp.training import entrypoint
    from mlwp.training.local import prepare_workdir

    definition = yaml.safe_load((ROOT / "dags/projects/churn/workflow.yaml").read_text())
    steps = definition["workflows"]["train"]["tasks"]["features"]["steps"]
    result = run_transform(pd.read_csv(DATA), steps)
    workdir = tmp_path_factory.mktemp("train")
    environ = prepare_workdir(
        workdir,
        result.splits,
        result.preprocessing,
        {"target": "churn", "num_boost_round": 10, "max_depth": 3, "nthread": 1, "seed": 1},
    )
    entrypoint.run(environ)
    return mlwp_model.load(workdir / "model"), result.splits["train"]


def test_baseline_of_a_real_model_and_captured_rows(churn_model: tuple) -> None:
    model, train = churn_model
    sample, profile = drift.baseline_frame(model, train, rows=300)
    features = [f.name for f in model.features]
    assert list(sample.columns) == [*features, "prediction", "probability"]
    assert len(sample) == min(300, len(train)) and profile["rows"] == len(sample)
    assert profile["columns"]["prediction"] == {
        "kind": "categorical",
        "dtype": "float",
        "output": True,
    }
    assert set(sample["prediction"].unique()) <= {0.0, 1.0}
    assert sample["probability"].between(0, 1).all()
    json.dumps(profile)

    # captured rows: inputs as JSON text, outputs as columns (the capture contract)
    records = sample[features].head(150).to_dict(orient="records")
    capture = pd.DataFrame(
        {
            "inputs": [json.dumps(r, default=str) for r in records],
            "prediction": sample["prediction"].head(150),
            "probability": sample["probability"].head(150),
        }
    )
    current = drift.current_frame(capture, profile)
    assert list(current.columns) == list(profile["columns"])
    result = drift.detect_drift(sample, current, profile["columns"])
    assert result.skipped is None and not result.prediction_drifted
    assert set(result.columns) <= set(profile["columns"])
