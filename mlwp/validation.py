"""Great Expectations (GX Core 1.x) validation of stored datasets.

A suite is a JSON file ``expectations/<suite>.json`` in GX's own format (``name``,
``expectations`` of ``{type, kwargs, meta}``). Validation runs in an ephemeral GX context with
a pandas data source and a checkpoint whose data-docs action renders HTML; the result JSON
and the data docs are stored beside the dataset::

    <root>/<project>/datasets/<name>/<sha256>.gx/<suite>/result.json
    <root>/<project>/datasets/<name>/<sha256>.gx/<suite>/docs/index.html

and the dataset's sidecar gets ``validation.<suite>`` = success, statistics and those URIs.
great_expectations is imported only inside the functions (it takes seconds to import).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from mlwp.errors import MlwpError

if TYPE_CHECKING:
    import pandas as pd

    from mlwp.storage import Storage

# How many unexpected values a failure summary shows.
UNEXPECTED_SAMPLE = 5
# Columns with at most this many distinct values get a value-set expectation when suggesting.
SUGGEST_MAX_CATEGORIES = 20


class SuiteError(MlwpError):
    """An expectation suite is missing or malformed."""

    code = "suite_error"


class ValidationFailed(MlwpError):
    """A dataset does not meet its expectation suite; ``report`` holds the details."""

    code = "validation_failed"

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.failure_message())
        self.report = report


@dataclass(frozen=True)
class FailedExpectation:
    """What one failed expectation says about the data."""

    expectation: str
    column: str | None
    observed_value: Any = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    unexpected_values: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    exception: str | None = None

    def describe(self) -> str:
        """One line naming the expectation, the column and what was found."""
        where = f"column {self.column!r}" if self.column else "table"
        parts = [f"{self.expectation} on {where}"]
        if self.exception:
            parts.append(f"error: {self.exception}")
        if self.unexpected_count is not None:
            percent = (
                f" ({self.unexpected_percent:.2f}%)" if self.unexpected_percent is not None else ""
            )
            parts.append(f"{self.unexpected_count} unexpected{percent}")
        if self.unexpected_values:
            parts.append(f"e.g. {self.unexpected_values!r}")
        if self.observed_value is not None:
            parts.append(f"observed {self.observed_value!r}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "expectation": self.expectation,
            "column": self.column,
            "observed_value": jsonable(self.observed_value),
            "unexpected_count": self.unexpected_count,
            "unexpected_percent": self.unexpected_percent,
            "unexpected_values": [jsonable(v) for v in self.unexpected_values],
            "kwargs": jsonable(self.kwargs),
            "exception": self.exception,
        }


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of running one suite against one dataset."""

    suite: str
    success: bool
    evaluated: int
    successful: int
    unsuccessful: int
    success_percent: float
    failures: list[FailedExpectation]
    result: dict[str, Any] = field(repr=False, default_factory=dict)
    dataset_uri: str | None = None
    result_uri: str | None = None
    docs_uri: str | None = None

    @property
    def statistics(self) -> dict[str, Any]:
        return {
            "evaluated": self.evaluated,
            "successful": self.successful,
            "unsuccessful": self.unsuccessful,
            "success_percent": self.success_percent,
        }

    def failure_message(self) -> str:
        """A multi-line summary naming every failed expectation."""
        target = f" on {self.dataset_uri}" if self.dataset_uri else ""
        head = (
            f"suite {self.suite!r}{target}: {self.unsuccessful} of {self.evaluated} "
            f"expectations failed ({self.success_percent:.1f}% successful)"
        )
        lines = [head, *(f"  - {failure.describe()}" for failure in self.failures)]
        if self.docs_uri:
            lines.append(f"  data docs: {self.docs_uri}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The small document pushed to XCom and stored in the sidecar."""
        return {
            "suite": self.suite,
            "success": self.success,
            "statistics": self.statistics,
            "failures": [failure.to_dict() for failure in self.failures],
            "dataset_uri": self.dataset_uri,
            "result_uri": self.result_uri,
            "docs_uri": self.docs_uri,
        }


def jsonable(value: Any) -> Any:
    """Turn numpy scalars, NaN and other odd values into plain JSON values."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError):
            return str(value)
    return str(value)


# ---------------------------------------------------------------------------- suites


def suite_path(suite: str, expectations_folder: str | Path | None = None) -> Path:
    """The file of suite ``suite``: ``<expectations folder>/<suite>.json``."""
    if expectations_folder is None:
        from mlwp.settings import get_settings

        expectations_folder = get_settings().expectations_folder
    folder = Path(expectations_folder)
    if not suite or "/" in suite or suite.startswith("."):
        raise SuiteError(f"suite name {suite!r} is not a plain name", code="bad_suite_name")
    return folder / f"{suite}.json"


def load_suite(suite: str, expectations_folder: str | Path | None = None) -> dict[str, Any]:
    """Read and check a suite's JSON, naming the file and the faulty expectation."""
    path = suite_path(suite, expectations_folder)
    if not path.is_file():
        available = (
            sorted(p.stem for p in path.parent.glob("*.json")) if path.parent.is_dir() else []
        )
        raise SuiteError(
            f"suite {suite!r} not found: {path} does not exist"
            + (f" (available: {', '.join(available)})" if available else ""),
            code="suite_not_found",
        )
    try:
        spec = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise SuiteError(f"{path}: not valid JSON: {exc}", code="bad_suite") from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("expectations"), list):
        raise SuiteError(
            f"{path}: a suite is an object with an 'expectations' list", code="bad_suite"
        )
    for index, expectation in enumerate(spec["expectations"]):
        if not isinstance(expectation, dict) or not isinstance(expectation.get("type"), str):
            raise SuiteError(
                f"{path}: expectations[{index}] needs a 'type' (for example "
                "'expect_column_values_to_not_be_null')",
                code="bad_suite",
            )
        if not isinstance(expectation.get("kwargs", {}), dict):
            raise SuiteError(
                f"{path}: expectations[{index}].kwargs must be an object", code="bad_suite"
            )
    spec["name"] = suite
    return spec


