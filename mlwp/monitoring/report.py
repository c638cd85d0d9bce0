"""The monitor's analysis of captured predictions: the ``MonitorResult`` document.

:func:`analyse` turns captured rows joined with their labels
(:func:`mlwp.monitoring.capture.join_labels`) into one JSON-able document, the contract that
rollout reads (``/work/notes/monitoring-contract.md``; docs/monitoring.md):

- ``versions``: alias -> version analysed (the registry's current aliases);
- ``traffic``: per served variant, requests, rows, observed and configured share;
- ``srm``: the sample-ratio-mismatch check of served requests against the split;
- ``label_coverage``: per variant, labelled share and label delay;
- ``metrics``: per variant, the model's metrics on labelled rows with confidence intervals;
- ``comparison``: challenger against champion, always valid (``decision`` is
  ``challenger_better``, ``challenger_worse`` or ``no_difference_yet``);
- ``shadow``: the shadow against the served model on the same requests (paired), and how
  often their predictions agree;
- ``drift`` (added by the monitor task): per column verdicts, ``drifted``,
  ``prediction_drifted``;
- ``alerts``: one sentence per finding worth a notification.

Only rows of the versions currently behind each alias count, so a new challenger starts a
new experiment. The units of traffic are distinct sticky routing keys, or requests (distinct
``inference_id``) without one; labelled rows are the units of the metrics.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from mlwp.monitoring import stats

if TYPE_CHECKING:
    import pandas as pd

SERVED_VARIANTS = ("champion", "challenger")
SHADOW = "shadow"
FORMAT = 1


def current_rows(joined: pd.DataFrame, versions: Mapping[str, str]) -> pd.DataFrame:
    """Rows of each variant produced by its current version (``versions``: alias -> version);
    a variant without a known version keeps the rows of its most recent version."""
    if joined.empty:
        return joined
    keep = np.zeros(len(joined), dtype=bool)
    variant = joined["variant"].astype("string")
    version = joined["version"].astype("string")
    for name in variant.dropna().unique().tolist():
        mine = (variant == name).fillna(False).to_numpy(dtype=bool)
        wanted = versions.get(name)
        if wanted is None:
            latest = joined.loc[mine].sort_values("time")["version"].iloc[-1]
            wanted = str(latest)
        keep |= mine & (version == str(wanted)).fillna(False).to_numpy(dtype=bool)
    return joined.loc[keep].reset_index(drop=True)


def default_metric(labels: Any, predictions: Any = None) -> str:
    """``accuracy`` for class labels (of a model predicting classes), ``squared_error`` for
    values."""
    return (
        "accuracy"
        if stats.is_classification(
            np.asarray(labels, dtype=float),
            None if predictions is None else np.asarray(predictions, dtype=float),
        )
        else "squared_error"
    )


def _values(frame: pd.DataFrame, metric: str) -> np.ndarray[Any, Any]:
    probability = frame["probability"].to_numpy(dtype=float, na_value=np.nan)
    return stats.row_metric(
        metric,
        frame["label"].to_numpy(dtype=float, na_value=np.nan),
        frame["prediction"].to_numpy(dtype=float, na_value=np.nan),
        probability if np.isfinite(probability).any() else None,
    )


def traffic(frame: pd.DataFrame, split: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Requests, rows and routing units per served variant, with observed and configured share.

    A routing *unit* is the sticky routing key when the request had one, else the request:
    with sticky routing every request of a key goes to the same variant, so requests of one
    key are not independent draws of the split, while distinct keys are. The shares (and the
    SRM check) are over units.
    """
    served = frame[frame["served"].fillna(True).astype(bool)] if len(frame) else frame
    units = _units(served)
    total = int(units.nunique()) if len(served) else 0
    out: dict[str, dict[str, Any]] = {}
    split_total = sum(split.values()) or 1
    names = set(split) | (set(served["variant"].dropna().astype(str)) if len(served) else set())
    for name in sorted(names):
        mask = (served["variant"] == name).fillna(False).to_numpy(dtype=bool) if len(served) else []
        mine = served[mask] if len(served) else served
        count = int(units[mask].nunique()) if len(mine) else 0
        out[name] = {
            "units": count,
            "requests": int(mine["inference_id"].nunique()) if len(mine) else 0,
            "rows": len(mine),
            "share": count / total if total else None,
            "expected_share": split.get(name, 0) / split_total,
            "versions": sorted(mine["version"].dropna().astype(str).unique().tolist())
            if len(mine)
            else [],
        }
    return out


def _units(served: pd.DataFrame) -> pd.Series:
    import pandas as pd

    if not len(served):
        return pd.Series([], dtype="string")
    request = "request:" + served["inference_id"].astype("string")
    if "routing_key" not in served.columns:
        return request
    key = "key:" + served["routing_key"].astype("string")
    return key.fillna(request)


