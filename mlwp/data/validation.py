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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from mlwp.errors import MlwpError

if TYPE_CHECKING:
    import pandas as pd

    from mlwp.data.storage import Storage

# How many unexpected values a failure summary shows.
UNEXPECTED_SAMPLE = 5
# Columns with at most this many distinct values get a value-set expectation when suggesting.
SUGGEST_MAX_CATEGORIES = 20


class SuiteError(MlwpError):
    """An expectation suite is missing or malformed."""

    code = "suite_error"


class SourceChanged(MlwpError):
    """An extract's SQL source no longer returns the rows the extract stored."""

    code = "source_changed"


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
    # Where a partitioned dataset failed it ("in 2 of 8 partitions: part-3.parquet (4), ...").
    partitions: str | None = None

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
        if self.partitions:
            parts.append(self.partitions)
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
            "partitions": self.partitions,
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
    spec = _spec(suite, expectations_folder)
    context = _gx_context(docs_dir)
    batch = (
        context.data_sources.add_pandas("mlwp")
        .add_dataframe_asset(name="dataset")
        .add_batch_definition_whole_dataframe("whole")
    )
    return _run_suite(context, batch, spec, docs_dir, {"dataframe": frame})


def validate_query(
    connection_string: str,
    query: str,
    suite: str | dict[str, Any],
    *,
    expectations_folder: str | Path | None = None,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Run a suite on a query's rows inside PostgreSQL (a GX SQL data source).

    GX turns each expectation into SQL over ``SELECT * FROM (<query>)``: the database computes
    the counts and aggregates, only they (and at most 20 example values each) come back.
    """
    spec = _spec(suite, expectations_folder)
    context = _gx_context(docs_dir)
    rows = _over(query, "*")
    batch = (
        context.data_sources.add_postgres("mlwp", connection_string=connection_string)
        .add_query_asset("dataset", query=rows)
        .add_batch_definition_whole_table("whole")
    )
    with _columns_without_rows(rows):
        return _run_suite(context, batch, spec, docs_dir, None)


@contextmanager
def _columns_without_rows(rows: str) -> Iterator[None]:
    """Make GX's bare run of the query asset (to learn its column names) return no rows.

    GX cannot reflect a query's columns, so it executes the query itself and reads only the
    result's column names; psycopg2 fetches a whole result into the client first, so every
    row came out of the database (212 MB at 1M narrow rows, 20 MB at 100k: the peak grew with
    the rows, docs/scale.md). The same statement with ``LIMIT 0`` has the same columns. The
    expectations run the query as a subquery, never bare, and are left as they are. GX's
    execution engine builds its own SQLAlchemy engine, so the hook is on every engine, for the
    suite's run only, and touches only this exact statement.
    """
    import sqlalchemy

    def limit_the_bare_query(
        connection: Any, statement: Any, multiparams: Any, params: Any, options: Any
    ) -> tuple[Any, Any, Any]:
        if isinstance(statement, sqlalchemy.TextClause) and statement.text == rows:
            statement = sqlalchemy.text(f"{rows} LIMIT 0")
        return statement, multiparams, params

    engines = sqlalchemy.engine.Engine
    sqlalchemy.event.listen(engines, "before_execute", limit_the_bare_query, retval=True)
    try:
        yield
    finally:
        sqlalchemy.event.remove(engines, "before_execute", limit_the_bare_query)


def _over(query: str, select: str) -> str:
    """``SELECT <select>`` over a query's rows (GX query assets must begin with SELECT).

    The query is the definition's own SQL, which the extract runs as written: wrapping it
    gives its author nothing they could not write. Trailing semicolons cannot be nested.
    """
    inner = query.strip().rstrip(";").strip()
    return f"SELECT {select} FROM ({inner}) AS mlwp_source"  # noqa: S608


def _spec(suite: str | dict[str, Any], expectations_folder: str | Path | None) -> dict[str, Any]:
    spec = load_suite(suite, expectations_folder) if isinstance(suite, str) else dict(suite)
    if "name" not in spec:
        raise SuiteError("an inline suite needs a 'name'", code="bad_suite")
    return spec


class FrameValidator:
    """One suite, ready to run on many frames (the chunks of a partition) in one GX context.

    Building the context, suite and checkpoint costs more than validating a chunk: a mapped
    validation task builds them once.

    After each run it drops what the context kept of it: the frame (in the execution engine's
    batch caches) and the validation result (in the in-memory results store). GX's context is
    a web of reference cycles (data source, engine, batch manager), so a context no longer used
    is freed only by Python's full collection, which with GX's few hundred thousand live
    objects runs rarely: a worker validating partition after partition kept every partition's
    last chunk until then (72 -> 196 MB from 1M to 10M rows, docs/scale.md). Results pile up
    within one context too, one per chunk.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.context = _gx_context(None)
        self.datasource = self.context.data_sources.add_pandas("mlwp")
        asset = self.datasource.add_dataframe_asset(name="dataset")
        batch = asset.add_batch_definition_whole_dataframe("whole")
        self.checkpoint = _checkpoint(self.context, batch, spec, None)

    def validate(self, frame: pd.DataFrame) -> ValidationReport:
        try:
            return _report(self.checkpoint.run(batch_parameters={"dataframe": frame}), self.spec)
        finally:
            self._release_run()

    def _release_run(self) -> None:
        engine = self.datasource.get_execution_engine()
        batches = engine.batch_manager
        batches.batch_data_cache.clear()  # the frame, as the engine's batch data
        batches.reset_batch_cache()  # the batch, whose request holds the frame too
        # The engine's metric cache (a private dict, no public way to empty it) keeps the
        # last run's metrics, per-row masks among them: about 0.25 MB per context for a
        # chunk of 65,536 rows, kept until the context's cycles are collected (one context
        # per partition, so it grew with the partitions). Each run computes its own metrics
        # (every chunk is a new frame under the same batch id, so nothing cached may be
        # reused anyway). A gc.collect() per partition would free the same for 0.3 s each.
        cache = getattr(engine, "_metric_cache", None)
        if isinstance(cache, dict):
            cache.clear()
        results = self.context.validation_results_store
        for key in results.list_keys():
            results.remove_key(key)


def _run_suite(
    context: Any,
    batch: Any,
    spec: dict[str, Any],
    docs_dir: Path | None,
    batch_parameters: dict[str, Any] | None,
) -> ValidationReport:
    """Run ``spec`` on ``batch`` through a checkpoint (data docs when ``docs_dir``)."""
    checkpoint = _checkpoint(context, batch, spec, docs_dir)
    return _report(checkpoint.run(batch_parameters=batch_parameters), spec)


def _checkpoint(context: Any, batch: Any, spec: dict[str, Any], docs_dir: Path | None) -> Any:
    import great_expectations as gx
    from great_expectations.checkpoint.actions import UpdateDataDocsAction, ValidationAction

    gx_suite = context.suites.add(_gx_suite(spec, f"suite {spec['name']!r}"))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{spec['name']}-validation", data=batch, suite=gx_suite)
    )
    actions: list[ValidationAction] = [UpdateDataDocsAction(name="data_docs")] if docs_dir else []
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"{spec['name']}-checkpoint",
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20},
        )
    )
    return checkpoint