def _gx_suite(spec: dict[str, Any], source: str) -> Any:
    import great_expectations as gx
    from great_expectations.exceptions.exceptions import (
        ExpectationNotFoundError,
        InvalidExpectationConfigurationError,
    )
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )
    from pydantic import ValidationError

    expectations = []
    for index, item in enumerate(spec["expectations"]):
        try:
            config = ExpectationConfiguration(
                type=item["type"], kwargs=item.get("kwargs") or {}, meta=item.get("meta") or {}
            )
            expectations.append(config.to_domain_obj())
        except (
            ExpectationNotFoundError,
            InvalidExpectationConfigurationError,
            ValidationError,
            ValueError,
            TypeError,
        ) as exc:
            detail = " ".join(str(getattr(exc, "message", exc)).split())
            raise SuiteError(
                f"{source}: expectations[{index}] ({item['type']}) is invalid: {detail}",
                code="bad_suite",
            ) from exc
    return gx.ExpectationSuite(
        name=spec["name"], expectations=expectations, meta=spec.get("meta") or {}
    )


def _gx_context(docs_dir: Path | None) -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites: dict[str, Any] = {}
    if docs_dir is not None:
        sites["mlwp"] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites=sites,
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _exception_message(info: dict[str, Any]) -> str | None:
    """The first error message in GX's exception info (flat, or keyed by metric)."""
    candidates = [info, *(v for v in info.values() if isinstance(v, dict))]
    for candidate in candidates:
        if candidate.get("raised_exception"):
            text = str(candidate.get("exception_message") or "").strip()
            return text.splitlines()[0] if text else "the expectation raised an error"
    return None


