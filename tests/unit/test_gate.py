"""The registration gate: `beat: champion` is strict, so an identical retrain is not promoted."""

from __future__ import annotations

import pytest

from mlwp.registry import Comparison, gate

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("metric", ["roc_auc", "rmse"])
def test_a_tie_with_the_champion_does_not_pass(metric: str) -> None:
    tie = Comparison({metric: 0.8}, {metric: 0.8}, "3")
    decision = gate(tie, metric, beat_champion=True)
    assert not decision.passed
    assert "does not beat champion v3" in decision.summary


def test_better_by_more_than_the_margin_passes_and_by_less_fails() -> None:
    assert gate(Comparison({"roc_auc": 0.83}, {"roc_auc": 0.8}), "roc_auc", beat_champion=True,
                margin=0.02).passed  # fmt: skip
    assert not gate(Comparison({"roc_auc": 0.81}, {"roc_auc": 0.8}), "roc_auc",
                    beat_champion=True, margin=0.02).passed  # fmt: skip
    # lower is better for rmse
    assert gate(Comparison({"rmse": 1.0}, {"rmse": 1.5}), "rmse", beat_champion=True).passed
    assert not gate(Comparison({"rmse": 1.5}, {"rmse": 1.0}), "rmse", beat_champion=True).passed


def test_a_negative_margin_lets_a_slightly_worse_model_pass_when_allowed() -> None:
    slightly_worse = Comparison({"roc_auc": 0.795}, {"roc_auc": 0.8})
    assert gate(slightly_worse, "roc_auc", beat_champion=True, margin=-0.01).passed