def analyse(
    joined: pd.DataFrame,
    *,
    split: Mapping[str, float],
    versions: Mapping[str, str],
    metric: str | None = None,
    alpha: float = stats.DEFAULT_ALPHA,
    effect: float | None = None,
    min_samples: int = stats.DEFAULT_MIN_SAMPLES,
    confidence: float = stats.DEFAULT_CONFIDENCE,
    srm_since: datetime | None = None,
) -> dict[str, Any]:
    """The MonitorResult of ``joined`` (see the module doc); ``drift`` is left to the caller."""
    from mlwp.monitoring.capture import label_report

    rows = current_rows(joined, versions)
    labelled = rows[rows["label"].notna()] if len(rows) else rows
    if metric is None:
        metric = (
            default_metric(
                labelled["label"], labelled["prediction"].to_numpy(dtype=float, na_value=np.nan)
            )
            if len(labelled)
            else "accuracy"
        )
    if metric not in stats.ROW_METRICS:
        raise stats.StatsError(f"unknown metric {metric!r}; known: {', '.join(stats.ROW_METRICS)}")

    recent = rows if srm_since is None or not len(rows) else rows[rows["time"] >= srm_since]
    served_traffic = traffic(recent, split)
    srm = stats.srm_check({name: t["units"] for name, t in served_traffic.items()}, split).to_dict()
    srm["since"] = srm_since.isoformat() if srm_since else None

    metrics: dict[str, dict[str, Any]] = {}
    for name, group in labelled.groupby("variant", sort=True) if len(labelled) else []:
        probability = group["probability"].to_numpy(dtype=float, na_value=np.nan)
        estimates = stats.model_metrics(
            group["label"].to_numpy(dtype=float, na_value=np.nan),
            group["prediction"].to_numpy(dtype=float, na_value=np.nan),
            probability if np.isfinite(probability).any() else None,
            confidence,
        )
        metrics[str(name)] = {key: est.to_dict() for key, est in estimates.items()}

    comparison = _comparison(labelled, metric, alpha, effect, min_samples)
    if "challenger" not in versions and comparison.get("reason"):
        # "no labelled rows of the challenger" read as if one were served and unlabelled
        comparison["reason"] = "no challenger to compare: the model has no challenger alias"
    return {
        "format": FORMAT,
        "versions": dict(versions),
        "split": dict(split),
        "rows": len(rows),
        "labelled_rows": len(labelled),
        "metric": metric,
        "traffic": served_traffic,
        "srm": srm,
        "label_coverage": label_report(rows) if len(rows) else {},
        "metrics": metrics,
        "comparison": comparison,
        "shadow": _shadow(rows, metric, alpha, effect, min_samples, confidence),
    }


def _comparison(
    labelled: pd.DataFrame, metric: str, alpha: float, effect: float | None, min_samples: int
) -> dict[str, Any]:
    arms = {}
    for name in SERVED_VARIANTS:
        mine = labelled[labelled["variant"] == name] if len(labelled) else labelled
        if len(mine):
            served = mine["served"].fillna(True).astype(bool)
            arms[name] = _values(mine[served], metric)
    if "champion" not in arms or "challenger" not in arms:
        missing = [n for n in SERVED_VARIANTS if n not in arms]
        return {
            "decision": "no_difference_yet",
            "metric": metric,
            "reason": f"no labelled rows of the {' and '.join(missing)}",
            "p_value": None,
            "e_value": None,
        }
    result = stats.sequential_compare(
        arms["champion"],
        arms["challenger"],
        metric=metric,
        alpha=alpha,
        effect=effect,
        min_samples=min_samples,
    ).to_dict()
    if (
        result["decision"] == "no_difference_yet"
        and min(result["n_reference"], result["n_candidate"]) < min_samples
    ):
        result["reason"] = f"fewer than {min_samples} labelled rows in an arm"
    return result


