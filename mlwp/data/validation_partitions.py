"""Validation of a partitioned dataset: one GX run per partition, combined into one verdict.

A dataset too large for one worker is validated partition by partition (Airflow maps one task
over each, docs/scale.md); each partition's task returns a small document of *partial*
results, and one combine task turns them into the verdict, the result JSON and the data docs
of the whole dataset, the same artefacts :func:`mlwp.data.validation.validate_dataset` stores.

What an expectation means across partitions decides how it combines (:func:`kind_of`):

- **row**: row-level expectations (GX map expectations: not null, between, in set, regex,
  column pairs, ...) ask one question per row. Each chunk's GX run counts its rows,
  missing and unexpected values; the combine sums the counts and hands them to the
  expectation's own GX ``_validate``, so ``mostly`` and the percentages are GX's, exact;
- **stat**: aggregates that partial statistics give exactly: row count (a sum), min, max, sum,
  mean, standard deviation (count, mean and squared deviations merged as Chan et al.) and the
  proportion of non-null values. Each partition computes the partials of the columns named;
  the combine merges them and lets GX's ``_validate`` judge the merged metric;
- **same**: schema expectations (columns exist, column set, order and count, types) hold for
  the dataset when they hold for every partition (one writer gave them one schema);
- anything else (uniqueness, median, quantiles, distinct-value counts, ordering, z-scores,
  distribution tests) depends on rows across partitions: such a suite is refused before any
  partition is read, naming the expectations (validate without ``map_partitions``, or in the
  database).

``_validate`` (the step of a GX expectation that judges computed metrics) is GX's private API:
``tests/unit/test_validation_partitions.py`` holds each kind of combination to GX's own verdict on
the whole frame, so a GX upgrade that changes it fails there first.

Memory is one chunk of :data:`CHUNK_ROWS` rows in each mapped task (whatever the partition's
size), and the partial documents (a few numbers and at most 20 example values per
expectation and partition) in the combine, whatever the number of rows.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlwp.data.validation import (
    FailedExpectation,
    FrameValidator,
    SuiteError,
    ValidationReport,
    jsonable,
    load_suite,
    store_report,
)

if TYPE_CHECKING:
    import pandas as pd

    from mlwp.data.partitions import Partition
    from mlwp.data.storage import Storage

# Example unexpected values kept per expectation (GX's SUMMARY format shows as many).
PARTIAL_UNEXPECTED = 20
# Partitions named in a failure message.
PARTITIONS_NAMED = 5
INDEX_KEY = "mlwp_suite_index"
# Rows validated at a time in a mapped task: what it holds, whatever the partition's size.
CHUNK_ROWS = 65_536

SAME_ON_EVERY_PARTITION = frozenset(
    {
        "expect_column_to_exist",
        "expect_table_columns_to_match_set",
        "expect_table_columns_to_match_ordered_list",
        "expect_table_column_count_to_equal",
        "expect_table_column_count_to_be_between",
        "expect_column_type_to_be",
        "expect_column_values_to_be_of_type",
        "expect_column_values_to_be_in_type_list",
    }
)
# Aggregates with an exact merge of partial statistics: expectation -> GX metric it judges.
STAT_METRICS = {
    "expect_table_row_count_to_be_between": "table.row_count",
    "expect_table_row_count_to_equal": "table.row_count",
    "expect_column_min_to_be_between": "column.min",
    "expect_column_max_to_be_between": "column.max",
    "expect_column_sum_to_be_between": "column.sum",
    "expect_column_mean_to_be_between": "column.mean",
    "expect_column_stdev_to_be_between": "column.standard_deviation",
    "expect_column_proportion_of_non_null_values_to_be_between": "column.non_null_proportion",
}
# Map expectations whose answer for a row depends on other rows (a duplicate, the previous
# value, the column's mean): not row-level, whatever their GX class.
ACROSS_ROWS = frozenset(
    {
        "expect_column_values_to_be_unique",
        "expect_compound_columns_to_be_unique",
        "expect_multicolumn_values_to_be_unique",
        "expect_column_values_to_be_increasing",
        "expect_column_values_to_be_decreasing",
        "expect_column_value_z_scores_to_be_less_than",
        "expect_column_values_to_not_be_outliers",
    }
)


def kind_of(expectation: Any) -> str | None:
    """``row``, ``stat`` or ``same`` for a GX expectation object; None: not combinable."""
    from great_expectations.expectations.expectation import (
        ColumnMapExpectation,
        ColumnPairMapExpectation,
        MulticolumnMapExpectation,
    )

    name = expectation.expectation_type
    if name in SAME_ON_EVERY_PARTITION:
        return "same"
    if name in STAT_METRICS:
        return "stat"
    if name in ACROSS_ROWS:
        return None
    row_level = (ColumnMapExpectation, ColumnPairMapExpectation, MulticolumnMapExpectation)
    return "row" if isinstance(expectation, row_level) else None


def suite_kinds(spec: dict[str, Any]) -> list[str]:
    """How each expectation of a suite combines; refuses a suite with any that cannot."""
    from mlwp.data.validation import _gx_suite

    suite = _gx_suite(spec, f"suite {spec['name']!r}")
    kinds = [kind_of(expectation) for expectation in suite.expectations]
    refused = [
        f"expectations[{index}] ({item['type']})"
        for index, (item, kind) in enumerate(zip(spec["expectations"], kinds, strict=True))
        if kind is None
    ]
    if refused:
        raise SuiteError(
            f"suite {spec['name']!r} cannot be validated per partition: "
            f"{', '.join(refused)} depend on rows across partitions (uniqueness, order, "
            "median, quantiles, distinct values, distributions); validate without "
            "map_partitions, or in the database (docs/scale.md)",
            code="suite_not_combinable",
        )
    return [str(kind) for kind in kinds]


# ------------------------------------------------------------------------ one partition


def validate_partition(
    frames: Iterable[pd.DataFrame], spec: dict[str, Any], *, partition: str
) -> dict[str, Any]:
    """The partial results of one partition, validated one chunk (frame) at a time.

    Chunks merge as partitions do (counts add up, statistics merge, flags must all hold), so
    a task holds one chunk whatever its partition's size.
    """
    kinds = suite_kinds(spec)
    gx_indexes = [index for index, kind in enumerate(kinds) if kind != "stat"]
    # GX orders its results its own way: the suite position rides in each one's meta.
    sub = {
        **spec,
        "expectations": [
            {
                **spec["expectations"][i],
                "meta": {**(spec["expectations"][i].get("meta") or {}), INDEX_KEY: i},
            }
            for i in gx_indexes
        ],
    }
    validator = FrameValidator(sub) if gx_indexes else None
    merged: list[dict[str, Any]] | None = None
    rows = 0
    for frame in frames:
        gx_results: dict[int, dict[str, Any]] = {}
        if validator is not None:
            gx_results = {
                int(result["expectation_config"]["meta"][INDEX_KEY]): result
                for result in validator.validate(frame).result.get("results", [])
            }
        chunk = [
            _partial(kind, spec["expectations"][index], frame, gx_results.get(index))
            for index, kind in enumerate(kinds)
        ]
        merged = (
            chunk if merged is None else [_merge(a, b) for a, b in zip(merged, chunk, strict=True)]
        )
        rows += len(frame)
    if merged is None:
        raise SuiteError(f"partition {partition} has no rows to validate", code="empty_partition")
    return {"partition": partition, "rows": rows, "results": merged}


def _partial(
    kind: str, item: dict[str, Any], frame: pd.DataFrame, result: dict[str, Any] | None
) -> dict[str, Any]:
    """One expectation's partial result on one frame."""
    if kind == "stat" or result is None:
        return {"kind": kind, **_statistics(frame, item)}
    details = result.get("result") or {}
    exception = _raised(result)
    if kind == "row":
        return {
            "kind": kind,
            "element_count": int(details.get("element_count") or 0),
            "missing_count": int(details.get("missing_count") or 0),
            "unexpected_count": int(details.get("unexpected_count") or 0),
            "unexpected_values": jsonable(
                (details.get("partial_unexpected_list") or [])[:PARTIAL_UNEXPECTED]
            ),
            "exception": exception,
        }
    return {
        "kind": kind,
        "success": bool(result.get("success")),
        "result": jsonable(details),
        "exception": exception,
    }


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two chunks' partial results of one expectation as one."""
    exception = a.get("exception") or b.get("exception")
    if a["kind"] == "row":
        return {
            "kind": "row",
            **{
                name: a[name] + b[name]
                for name in ("element_count", "missing_count", "unexpected_count")
            },
            "unexpected_values": (a["unexpected_values"] + b["unexpected_values"])[
                :PARTIAL_UNEXPECTED
            ],
            "exception": exception,
        }
    if a["kind"] == "same":
        return a if not a["success"] or b["success"] else b
    merged = {"kind": "stat", "rows": a["rows"] + b["rows"], "exception": exception}
    if "count" in a:
        merged["count"] = a["count"] + b["count"]
    present = [part for part in (a, b) if part.get("count")]
    for name, pick in (("min", min), ("max", max)):
        if any(name in part for part in (a, b)):
            merged[name] = pick((p[name] for p in present), default=None)
    if "sum" in a:
        merged["sum"] = a["sum"] + b["sum"]
    if "m2" in a:
        # Chan et al.'s pairwise update of the mean and the sum of squared deviations
        n = a["count"] + b["count"]
        delta = b["mean"] - a["mean"]
        merged["mean"] = a["mean"] + delta * b["count"] / n if n else 0.0
        merged["m2"] = a["m2"] + b["m2"] + (delta**2 * a["count"] * b["count"] / n if n else 0.0)
    return merged