def _report(outcome: Any, spec: dict[str, Any]) -> ValidationReport:
    """The report of a checkpoint's one validation."""
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
    with tempfile.TemporaryDirectory(prefix="mlwp-gx-") as scratch:
        docs_dir = Path(scratch) / "docs" if data_docs else None
        report = validate_frame(frame, spec, docs_dir=docs_dir)
        return store_report(storage, dataset_uri, report, docs_dir=docs_dir)


def validate_source(
    storage: Storage,
    dataset_uri: str,
    suite: str,
    *,
    connection_string: str,
    query: str,
    extracted_rows: int,
    expectations_folder: str | Path | None = None,
    data_docs: bool = True,
) -> ValidationReport:
    """Validate an extract's SQL source in PostgreSQL; store the result beside its dataset.

    The suite judges what the query returns now, so the query is counted before and after:
    a count other than the extract's rows means the source changed since the extract, and
    the verdict would not be about the stored dataset (:class:`SourceChanged`).
    """
    import sqlalchemy

    spec = load_suite(suite, expectations_folder)
    engine = sqlalchemy.create_engine(connection_string)
    count = sqlalchemy.text(_over(query, "count(*)"))

    def check_rows(when: str) -> None:
        with engine.connect() as connection:
            rows = int(connection.execute(count).scalar_one())
        if rows != extracted_rows:
            raise SourceChanged(
                f"the source query returns {rows} rows {when} validating, the extract stored "
                f"{extracted_rows}: the source changed since the extract, so the suite would "
                "not judge the stored dataset; bound the query (for example by "
                "{{ data_interval_end }}) so that it returns the same rows for one run"
            )

    try:
        check_rows("before")
        with tempfile.TemporaryDirectory(prefix="mlwp-gx-") as scratch:
            docs_dir = Path(scratch) / "docs" if data_docs else None
            report = validate_query(connection_string, query, spec, docs_dir=docs_dir)
            check_rows("after")
            return store_report(
                storage,
                dataset_uri,
                report,
                docs_dir=docs_dir,
                engine="postgres",
                source_rows=extracted_rows,
            )
    finally:
        engine.dispose()


def store_report(
    storage: Storage,
    dataset_uri: str,
    report: ValidationReport,
    *,
    docs_dir: Path | None = None,
    **facts: Any,
) -> ValidationReport:
    """Store a report's result JSON and data docs beside the dataset; record it in the sidecar.

    ``facts`` (how it ran: partitions, engine, ...) go into the sidecar's record as well.
    Returns the report with the dataset's and the stored files' URIs.
    """
    suite = report.suite
    base = dataset_uri[: -len(".parquet")] + f".gx/{suite}"
    result_uri = f"{base}/result.json"
    storage.write_json(result_uri, report.result)
    docs_uri = None
    if docs_dir is not None and (docs_dir / "index.html").is_file():
        storage.upload_folder(str(docs_dir), f"{base}/docs")
        docs_uri = f"{base}/docs/index.html"
    report = replace(report, dataset_uri=dataset_uri, result_uri=result_uri, docs_uri=docs_uri)
    storage.update_sidecar(
        dataset_uri,
        validation={
            suite: {
                "success": report.success,
                "statistics": report.statistics,
                "result_uri": result_uri,
                "docs_uri": docs_uri,
                "validated": datetime.now(UTC).isoformat(),
                **facts,
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