def _shadow(  # noqa: PLR0917 - private, one caller
    rows: pd.DataFrame,
    metric: str,
    alpha: float,
    effect: float | None,
    min_samples: int,
    confidence: float,
) -> dict[str, Any] | None:
    if not len(rows) or not (rows["variant"] == SHADOW).any():
        return None
    shadow = rows[rows["variant"] == SHADOW]
    served = rows[rows["served"].fillna(True).astype(bool) & (rows["variant"] != SHADOW)]
    pairs = shadow.merge(
        served, on=["inference_id", "row"], suffixes=("_shadow", "_served"), how="inner"
    )
    out: dict[str, Any] = {"rows": len(shadow), "paired_rows": len(pairs)}
    if not len(pairs):
        out["comparison"] = {"decision": "no_difference_yet", "reason": "no served row pairs"}
        return out
    a = pairs["prediction_served"].to_numpy(dtype=float, na_value=np.nan)
    b = pairs["prediction_shadow"].to_numpy(dtype=float, na_value=np.nan)
    both = np.isfinite(a) & np.isfinite(b)
    out["agreement"] = stats.proportion(
        int((a[both] == b[both]).sum()), int(both.sum()), confidence
    ).to_dict()
    labelled = pairs[pairs["label_served"].notna()]
    if not len(labelled):
        out["comparison"] = {"decision": "no_difference_yet", "reason": "no labelled pairs"}
        return out

    def side(suffix: str) -> pd.DataFrame:
        frame = labelled[[f"{c}_{suffix}" for c in ("label", "prediction", "probability")]]
        return frame.set_axis(["label", "prediction", "probability"], axis=1)

    out["comparison"] = stats.paired_compare(
        _values(side("served"), metric),
        _values(side("shadow"), metric),
        metric=metric,
        alpha=alpha,
        effect=effect,
        min_samples=min_samples,
    ).to_dict()
    return out


def alerts(result: Mapping[str, Any]) -> list[str]:
    """One sentence per finding worth a notification."""
    found = []
    srm = result.get("srm") or {}
    if srm.get("mismatch"):
        observed = ", ".join(f"{k} {v}" for k, v in srm["observed"].items())
        found.append(
            f"sample-ratio mismatch: routing units {observed} do not fit the split "
            f"{result.get('split')} (p = {srm['p_value']:.2g}); the comparison is not to be "
            "trusted until the routing is fixed"
        )
    comparison = result.get("comparison") or {}
    if comparison.get("decision") in ("challenger_worse", "challenger_better"):
        found.append(
            f"{comparison['decision'].replace('_', ' ')} on {comparison['metric']}: "
            f"{comparison['candidate']:.4g} vs {comparison['reference']:.4g} (always-valid "
            f"p = {comparison['p_value']:.2g})"
        )
    drift = result.get("drift") or {}
    if drift.get("drifted"):
        # Per variant: the summary's own columns are the champion's, and it is often only
        # the challenger's inputs that drifted.
        variants = drift.get("variants") or {"": drift}
        where = []
        for variant, found_in in variants.items():
            columns = [n for n, c in (found_in.get("columns") or {}).items() if c.get("drifted")]
            if columns:
                name = f"{variant} v{found_in.get('version')}: " if variant else ""
                share = found_in.get("share", 0)
                where.append(f"{name}{', '.join(columns)} (share {share:.0%})")
        found.append(f"drift in {'; '.join(where)}")
    refused = (result.get("capture_compaction") or {}).get("parts_refused") or []
    if refused:  # rows lost to the monitor: a disk or storage problem worth a look
        found.append(
            f"{len(refused)} capture spool part(s) unreadable, skipped by the monitor "
            f"(first: {refused[0]['reason']})"
        )
    return found


# --------------------------------------------------------------------------- MLflow metrics