def _raised(result: dict[str, Any]) -> str | None:
    from mlwp.data.validation import _exception_message

    return _exception_message(result.get("exception_info") or {})


def _statistics(frame: pd.DataFrame, item: dict[str, Any]) -> dict[str, Any]:
    """Partial statistics of the column an aggregate expectation names (rows for a table)."""
    import pandas as pd

    column = (item.get("kwargs") or {}).get("column")
    stats: dict[str, Any] = {"rows": len(frame), "exception": None}
    if column is None:
        return stats
    if column not in frame.columns:
        return {**stats, "exception": f"column {column!r} is not in the dataset"}
    values = frame[column].dropna()
    stats["count"] = len(values)
    if item["type"] == "expect_column_proportion_of_non_null_values_to_be_between":
        return stats
    if not (pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values)):
        if item["type"] in ("expect_column_min_to_be_between", "expect_column_max_to_be_between"):
            # dates and text: the partition's own min/max, merged as values (jsonable)
            stats["min"] = jsonable(values.min()) if len(values) else None
            stats["max"] = jsonable(values.max()) if len(values) else None
            return stats
        return {**stats, "exception": f"column {column!r} is not numeric ({values.dtype})"}
    numbers = values.astype("float64")
    mean = float(numbers.mean()) if len(numbers) else 0.0
    # integers stay integers (an observed minimum of 0, not 0.0, as GX shows it whole)
    exact = values.astype("int64") if pd.api.types.is_integer_dtype(values.dtype) else numbers
    stats.update(
        sum=jsonable(exact.sum()),
        min=jsonable(exact.min()) if len(values) else None,
        max=jsonable(exact.max()) if len(values) else None,
        mean=mean,
        m2=float(((numbers - mean) ** 2).sum()),
    )
    return stats


