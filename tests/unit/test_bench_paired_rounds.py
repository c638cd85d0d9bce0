"""The capture benchmark's summary of paired rounds (bench/serving/run.py,
``compare_rounds``): what the ratios printed and stored are. The benchmark itself never runs
in CI."""

from __future__ import annotations

import math
from typing import Any

import pytest
from bench_scripts import load

pytestmark = pytest.mark.unit


def _script() -> Any:
    return load("serving/run.py")


def test_each_server_against_the_first_a_candidate_against_100_and_all_against_both_0() -> None:
    rounds = {
        "0 %": [1.0, 1.0, 1.0, 1.0],
        "100 %": [1.06, 1.04, 1.05, 1.05],
        "0 % again": [0.96, 1.04, 0.98, 1.02],
        "100 % before": [1.08, 1.05, 1.07, 1.06],
    }
    together = _script().compare_rounds(rounds)

    assert set(together) == {
        "100 %",
        "0 % again",
        "100 % before",
        "100 % before / 100 %",
        "100 % / both 0 %",
        "100 % before / both 0 %",
    }
    landed = together["100 %"]
    assert landed["rounds"] == rounds["100 %"]  # kept, for pooling runs later
    geometric = math.exp(sum(math.log(v) for v in rounds["100 %"]) / 4)
    assert landed["ratio"] == pytest.approx(geometric)
    assert landed["low"] < landed["ratio"] < landed["high"]
    # the candidate against the landed server, round by round: 1.08/1.06, 1.05/1.04, ...
    paired = together["100 % before / 100 %"]["rounds"]
    assert paired == pytest.approx([1.08 / 1.06, 1.05 / 1.04, 1.07 / 1.05, 1.06 / 1.05])
    # against the geometric mean of the two 0 % servers: the first's ratios are ones
    both = together["100 % / both 0 %"]["rounds"]
    assert both == pytest.approx(
        [a / math.sqrt(c) for a, c in zip(rounds["100 %"], rounds["0 % again"], strict=True)]
    )


def test_without_a_control_or_a_candidate_only_the_ratios_to_the_first() -> None:
    together = _script().compare_rounds({"0 %": [1.0, 1.0, 1.0], "100 %": [1.02, 1.05, 1.03]})
    assert set(together) == {"100 %"}