def _failure_of(result: dict[str, Any]) -> FailedExpectation:
    config = result.get("expectation_config") or {}
    kwargs = dict(config.get("kwargs") or {})
    details = result.get("result") or {}
    message = _exception_message(result.get("exception_info") or {})
    unexpected = details.get("partial_unexpected_list") or []
    return FailedExpectation(
        expectation=str(config.get("type")),
        column=kwargs.get("column") if isinstance(kwargs.get("column"), str) else None,
        observed_value=jsonable(details.get("observed_value")),
        unexpected_count=details.get("unexpected_count"),
        unexpected_percent=jsonable(details.get("unexpected_percent")),
        unexpected_values=[jsonable(v) for v in unexpected[:UNEXPECTED_SAMPLE]],
        kwargs={k: jsonable(v) for k, v in kwargs.items() if k != "batch_id"},
        exception=message,
    )


def validate_frame(
    frame: pd.DataFrame,
    suite: str | dict[str, Any],
    *,
    expectations_folder: str | Path | None = None,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Run a suite (its name, or an already loaded spec) against ``frame`` with real GX.

    When ``docs_dir`` is given, GX data docs (HTML) are rendered into it.
    """
    import great_expectations as gx

    spec = load_suite(suite, expectations_folder) if isinstance(suite, str) else dict(suite)
    if "name" not in spec:
        raise SuiteError("an inline suite needs a 'name'", code="bad_suite")
    context = _gx_context(docs_dir)
    gx_suite = context.suites.add(_gx_suite(spec, f"suite {spec['name']!r}"))
    batch = (
        context.data_sources.add_pandas("mlwp")
        .add_dataframe_asset(name="dataset")
        .add_batch_definition_whole_dataframe("whole")
    )
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{spec['name']}-validation", data=batch, suite=gx_suite)
    )
    from great_expectations.checkpoint.actions import UpdateDataDocsAction, ValidationAction

    actions: list[ValidationAction] = [UpdateDataDocsAction(name="data_docs")] if docs_dir else []
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{spec['name']}-checkpoint",
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20},
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    (validation,) = outcome.run_results.values()
    document = jsonable(validation.to_json_dict())
    statistics = document.get("statistics") or {}
    failures = [_failure_of(r) for r in document.get("results", []) if not r.get("success")]
    return ValidationReport(
        suite=str(spec["name"]),
        success=bool(document.get("success")),
        evaluated=int(statistics.get("evaluated_expectations") or 0),
        successful=int(statistics.get("successful_expectations") or 0),
        unsuccessful=int(statistics.get("unsuccessful_expectations") or 0),
        success_percent=float(statistics.get("success_percent") or 0.0),
        failures=failures,
        result=document,
    )


def validate_dataset(
    storage: Storage,
    dataset_uri: str,
    suite: str,
    *,
    expectations_folder: str | Path | None = None,
    data_docs: bool = True,
) -> ValidationReport:
    """Validate a stored dataset; store the result JSON and data docs beside it.

    The sidecar's ``validation.<suite>`` records the outcome. The report is returned whether
    or not the data passed: callers decide (the operator raises :class:`ValidationFailed`).
    """
    spec = load_suite(suite, expectations_folder)
    frame = storage.read_dataset(dataset_uri)
    base = dataset_uri[: -len(".parquet")] + f".gx/{suite}"
    with tempfile.TemporaryDirectory(prefix="mlwp-gx-") as scratch:
        docs_dir = Path(scratch) / "docs" if data_docs else None
        report = validate_frame(frame, spec, docs_dir=docs_dir)
        result_uri = f"{base}/result.json"
        storage.write_json(result_uri, report.result)
        docs_uri = None
        if docs_dir is not None and (docs_dir / "index.html").is_file():
            storage.upload_folder(str(docs_dir), f"{base}/docs")
            docs_uri = f"{base}/docs/index.html"
    report = ValidationReport(
        suite=report.suite,
        success=report.success,
        evaluated=report.evaluated,
        successful=report.successful,
        unsuccessful=report.unsuccessful,
        success_percent=report.success_percent,
        failures=report.failures,
        result=report.result,
        dataset_uri=dataset_uri,
        result_uri=result_uri,
        docs_uri=docs_uri,
    )
    storage.update_sidecar(
        dataset_uri,
        validation={
            suite: {
                "success": report.success,
                "statistics": report.statistics,
                "result_uri": result_uri,
                "docs_uri": docs_uri,
                "validated": datetime.now(UTC).isoformat(),
            }
        },
    )
    return report


# ---------------------------------------------------------------------------- suggestion


def suggest_suite(frame: pd.DataFrame, name: str) -> dict[str, Any]:
    """Draft a suite from data: columns, types, null fractions, value sets, ranges, row count.

    The result is a starting point for a person to edit, in the JSON format of
    ``expectations/<suite>.json``.
    """
    import pandas as pd

    rows = len(frame)
    expectations: list[dict[str, Any]] = [
        {
            "type": "expect_table_row_count_to_be_between",
            "kwargs": {"min_value": max(1, rows // 2), "max_value": max(rows * 2, 1)},
            "meta": {"notes": f"observed {rows} rows"},
        },
        {
            "type": "expect_table_columns_to_match_set",
            "kwargs": {"column_set": [str(c) for c in frame.columns], "exact_match": False},
            "meta": {},
        },
    ]
    for column in frame.columns:
        series = frame[column]
        name_ = str(column)
        dtype = series.dtype
        expectations.append(
            {
                "type": "expect_column_to_exist",
                "kwargs": {"column": name_},
                "meta": {"dtype": str(dtype)},
            }
        )
        nulls = float(series.isna().mean()) if rows else 0.0
        if nulls == 0.0:
            expectations.append(
                {
                    "type": "expect_column_values_to_not_be_null",
                    "kwargs": {"column": name_},
                    "meta": {},
                }
            )
        elif nulls < 1.0:
            # Leave head room so that a similar extract with slightly more nulls still passes.
            mostly = max(0.0, math.floor((1.0 - nulls) * 100 - 1) / 100)
            expectations.append(
                {
                    "type": "expect_column_values_to_not_be_null",
                    "kwargs": {"column": name_, "mostly": mostly},
                    "meta": {"notes": f"observed null fraction {nulls:.4f}"},
                }
            )
        values = series.dropna()
        if pd.api.types.is_bool_dtype(dtype):
            continue
        if pd.api.types.is_numeric_dtype(dtype):
            expectations.append(
                {
                    "type": "expect_column_values_to_be_in_type_list",
                    "kwargs": {
                        "column": name_,
                        "type_list": (
                            ["int", "int8", "int16", "int32", "int64", "Int64"]
                            if pd.api.types.is_integer_dtype(dtype)
                            else ["float", "float32", "float64", "Float64", "int", "int64"]
                        ),
                    },
                    "meta": {},
                }
            )
            distinct = values.nunique()
            if pd.api.types.is_integer_dtype(dtype) and distinct <= 2:
                expectations.append(_value_set(name_, values))
            elif len(values):
                expectations.append(
                    {
                        "type": "expect_column_values_to_be_between",
                        "kwargs": {
                            "column": name_,
                            "min_value": jsonable(values.min()),
                            "max_value": jsonable(values.max()),
                        },
                        "meta": {"notes": "observed range; widen it where the domain allows"},
                    }
                )
        elif 0 < values.nunique() <= SUGGEST_MAX_CATEGORIES:
            expectations.append(_value_set(name_, values))
    return {
        "name": name,
        "expectations": expectations,
        "meta": {
            "great_expectations_version": _gx_version(),
            "generated_by": "mlwp expectations suggest",
        },
        "notes": f"Suggested from {rows} rows; review before use.",
    }


def _value_set(column: str, values: pd.Series) -> dict[str, Any]:
    value_set = sorted({jsonable(v) for v in values.unique()}, key=str)
    return {
        "type": "expect_column_values_to_be_in_set",
        "kwargs": {"column": column, "value_set": value_set},
        "meta": {},
    }


def _gx_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("great-expectations")
    except PackageNotFoundError:
        return "unknown"