# ------------------------------------------------------------------------------ combine


def merged_metric(metric: str, partials: list[dict[str, Any]]) -> Any:
    """The dataset's value of a GX aggregate metric, from the partitions' partial statistics."""
    rows = sum(int(p["rows"]) for p in partials)
    if metric == "table.row_count":
        return rows
    count = sum(int(p.get("count") or 0) for p in partials)
    if metric == "column.non_null_proportion":
        return count / rows if rows else None
    present = [p for p in partials if p.get("count")]
    if metric == "column.min":
        return min((p["min"] for p in present), default=None)
    if metric == "column.max":
        return max((p["max"] for p in present), default=None)
    if metric == "column.sum":
        return sum(p["sum"] for p in present)
    if not count:
        return None
    mean = sum(float(p["sum"]) for p in present) / count
    if metric == "column.mean":
        return mean
    # Chan et al.: M2 = sum of each part's M2 + n_i (mean_i - mean)^2; sample stdev like GX's.
    m2 = sum(float(p["m2"]) + int(p["count"]) * (float(p["mean"]) - mean) ** 2 for p in present)
    return math.sqrt(m2 / (count - 1)) if count > 1 else None


def combine_results(
    spec: dict[str, Any], documents: list[dict[str, Any]], *, dataset: str
) -> tuple[Any, list[FailedExpectation]]:
    """One GX suite validation result for the whole dataset, and its failures (by partition)."""
    import great_expectations as gx
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
        ExpectationValidationResult,
    )
    from great_expectations.core.run_identifier import RunIdentifier

    from mlwp.data.validation import _failure_of, _gx_suite

    kinds = suite_kinds(spec)
    suite = _gx_suite(spec, f"suite {spec['name']!r}")
    runtime = {"result_format": {"result_format": "SUMMARY", "partial_unexpected_count": 20}}
    results = []
    failures = []
    for index, (expectation, kind) in enumerate(zip(suite.expectations, kinds, strict=True)):
        partials = [
            {**doc["results"][index], "partition": doc["partition"], "rows": doc["rows"]}
            for doc in documents
        ]
        errors = [
            f"partition {p['partition']}: {p['exception']}" for p in partials if p.get("exception")
        ]
        where: list[str] = []
        if errors:
            outcome: dict[str, Any] = {"success": False, "result": {}}
        elif kind == "row":
            outcome = expectation._validate(_row_metrics(expectation, partials), runtime)
            where = [
                f"{p['partition']} ({p['unexpected_count']})"
                for p in partials
                if p["unexpected_count"]
            ]
        elif kind == "stat":
            value = merged_metric(STAT_METRICS[expectation.expectation_type], partials)
            outcome = expectation._validate(
                {STAT_METRICS[expectation.expectation_type]: value}, runtime
            )
        else:
            failed = [p for p in partials if not p["success"]]
            outcome = {"success": not failed, "result": (failed or partials)[0]["result"]}
            where = [p["partition"] for p in failed]
        result = ExpectationValidationResult(
            success=bool(outcome["success"]),
            result=outcome.get("result") or {},
            expectation_config=expectation.configuration,
            exception_info={
                "raised_exception": bool(errors),
                "exception_message": "; ".join(errors[:PARTITIONS_NAMED]) or None,
                "exception_traceback": None,
            },
            meta={"partitions": where} if where else {},
        )
        results.append(result)
        if not result.success:
            failure = _failure_of(jsonable(result.to_json_dict()))
            failures.append(_with_partitions(failure, where, len(documents)))
    successful = sum(1 for r in results if r.success)
    run_id = RunIdentifier(run_name="partitions")
    combined = ExpectationSuiteValidationResult(
        success=successful == len(results),
        results=results,
        suite_name=str(spec["name"]),
        statistics={
            "evaluated_expectations": len(results),
            "successful_expectations": successful,
            "unsuccessful_expectations": len(results) - successful,
            "success_percent": 100.0 * successful / len(results) if results else 100.0,
        },
        meta={
            "great_expectations_version": gx.__version__,
            "run_id": run_id,
            "active_batch_definition": {
                "datasource_name": "mlwp",
                "data_connector_name": "fluent",
                "data_asset_name": dataset,
                "batch_identifiers": {"partitions": str(len(documents))},
            },
            "partitions": len(documents),
            "rows": sum(int(doc["rows"]) for doc in documents),
        },
    )
    return combined, failures