def flat_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a MonitorResult as MLflow metric names -> values (finite only)."""
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, int | float) and math.isfinite(value):
            out[name] = float(value)

    for variant, t in (result.get("traffic") or {}).items():
        put(f"traffic.{variant}.units", t.get("units"))
        put(f"traffic.{variant}.requests", t.get("requests"))
        put(f"traffic.{variant}.share", t.get("share"))
    srm = result.get("srm") or {}
    put("srm.p_value", srm.get("p_value"))
    put("srm.mismatch", srm.get("mismatch"))
    for variant, c in (result.get("label_coverage") or {}).items():
        put(f"labels.{variant}.coverage", c.get("coverage"))
        put(f"labels.{variant}.delay_s_p50", c.get("delay_s_p50"))
    for variant, metrics in (result.get("metrics") or {}).items():
        for name, est in metrics.items():
            put(f"{variant}.{name}", est.get("value"))
            put(f"{variant}.{name}.low", est.get("low"))
            put(f"{variant}.{name}.high", est.get("high"))
    comparison = result.get("comparison") or {}
    put("comparison.difference", comparison.get("difference"))
    put("comparison.p_value", comparison.get("p_value"))
    put("comparison.e_value", comparison.get("e_value"))
    shadow = result.get("shadow") or {}
    put("shadow.agreement", (shadow.get("agreement") or {}).get("value"))
    put("shadow.p_value", (shadow.get("comparison") or {}).get("p_value"))
    drift = result.get("drift") or {}
    put("drift.share", drift.get("share"))
    put("drift.drifted", drift.get("drifted"))
    for column, verdict in (drift.get("columns") or {}).items():
        put(f"drift.{column}.score", verdict.get("score"))
    return {_metric_name(k): v for k, v in out.items()}


def _metric_name(name: str) -> str:
    # MLflow metric names: alphanumerics, _ - . space / only
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


# --------------------------------------------------------------------------- HTML


def to_html(result: Mapping[str, Any], *, title: str) -> str:
    """A small self-contained HTML page of the result (the drift details are Evidently's)."""

    def e(value: Any) -> str:
        if isinstance(value, float):
            return html.escape(f"{value:.4g}")
        return html.escape("" if value is None else str(value))

    def table(headers: list[str], rows: list[list[Any]]) -> str:
        head = "".join(f"<th>{e(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    parts = [f"<h1>{e(title)}</h1>"]
    found = result.get("alerts") or alerts(result)
    parts.append(
        "<h2>Findings</h2>"
        + (
            "<ul>" + "".join(f"<li>{e(a)}</li>" for a in found) + "</ul>"
            if found
            else "<p>Nothing to report.</p>"
        )
    )
    parts.append(
        "<h2>Versions</h2>"
        + table(["alias", "version"], [[k, v] for k, v in (result.get("versions") or {}).items()])
    )
    srm = result.get("srm") or {}
    parts.append(
        "<h2>Traffic</h2>"
        + table(
            ["variant", "units", "requests", "share", "expected share", "versions"],
            [
                [
                    k,
                    t["units"],
                    t["requests"],
                    t["share"],
                    t["expected_share"],
                    ", ".join(t["versions"]),
                ]
                for k, t in (result.get("traffic") or {}).items()
            ],
        )
        + f"<p>Sample-ratio mismatch check: chi-square p = {e(srm.get('p_value'))}, "
        f"mismatch: {e(srm.get('mismatch'))} (alarm at p &lt; {e(srm.get('alpha'))}).</p>"
    )
    parts.append(
        "<h2>Labels</h2>"
        + table(
            ["variant", "rows", "labelled", "coverage", "delay p50 (s)", "delay p90 (s)"],
            [
                [k, c["rows"], c["labelled"], c["coverage"], c["delay_s_p50"], c["delay_s_p90"]]
                for k, c in (result.get("label_coverage") or {}).items()
            ],
        )
    )
    metric_rows = [
        [
            variant,
            name,
            est.get("value"),
            est.get("low"),
            est.get("high"),
            est.get("n"),
            est.get("method"),
        ]
        for variant, metrics in (result.get("metrics") or {}).items()
        for name, est in metrics.items()
    ]
    # the monitor's `confidence` (0.95 unless the definition says otherwise)
    levels = sorted(
        {
            est["confidence"]
            for metrics in (result.get("metrics") or {}).values()
            for est in metrics.values()
            if isinstance(est.get("confidence"), (int, float))
        }
    )
    level = " / ".join(f"{100 * c:g} %" for c in levels) or "95 %"
    parts.append(
        f"<h2>Metrics on labelled predictions ({e(level)} intervals)</h2>"
        + table(["variant", "metric", "value", "low", "high", "n", "interval"], metric_rows)
    )
    for heading, comparison in (
        ("Challenger vs champion (always valid, mSPRT)", result.get("comparison")),
        (
            "Shadow vs served (paired, same requests)",
            (result.get("shadow") or {}).get("comparison"),
        ),
    ):
        if comparison:
            parts.append(
                f"<h2>{e(heading)}</h2>"
                + table(["field", "value"], [[k, v] for k, v in comparison.items()])
            )
    # One table per served variant, each naming its own Evidently report: the champion's
    # columns alone (what the summary's `columns` holds) hid a challenger's drift, which
    # raises the alarm and the rollout's guardrail, and the page pointed at a
    # drift/report.html that no run has (they are drift/<variant>/report.html).
    drift = result.get("drift") or {}
    if drift:
        parts.append(
            f"<h2>Drift</h2><p>Alarm: {e(drift.get('drifted'))}; predictions drifted: "
            f"{e(drift.get('prediction_drifted'))}.</p>"
        )
        # a document without per-variant results: its summary, under no variant's name
        variants = drift.get("variants") or {"": drift}
        for variant, found in variants.items():
            heading = f"{variant} v{found.get('version')}" if variant else "inputs"
            if found.get("skipped"):
                parts.append(f"<h3>{e(heading)}</h3><p>Not tested: {e(found['skipped'])}</p>")
                continue
            details = f" (details: drift/{variant}/report.html)" if variant else ""
            parts.append(
                f"<h3>{e(heading)}: drifted share {e(found.get('share'))}{e(details)}</h3>"
                + table(
                    ["column", "method", "threshold", "score", "drifted"],
                    [
                        [n, c.get("method"), c.get("threshold"), c.get("score"), c.get("drifted")]
                        for n, c in (found.get("columns") or {}).items()
                    ],
                )
            )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )
