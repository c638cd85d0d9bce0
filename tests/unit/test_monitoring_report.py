"""The MonitorResult of simulated traffic read back from real Parquet parts (issue #14):
traffic and SRM, label coverage, metrics with intervals, the challenger decision, the shadow
pair, only current versions counted, and the document's MLflow metrics and HTML."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from monitoring_data import simulate, utc, write

from mlwp.monitoring import report
from mlwp.monitoring.capture import join_labels, read_capture, read_labels

pytestmark = pytest.mark.unit

MODEL = "churn"


def _records(rng: np.random.Generator, n: int) -> list[dict]:
    return [
        {"tenure": float(t), "contract": c}
        for t, c in zip(rng.gamma(2, 12, n), rng.choice(["month", "year"], n), strict=True)
    ]


def _joined(tmp_path: Path, **kwargs: object):
    rng = np.random.default_rng(kwargs.pop("seed", 40))
    capture, labels = simulate(
        rng,
        model=MODEL,
        records=_records,
        start=utc(2026, 11, 1),
        span=timedelta(days=20),
        **kwargs,
    )
    root = tmp_path.as_uri()
    write(root, MODEL, capture, labels)
    return join_labels(read_capture(root, MODEL), read_labels(root, MODEL))


def test_better_challenger_found_and_document_complete(tmp_path: Path) -> None:
    versions = {"champion": "1", "challenger": "2", "shadow": "3"}
    joined = _joined(
        tmp_path,
        requests=8000,
        split={"champion": 50, "challenger": 50},
        versions=versions,
        accuracy={"champion": 0.78, "challenger": 0.86},
        shadow_accuracy=0.78,
        label_share=0.8,
    )
    result = report.analyse(joined, split={"champion": 50, "challenger": 50}, versions=versions)
    assert result["metric"] == "accuracy"
    assert result["comparison"]["decision"] == "challenger_better"
    assert result["comparison"]["p_value"] < 0.05 and result["comparison"]["low"] > 0
    assert result["srm"]["mismatch"] is False
    assert set(result["traffic"]) == {"champion", "challenger"}
    assert 0.45 < result["traffic"]["challenger"]["share"] < 0.55
    coverage = result["label_coverage"]["champion"]
    assert 0.75 < coverage["coverage"] < 0.85 and coverage["delay_s_p50"] > 0
    accuracy = result["metrics"]["challenger"]["accuracy"]
    assert accuracy["low"] < 0.86 < accuracy["high"] and accuracy["method"] == "wilson"
    assert {"roc_auc", "log_loss", "brier", "label_rate"} <= set(result["metrics"]["champion"])
    # the shadow (as good as the champion) is paired with the served rows of its requests
    shadow = result["shadow"]
    assert shadow["paired_rows"] == shadow["rows"] == 8000
    assert shadow["comparison"]["method"] == "paired msprt"
    assert 0 < shadow["agreement"]["value"] < 1
    json.dumps(result)
    metrics = report.flat_metrics(result)
    assert metrics["challenger.accuracy"] == pytest.approx(accuracy["value"])
    assert "comparison.p_value" in metrics and "srm.p_value" in metrics
    page = report.to_html(result, title="Monitoring of churn")
    assert "challenger better on accuracy" in page and "<table>" in page


def test_worse_challenger_srm_and_old_versions(tmp_path: Path) -> None:
    # delivered 60/40 while the split says 90/10: a mismatch; challenger clearly worse
    joined = _joined(
        tmp_path,
        requests=5000,
        split={"champion": 60, "challenger": 40},
        versions={"champion": "1", "challenger": "2"},
        accuracy={"champion": 0.85, "challenger": 0.75},
    )
    result = report.analyse(
        joined,
        split={"champion": 90, "challenger": 10},
        versions={"champion": "1", "challenger": "2"},
    )
    assert result["srm"]["mismatch"] is True and result["srm"]["p_value"] < 1e-6
    assert result["comparison"]["decision"] == "challenger_worse"
    found = report.alerts(result)
    assert any("sample-ratio mismatch" in a for a in found)
    assert any("challenger worse" in a for a in found)
    # a new challenger version starts a new experiment: the old version's rows are ignored
    fresh = report.analyse(
        joined,
        split={"champion": 90, "challenger": 10},
        versions={"champion": "1", "challenger": "7"},
    )
    assert fresh["comparison"]["decision"] == "no_difference_yet"
    assert "challenger" in fresh["comparison"]["reason"]
    assert "challenger" not in fresh["metrics"]


def test_no_labels_and_empty_capture(tmp_path: Path) -> None:
    joined = _joined(
        tmp_path,
        requests=300,
        split={"champion": 100},
        versions={"champion": "1"},
        accuracy={"champion": 0.8},
        label_share=0.0,
    )
    result = report.analyse(joined, split={"champion": 100}, versions={"champion": "1"})
    assert result["labelled_rows"] == 0 and result["metrics"] == {}
    assert result["comparison"]["decision"] == "no_difference_yet"
    # it said "no labelled rows of the champion and challenger", as if one were served
    assert result["comparison"]["reason"] == (
        "no challenger to compare: the model has no challenger alias"
    )
    assert result["label_coverage"]["champion"]["coverage"] == 0.0
    empty = report.analyse(joined.iloc[:0], split={"champion": 100}, versions={})
    assert empty["rows"] == 0 and empty["srm"]["mismatch"] is False
    json.dumps(empty)


def test_srm_counts_sticky_routing_keys_not_requests(tmp_path: Path) -> None:
    """With sticky routing, one busy key sends all its requests to one arm: the SRM check
    counts keys (the randomised units), so a heavy user does not look like a mismatch."""
    import pandas as pd

    joined = _joined(
        tmp_path,
        requests=2000,
        split={"champion": 50, "challenger": 50},
        versions={"champion": "1", "challenger": "2"},
        accuracy={"champion": 0.8, "challenger": 0.8},
    )
    joined["routing_key"] = pd.Series([f"user-{i}" for i in range(len(joined))], dtype="string")
    # one busy user on the challenger: 800 more requests
    busy = joined[joined["variant"] == "challenger"].head(1)
    extra = pd.concat([busy] * 800, ignore_index=True)
    extra["inference_id"] = [f"busy-{i}" for i in range(800)]
    both = pd.concat([joined, extra], ignore_index=True)
    result = report.analyse(
        both,
        split={"champion": 50, "challenger": 50},
        versions={"champion": "1", "challenger": "2"},
    )
    assert result["traffic"]["challenger"]["requests"] > result["traffic"]["challenger"]["units"]
    assert result["srm"]["mismatch"] is False
    by_request = report.analyse(
        both.assign(routing_key=pd.NA),
        split={"champion": 50, "challenger": 50},
        versions={"champion": "1", "challenger": "2"},
    )
    assert by_request["srm"]["mismatch"] is True


def test_a_drift_alert_names_the_variant_whose_columns_drifted() -> None:
    # Before: the summary's columns are the champion's, so a challenger-only drift was
    # announced as "drift in  (share 0%)" (found by tests/e2e/test_monitor_workflow.py).
    calm = {"tenure": {"drifted": False}, "contract": {"drifted": False}}
    drift = {
        "drifted": True,
        "columns": calm,
        "share": 0.0,
        "variants": {
            "champion": {"version": "3", "columns": calm, "share": 0.0},
            "challenger": {
                "version": "4",
                "columns": {"tenure": {"drifted": True}, "contract": {"drifted": False}},
                "share": 0.5,
            },
        },
    }
    assert report.alerts({"drift": drift}) == ["drift in challenger v4: tenure (share 50%)"]


def test_spool_parts_compaction_refused_are_an_alert() -> None:
    """A capture part the monitor could not read (cut short, corrupt: compaction set it
    aside) is rows it did not see: said, not silent."""
    refused = {"part": "/c/x.spool", "reason": "/c/x.spool: not a capture spool part: too short"}
    compaction = {"spooled": 1, "parts_refused": [refused, refused]}
    assert report.alerts({"capture_compaction": compaction}) == [
        "2 capture spool part(s) unreadable, skipped by the monitor "
        "(first: /c/x.spool: not a capture spool part: too short)"
    ]
    assert report.alerts({"capture_compaction": {"parts_refused": []}}) == []
    assert report.alerts({"capture_compaction": {"error": "capture compaction failed"}}) == []


def test_the_rollouts_approval_request_shows_the_analysis(tmp_path: Path) -> None:
    """The monitor's result as the person deciding a promotion reads it (operators.rollout)."""
    from operators.rollout import monitor_markdown

    versions = {"champion": "3", "challenger": "4"}
    joined = _joined(
        tmp_path,
        requests=4000,
        split={"champion": 90, "challenger": 10},
        versions=versions,
        accuracy={"champion": 0.80, "challenger": 0.80},
    )
    result = report.analyse(joined, split={"champion": 90, "challenger": 10}, versions=versions)
    result.update(versions=versions, mlflow_run_id="abc123", time="2026-11-21T00:00:00+00:00")
    text = monitor_markdown(result)
    assert "MLflow monitoring run: [abc123](" in text and "/runs/abc123)" in text
    assert "| | champion v3 | challenger v4 |" in text
    accuracy = result["metrics"]["challenger"]["accuracy"]
    row = next(line for line in text.splitlines() if line.startswith("| accuracy"))
    assert row.startswith("| accuracy (95% interval) |"), row
    assert f"{accuracy['value']:.4f} [{accuracy['low']:.4f}, {accuracy['high']:.4f}]" in row
    assert "- Sample-ratio mismatch: no (chi-square p = " in text
    assert f"**{result['comparison']['decision']}**" in text
    assert "None for these two versions yet" in monitor_markdown(None)


def _column(score: float, drifted: bool) -> dict:
    return {"method": "ks", "threshold": 0.05, "score": score, "drifted": drifted}


def test_the_page_shows_each_variants_drift_and_names_its_evidently_report() -> None:
    """The readable report of the churn example's monitor (mlwp run churn.monitor on a fresh
    platform) said "Drift (details: drift/report.html)", a file no monitoring run has (the
    reports are drift/<variant>/report.html), and showed the champion's columns only: a
    challenger whose inputs drifted raised the alarm while every row of the page's table said
    drifted False. Its metrics heading said 95 % whatever the task's `confidence`."""
    estimate = {"value": 0.8, "low": 0.7, "high": 0.9, "n": 200, "method": "wilson"}
    result = {
        "versions": {"champion": "1", "challenger": "2"},
        "metrics": {"champion": {"accuracy": {**estimate, "confidence": 0.9}}},
        "drift": {
            "drifted": True,
            "prediction_drifted": False,
            "columns": {"tenure": _column(0.4, False)},
            "share": 0.0,
            "skipped": None,
            "variants": {
                "champion": {
                    "version": "1",
                    "columns": {"tenure": _column(0.4, False)},
                    "share": 0.0,
                    "drifted": False,
                },
                "challenger": {
                    "version": "2",
                    "columns": {"tenure": _column(0.001, True)},
                    "share": 1.0,
                    "drifted": True,
                },
            },
        },
    }
    page = report.to_html(result, title="Monitoring of churn")
    assert "drift/report.html" not in page
    assert "drift/champion/report.html" in page and "drift/challenger/report.html" in page
    challenger = page[page.index("challenger v2: drifted share") :]
    assert "<td>tenure</td><td>ks</td><td>0.05</td><td>0.001</td><td>True</td>" in challenger
    assert "drift in challenger v2: tenure (share 100%)" in page
    assert "(90 % intervals)" in page and "95 %" not in page
    # a variant without enough rows says why, and names no report it does not have
    result["drift"]["variants"]["challenger"] = {
        "version": "2",
        "skipped": "12 captured rows in the window, fewer than min_rows (100)",
        "columns": {},
    }
    page = report.to_html(result, title="Monitoring of churn")
    assert "Not tested: 12 captured rows" in page and "drift/challenger/report.html" not in page