def _row_metrics(expectation: Any, partials: list[dict[str, Any]]) -> dict[str, Any]:
    """Summed counts under the metric names GX's map expectations read in ``_validate``."""
    rows = sum(p["element_count"] for p in partials)
    missing = sum(p["missing_count"] for p in partials)
    examples = [v for p in partials for v in p["unexpected_values"]][:PARTIAL_UNEXPECTED]
    metric = getattr(expectation, "map_metric", None) or "column_values.nonnull"
    return {
        "table.row_count": rows,
        "column_values.nonnull.unexpected_count": missing,
        f"{metric}.unexpected_count": sum(p["unexpected_count"] for p in partials),
        f"{metric}.unexpected_values": examples,
        f"{metric}.filtered_row_count": rows - missing,
    }


def _with_partitions(failure: FailedExpectation, where: list[str], total: int) -> FailedExpectation:
    from dataclasses import replace

    if not where:
        return failure
    named = ", ".join(where[:PARTITIONS_NAMED])
    more = f" and {len(where) - PARTITIONS_NAMED} more" if len(where) > PARTITIONS_NAMED else ""
    return replace(failure, partitions=f"in {len(where)} of {total} partitions: {named}{more}")


def combine_partitions(
    storage: Storage,
    dataset_uri: str,
    suite: str,
    documents: list[dict[str, Any]],
    *,
    expectations_folder: str | Path | None = None,
    data_docs: bool = True,
) -> ValidationReport:
    """Combine the partitions' documents into one report; store it as a whole-dataset run."""
    spec = load_suite(suite, expectations_folder)
    documents = sorted(documents, key=lambda doc: int(doc.get("index", 0)))
    combined, failures = combine_results(spec, documents, dataset=dataset_uri)
    document = jsonable(combined.to_json_dict())
    statistics = document["statistics"]
    report = ValidationReport(
        suite=suite,
        success=bool(document["success"]),
        evaluated=int(statistics["evaluated_expectations"]),
        successful=int(statistics["successful_expectations"]),
        unsuccessful=int(statistics["unsuccessful_expectations"]),
        success_percent=float(statistics["success_percent"]),
        failures=failures,
        result=document,
    )
    with tempfile.TemporaryDirectory(prefix="mlwp-gx-") as scratch:
        docs_dir = Path(scratch) / "docs" if data_docs else None
        if docs_dir is not None:
            _render_docs(spec, combined, docs_dir)
        return store_report(
            storage, dataset_uri, report, docs_dir=docs_dir, partitions=len(documents)
        )


def _render_docs(spec: dict[str, Any], combined: Any, docs_dir: Path) -> None:
    """GX data docs of a result built here (not by a checkpoint): store it, build the site."""
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    from mlwp.data.validation import _gx_context, _gx_suite

    context = _gx_context(docs_dir)
    context.suites.add(_gx_suite(spec, f"suite {spec['name']!r}"))
    suite_id = ExpectationSuiteIdentifier(name=str(spec["name"]))
    key = ValidationResultIdentifier(
        expectation_suite_identifier=suite_id,
        run_id=combined.meta["run_id"],
        batch_identifier="partitions",
    )
    context.validation_results_store.set(key, combined)
    context.build_data_docs(site_names=["mlwp"], resource_identifiers=[key, suite_id])


def partition_frames(
    storage: Storage, dataset_uri: str, partition: Partition, *, chunk_rows: int = CHUNK_ROWS
) -> Iterator[pd.DataFrame]:
    """One partition of a stored dataset as frames of ``chunk_rows`` rows, its bytes checked
    against the manifest first."""
    import pandas as pd
    import pyarrow as pa

    from mlwp.data.partitions import PartitionedReader

    reader = PartitionedReader(storage, dataset_uri)
    empty = True
    for batch in reader.batches(partition, batch_rows=chunk_rows):
        empty = False
        yield pa.Table.from_batches([batch]).to_pandas()
    if empty:  # an empty file is still validated: a row count or a column may be expected
        yield pd.DataFrame(columns=reader.columns)
