"""The workflow definition schema: what a data scientist writes in ``workflow.yaml``.

The models are plain pydantic (no Airflow), so the CLI, the compiler in ``operators/`` and
the operators themselves share one source of truth. Every model refuses unknown keys. Task
types form a discriminated union on ``type``; each type's own fields are the keyword
arguments of its operator (see ``docs/contracts.md``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import PurePosixPath
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

# --------------------------------------------------------------------------- scalar types

NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
TASK_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]{0,99}$"
ASSET_NAME_PATTERN = r"^[a-z][a-z0-9_-]*\.[a-z][a-z0-9_-]*\.[A-Za-z_][A-Za-z0-9_-]*$"
CALLABLE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
TaskId = Annotated[str, StringConstraints(pattern=TASK_ID_PATTERN)]
AssetName = Annotated[str, StringConstraints(pattern=ASSET_NAME_PATTERN)]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
DURATION_PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h|d|w))+$"


def parse_duration(value: Any) -> Any:
    """Turn ``"90s"``, ``"5m"``, ``"1h30m"`` or a number of seconds into a ``timedelta``."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"a duration like '5m' or '2h' is expected, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text and _DURATION_PART.sub("", text) == "":
            seconds = sum(
                float(amount) * _DURATION_UNITS[unit]
                for amount, unit in _DURATION_PART.findall(text)
            )
            return timedelta(seconds=seconds)
    raise ValueError(
        f"a duration like '30s', '5m', '2h', '1d' or '1h30m' is expected, got {value!r}"
    )


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"type": "number", "minimum": 0},
            ],
            "description": "A duration: '30s', '5m', '2h', '1d', '1h30m' or seconds.",
        }
    ),
]

# Airflow 3's schedule presets (airflow.timetables); "@once" and "@continuous" included.
SCHEDULE_PRESETS = (
    "@once",
    "@continuous",
    "@hourly",
    "@daily",
    "@weekly",
    "@monthly",
    "@quarterly",
    "@yearly",
)
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_CRON_FIELDS = ("minute", "hour", "day of month", "month", "day of week")
_CRON_NAMES = {
    3: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    4: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
}
_CRON_ITEM = re.compile(r"^(\*|[0-9a-z]+(-[0-9a-z]+)?)(/(\d+))?$")


def check_cron(expression: str) -> str | None:
    """Return why ``expression`` is not a valid 5-field cron expression, or None when it is."""
    fields = expression.split()
    if len(fields) != 5:
        return f"a cron expression has 5 fields (minute hour day month weekday), got {len(fields)}"
    for index, field in enumerate(fields):
        low, high = _CRON_RANGES[index]
        names = _CRON_NAMES.get(index, [])
        for item in field.lower().split(","):
            match = _CRON_ITEM.match(item)
            if match is None:
                return f"cron {_CRON_FIELDS[index]} field {field!r} is not valid"
            if match.group(4) is not None and int(match.group(4)) == 0:
                return f"cron {_CRON_FIELDS[index]} field {field!r} has a step of 0"
            if match.group(1) == "*":
                continue
            for bound in match.group(1).split("-"):
                if bound in names:
                    continue
                if not bound.isdigit() or not low <= int(bound) <= high:
                    return f"cron {_CRON_FIELDS[index]} value {bound!r} is outside {low}-{high}"
    return None


def _check_schedule_text(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("@"):
            if text not in SCHEDULE_PRESETS:
                raise ValueError(
                    f"unknown schedule preset {text!r}; presets are {', '.join(SCHEDULE_PRESETS)}"
                )
            return text
        problem = check_cron(text)
        if problem is not None:
            raise ValueError(f"{problem}: {text!r} is neither a preset nor a cron expression")
        return text
    return value


ScheduleText = Annotated[
    str,
    BeforeValidator(_check_schedule_text),
    WithJsonSchema(
        {
            "type": "string",
            "description": "A preset (" + ", ".join(SCHEDULE_PRESETS) + ") or a cron expression.",
            "examples": ["@daily", "0 3 * * 1"],
        }
    ),
]

# Presets that are no time of day: they cannot be one half of "cron OR assets".
_NOT_CRON_PRESETS = ("@once", "@continuous")
CRON_PRESETS = tuple(p for p in SCHEDULE_PRESETS if p not in _NOT_CRON_PRESETS)


def _check_cron_text(value: Any) -> Any:
    if isinstance(value, str) and value.strip() in _NOT_CRON_PRESETS:
        raise ValueError(
            f"{value.strip()!r} cannot be combined with assets; the time half of a schedule is "
            f"a cron expression or one of {', '.join(CRON_PRESETS)}"
        )
    return _check_schedule_text(value)


CronText = Annotated[
    str,
    BeforeValidator(_check_cron_text),
    WithJsonSchema(
        {
            "type": "string",
            "description": "A cron expression or a cron preset (" + ", ".join(CRON_PRESETS) + ").",
            "examples": ["@weekly", "0 3 * * 1"],
        }
    ),
]


def _to_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _one_or_many(item: dict[str, Any], min_items: int = 0) -> WithJsonSchema:
    """JSON Schema of a list field that also accepts a single item (see ``_to_list``)."""
    array: dict[str, Any] = {"type": "array", "items": item}
    if min_items:
        array["minItems"] = min_items
    return WithJsonSchema({"anyOf": [item, array]})


class StrictModel(BaseModel):
    """Base of every definition model: unknown keys are errors, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- project level


class SlackNotifierSpec(StrictModel):
    """Post to a Slack channel through a Slack API connection (``SlackNotifier``)."""

    slack: str = Field(description="Airflow connection id of type slack.")
    channel: str = Field(default="#general", description="Channel to post to.")


class SlackWebhookNotifierSpec(StrictModel):
    """Post through a Slack incoming-webhook connection (``SlackWebhookNotifier``)."""

    slack_webhook: str = Field(description="Airflow connection id of type slackwebhook.")


class EmailNotifierSpec(StrictModel):
    """Send an e-mail through an SMTP connection (``SmtpNotifier``)."""

    email: Annotated[list[str], BeforeValidator(_to_list), _one_or_many({"type": "string"}, 1)] = (
        Field(min_length=1, description="Recipients.")
    )
    conn: str = Field(default="smtp_default", description="Airflow connection id of type smtp.")


class PagerDutyNotifierSpec(StrictModel):
    """Trigger a PagerDuty incident through an Events API v2 connection (PagerDuty provider)."""

    pagerduty: str = Field(
        description="Airflow connection id of type pagerduty_events (the integration key as "
        "its password; its host, when set, is the Events API base URL, e.g. the EU region's)."
    )
    severity: Literal["critical", "error", "warning", "info"] = Field(
        default="error", description="Severity of the PagerDuty event."
    )


# A bare string is a connection id whose type (smtp, slack, slackwebhook, pagerduty_events)
# is looked up when the alert fires: connection types are not knowable while parsing (no
# database access).
def _notifier_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "connection"
    if isinstance(value, BaseModel):
        return _NOTIFIER_TAGS.get(type(value).__name__)
    if isinstance(value, dict):
        for key in ("slack_webhook", "slack", "email", "pagerduty"):
            if key in value:
                return key
    return None


_NOTIFIER_TAGS = {
    "SlackNotifierSpec": "slack",
    "SlackWebhookNotifierSpec": "slack_webhook",
    "EmailNotifierSpec": "email",
    "PagerDutyNotifierSpec": "pagerduty",
}

Notifier = Annotated[
    Annotated[str, Tag("connection")]
    | Annotated[SlackNotifierSpec, Tag("slack")]
    | Annotated[SlackWebhookNotifierSpec, Tag("slack_webhook")]
    | Annotated[EmailNotifierSpec, Tag("email")]
    | Annotated[PagerDutyNotifierSpec, Tag("pagerduty")],
    Discriminator(
        _notifier_kind,
        custom_error_type="notifier_kind",
        custom_error_message=(
            "a notifier is a connection id or a mapping with one of the keys "
            "slack, slack_webhook, email, pagerduty"
        ),
    ),
]


class Alerts(StrictModel):
    """Notifiers called when a task of any workflow of the project fails or retries."""

    on_failure: list[Notifier] = Field(default_factory=list)
    on_retry: list[Notifier] = Field(default_factory=list)


DEFAULT_START_DATE = datetime(2024, 1, 1, tzinfo=UTC)


def _to_datetime(value: Any) -> Any:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"a date like 2024-01-01 is expected, got {value!r}") from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value


StartDate = Annotated[
    datetime,
    BeforeValidator(_to_datetime),
    WithJsonSchema({"type": "string", "format": "date", "examples": ["2024-01-01"]}),
]


class WorkflowDefaults(StrictModel):
    """Defaults of every workflow of a project; a workflow's own value wins."""

    start_date: StartDate = DEFAULT_START_DATE
    catchup: bool = False
    retries: int = Field(default=1, ge=0, le=100)
    retry_delay: Duration = timedelta(minutes=5)
    timeout: Duration | None = Field(default=None, description="Execution timeout of a task.")
    max_active_runs: int = Field(default=1, ge=1)


class ParamSpec(StrictModel):
    """A parameter offered in the trigger form of a workflow (an Airflow ``Param``)."""

    default: Any = Field(description="Value used when the trigger form leaves it unchanged.")
    type: Literal["string", "integer", "number", "boolean", "array", "object"] | None = None
    description: str | None = None
    enum: list[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None


class AssetSchedule(StrictModel):
    """Run a workflow whenever datasets produced by other workflows are updated; with
    ``cron``, also on that time schedule (Airflow's ``AssetOrTimeSchedule``)."""

    cron: CronText | None = Field(
        default=None,
        description="Also run on this cron schedule: the workflow runs at these times OR when "
        "the assets update.",
    )

    assets: Annotated[
        list[AssetName],
        BeforeValidator(_to_list),
        _one_or_many({"type": "string", "pattern": ASSET_NAME_PATTERN}, 1),
    ] = Field(
        min_length=1,
        description="Asset names '<project>.<workflow>.<task>' of dataset-producing tasks "
        "(or of a monitor task with retrain_on_drift); a run starts once all have updated.",
    )


# --------------------------------------------------------------------------- placement

# Kubernetes resource quantities, as kubectl accepts them for cpu and memory.
CPU_PATTERN = r"^(\d+(\.\d+)?|\d+m)$"
MEMORY_PATTERN = r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
POOL_PATTERN = r"^[A-Za-z0-9_.-]{1,256}$"
QUEUE_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"
EXECUTOR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*$"
DEFAULT_POOL = "default_pool"  # Airflow's own pool, always present


def _quantity_text(value: Any) -> Any:
    # YAML reads `cpu: 2` or `cpu: 0.5` as numbers; Kubernetes quantities are strings.
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"a quantity must be positive, got {value!r}")
        return format(value, "g")
    return value


CpuQuantity = Annotated[
    str,
    BeforeValidator(_quantity_text),
    StringConstraints(pattern=CPU_PATTERN),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": CPU_PATTERN},
                {"type": "number", "exclusiveMinimum": 0},
            ],
            "description": "CPU cores: 2, 0.5 or '500m' (millicores).",
        }
    ),
]
MemoryQuantity = Annotated[
    str,
    StringConstraints(pattern=MEMORY_PATTERN),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": MEMORY_PATTERN,
            "description": "Memory: '512Mi', '4Gi' (powers of 1024) or '1G' (of 1000).",
        }
    ),
]


class TaskResources(StrictModel):
    """What one run of the task needs; applied where the executor can (KubernetesExecutor).

    On Kubernetes the task's pod requests ``cpu`` and ``memory`` and is limited to that
    ``memory`` (no CPU limit: a limit throttles a task that could use idle cores). Local and
    Celery workers run tasks as processes and ignore these values.
    """

    cpu: CpuQuantity | None = None
    memory: MemoryQuantity | None = None

    @model_validator(mode="after")
    def _something(self) -> TaskResources:
        if self.cpu is None and self.memory is None:
            raise ValueError("resources needs 'cpu', 'memory' or both")
        return self


class PoolSpec(StrictModel):
    """An Airflow pool the project's tasks share: at most ``slots`` of them run at once."""

    slots: int = Field(ge=1, le=100000, description="Task slots; a task takes `pool_slots`.")
    description: str = ""


# --------------------------------------------------------------------------- tasks


class TaskBase(StrictModel):
    """Fields common to every task type."""

    after: Annotated[
        list[TaskId],
        BeforeValidator(_to_list),
        _one_or_many({"type": "string", "pattern": TASK_ID_PATTERN}),
    ] = Field(default_factory=list, description="Ids of the tasks that must finish first.")
    retries: int | None = Field(default=None, ge=0, le=100)
    retry_delay: Duration | None = None
    timeout: Duration | None = None
    doc: str | None = Field(default=None, description="Markdown shown on the task in the UI.")
    executor: Annotated[str, StringConstraints(pattern=EXECUTOR_PATTERN)] | None = Field(
        default=None,
        description="Airflow executor that runs the task (e.g. KubernetesExecutor, or an alias "
        "from MLWP_EXECUTOR); the platform's default executor when unset.",
    )
    queue: Annotated[str, StringConstraints(pattern=QUEUE_PATTERN)] | None = Field(
        default=None,
        description="Celery queue (one of MLWP_CELERY_QUEUES); other executors ignore it.",
    )
    pool: Annotated[str, StringConstraints(pattern=POOL_PATTERN)] | None = Field(
        default=None,
        description="Airflow pool limiting concurrent tasks: 'default_pool' or a pool "
        "declared under the project's `pools`.",
    )
    pool_slots: int | None = Field(
        default=None, ge=1, description="Slots of the pool this task takes (1 when unset)."
    )
    resources: TaskResources | None = Field(
        default=None,
        description="cpu and memory of the task's pod under KubernetesExecutor.",
    )

    # The keys that are not operator keyword arguments.
    COMMON_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {
            "type",
            "after",
            "retries",
            "retry_delay",
            "timeout",
            "doc",
            "executor",
            "queue",
            "pool",
            "pool_slots",
            "resources",
        }
    )
    # Task types whose output is a dataset, hence an Airflow Asset.
    PRODUCES_DATASET: ClassVar[bool] = False

    def operator_kwargs(self) -> dict[str, Any]:
        """Return this task's own fields as JSON-compatible keyword arguments of its operator.

        Fields left unset (None) are omitted so the operator's own defaults apply.
        """
        return self.model_dump(mode="json", exclude=set(self.COMMON_FIELDS), exclude_none=True)


class ExtractTask(TaskBase):
    """Read a dataset from a file, an object store or a Postgres query."""

    type: Literal["extract"] = "extract"
    source: str | None = Field(
        default=None,
        description="Path relative to the project folder, or a file:// or s3:// URI.",
    )
    query: str | None = Field(default=None, description="SQL query, with conn_id.")
    conn_id: str | None = Field(default=None, description="Airflow Postgres connection id.")
    format: Literal["csv", "parquet"] | None = Field(
        default=None, description="Inferred from the source's suffix when unset."
    )
    read_options: dict[str, Any] = Field(default_factory=dict)
    rows_per_partition: int | None = Field(
        default=None,
        ge=1,
        description="Stream the source in bounded memory into a partitioned dataset of files "
        "of at most this many rows (docs/scale.md).",
    )
    partition_by: (
        Annotated[
            list[Annotated[str, StringConstraints(min_length=1)]],
            BeforeValidator(_to_list),
            _one_or_many({"type": "string", "minLength": 1}, 1),
            Field(min_length=1),
        ]
        | None
    ) = Field(
        default=None,
        description="Stream the source into a dataset partitioned by these columns' values "
        "(Hive-style folders, docs/scale.md).",
    )

    PRODUCES_DATASET: ClassVar[bool] = True

    @model_validator(mode="after")
    def _one_source(self) -> ExtractTask:
        if (self.source is None) == (self.query is None):
            raise ValueError("an extract task needs exactly one of 'source' or 'query'")
        if self.query is not None and self.conn_id is None:
            raise ValueError("a 'query' needs 'conn_id' (an Airflow Postgres connection id)")
        return self

    @property
    def resolved_format(self) -> str:
        """The dataset format: the explicit one, else the source's suffix, else csv."""
        if self.format is not None:
            return self.format
        if self.source is not None and PurePosixPath(self.source).suffix == ".parquet":
            return "parquet"
        return "csv"


class ValidateTask(TaskBase):
    """Check a dataset against a Great Expectations suite."""

    type: Literal["validate"] = "validate"
    suite: str = Field(description="Name of expectations/<suite>.json.")
    input: TaskId | None = Field(default=None, description="Upstream task whose dataset to check.")
    map_partitions: bool = Field(
        default=False,
        description="Validate each partition of the input in its own mapped Airflow task and "
        "combine the results into one verdict and one data-docs report (docs/scale.md).",
    )

    in_database: bool = Field(
        default=False,
        description="Run the suite inside PostgreSQL on the query of the input extract task "
        "(a GX SQL data source: the rows never leave the database; docs/scale.md).",
    )

    @model_validator(mode="after")
    def _one_way(self) -> ValidateTask:
        if self.map_partitions and self.in_database:
            raise ValueError("choose one of 'map_partitions' or 'in_database'")
        return self

    def operator_kwargs(self) -> dict[str, Any]:
        """The operator takes neither switch: the compiler reads them."""
        arguments = super().operator_kwargs()
        arguments.pop("map_partitions", None)
        arguments.pop("in_database", None)
        return arguments


def _fraction(value: Any) -> Any:
    """A fraction is a number: refuse ``20%`` (a string) with the number to write instead."""
    if isinstance(value, str) and value.strip().endswith("%"):
        number = value.strip()[:-1].strip()
        try:
            hint = f" (write {float(number) / 100:g})"
        except ValueError:
            hint = ""
        raise ValueError(f"a fraction between 0 and 1 is expected, got {value!r}{hint}")
    if isinstance(value, bool) or (isinstance(value, str) and not _is_number(value)):
        raise ValueError(f"a fraction between 0 and 1 like 0.2 is expected, got {value!r}")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


Fraction = Annotated[
    float,
    BeforeValidator(_fraction),
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}),
]
ColumnName = Annotated[str, StringConstraints(min_length=1)]
ColumnList = Annotated[
    list[ColumnName],
    BeforeValidator(_to_list),
    _one_or_many({"type": "string", "minLength": 1}, 1),
    Field(min_length=1),
]
Dtype = Literal["float", "int", "bool", "str"]


class _Step(StrictModel):
    """Base of the transform steps: ``op`` names the step, its other keys are arguments."""


class SelectStep(_Step):
    """Keep only these columns (a feature step)."""

    op: Literal["select"] = "select"
    columns: ColumnList


class DropStep(_Step):
    """Remove these columns (a feature step)."""

    op: Literal["drop"] = "drop"
    columns: ColumnList


class RenameStep(_Step):
    """Rename columns, ``{old: new}`` (a feature step)."""

    op: Literal["rename"] = "rename"
    columns: dict[ColumnName, ColumnName] = Field(min_length=1)


class CastStep(_Step):
    """Convert columns to a type: ``columns: [a, b]`` with ``dtype``, or ``{a: int}``."""

    op: Literal["cast"] = "cast"
    columns: ColumnList | dict[ColumnName, Dtype]
    dtype: Dtype | None = None

    @model_validator(mode="after")
    def _dtype_given(self) -> CastStep:
        if isinstance(self.columns, list) and self.dtype is None:
            raise ValueError("a cast of a list of columns needs 'dtype' (float, int, bool, str)")
        return self


class FillMissingStep(_Step):
    """Fill missing values: a constant ``value``, or a ``strategy`` fitted on training rows."""

    op: Literal["fill_missing"] = "fill_missing"
    columns: ColumnList | dict[ColumnName, Any]
    value: Any = None
    strategy: Literal["median", "mean", "mode", "constant"] | None = None


class OnehotStep(_Step):
    """One 0/1 column per category (categories seen in training rows, or listed)."""

    op: Literal["onehot"] = "onehot"
    columns: ColumnList | dict[ColumnName, list[Any] | None]


class OrdinalStep(_Step):
    """Replace each category by its position (categories seen in training rows, or listed)."""

    op: Literal["ordinal"] = "ordinal"
    columns: ColumnList | dict[ColumnName, list[Any] | None]


class ScaleStep(_Step):
    """Standardise numeric columns (mean and deviation of the training rows)."""

    op: Literal["scale"] = "scale"
    columns: ColumnList


class DeriveStep(_Step):
    """Add ``column`` computed by ``expression`` over other columns."""

    op: Literal["derive"] = "derive"
    column: ColumnName
    expression: str = Field(min_length=1)


class FilterStep(_Step):
    """Keep the rows where ``expression`` holds (a dataset step, not replayed at serving)."""

    op: Literal["filter"] = "filter"
    expression: str = Field(min_length=1)


class SplitStep(_Step):
    """Assign rows to train/validation/test, seeded and optionally stratified."""

    op: Literal["split"] = "split"
    test_size: Fraction = Field(default=0.2, gt=0, lt=1)
    validation_size: Annotated[float, BeforeValidator(_fraction)] = Field(
        default=0.1, ge=0, lt=1, description="0 for no validation split."
    )
    stratify: ColumnName | None = None
    seed: int = 42

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitStep:
        total = self.test_size + self.validation_size
        if total >= 1:
            raise ValueError(
                f"test_size ({self.test_size:g}) + validation_size ({self.validation_size:g}) "
                f"= {total:g} leaves no training rows; the sum must be below 1"
            )
        return self


class PythonStep(_Step):
    """Call ``module:function(frame, **kwargs)`` on the whole dataset (before feature steps)."""

    op: Literal["python"] = "python"
    callable: Annotated[str, StringConstraints(pattern=CALLABLE_PATTERN)]
    kwargs: dict[str, Any] = Field(default_factory=dict)


STEP_MODELS: dict[str, type[_Step]] = {
    "select": SelectStep,
    "drop": DropStep,
    "rename": RenameStep,
    "cast": CastStep,
    "fill_missing": FillMissingStep,
    "filter": FilterStep,
    "onehot": OnehotStep,
    "ordinal": OrdinalStep,
    "scale": ScaleStep,
    "derive": DeriveStep,
    "split": SplitStep,
    "python": PythonStep,
}
STEP_OPS: tuple[str, ...] = tuple(STEP_MODELS)

TransformStep = Annotated[
    SelectStep
    | DropStep
    | RenameStep
    | CastStep
    | FillMissingStep
    | FilterStep
    | OnehotStep
    | OrdinalStep
    | ScaleStep
    | DeriveStep
    | SplitStep
    | PythonStep,
    Field(discriminator="op"),
]


class TransformTask(TaskBase):
    """Turn a dataset into features with a list of steps."""

    type: Literal["transform"] = "transform"
    steps: list[TransformStep] = Field(min_length=1)
    input: TaskId | None = None
    fit_sample_rows: int | None = Field(
        default=None,
        ge=1000,
        description="For a partitioned input: fit on a seeded sample of about this many rows "
        "(200000 when unset), then apply per partition (docs/scale.md).",
    )

    PRODUCES_DATASET: ClassVar[bool] = True


class TuningRange(StrictModel):
    """The search space of one hyperparameter: a numeric range or a list of values."""

    min: float | None = None
    max: float | None = None
    log: bool = False
    integer: bool = False
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _range_or_values(self) -> TuningRange:
        if self.values is not None:
            if self.min is not None or self.max is not None:
                raise ValueError("a range has either 'values' or 'min'/'max', not both")
            return self
        if self.min is None or self.max is None:
            raise ValueError("a range needs 'min' and 'max' (or 'values')")
        if self.min > self.max:
            raise ValueError(f"range min {self.min} is greater than max {self.max}")
        return self


class Tuning(StrictModel):
    """Hyperparameter tuning: several training trials, the best one is kept."""

    trials: int = Field(default=10, ge=1)
    parallel: int = Field(default=1, ge=1)
    metric: str = "roc_auc"
    direction: Literal["maximize", "minimize"] = "maximize"
    strategy: Literal["bayesian", "random", "grid"] = "bayesian"
    pruning: bool = False
    ranges: dict[str, TuningRange] = Field(min_length=1)


# SageMaker instance types: ml.<family>.<size>, e.g. ml.m5.xlarge, ml.g4dn.2xlarge.
SAGEMAKER_INSTANCE_PATTERN = r"^ml\.[a-z0-9-]+\.[a-z0-9]+$"


class SageMakerPlacement(StrictModel):
    """Where SageMaker runs a job: instances, execution role, image, network, connection."""

    instance_type: str = Field(default="ml.m5.large", pattern=SAGEMAKER_INSTANCE_PATTERN)
    instance_count: int = Field(default=1, ge=1)
    role_arn: str | None = Field(
        default=None,
        pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$",
        description="Execution role; else 'sagemaker_role_arn' in the AWS connection's extra.",
    )
    image_uri: str | None = Field(
        default=None, description="Container image; AWS's XGBoost 3.2-0 framework image when unset."
    )
    subnets: list[str] = Field(default_factory=list)
    security_group_ids: list[str] = Field(default_factory=list)
    aws_conn_id: str = "aws_default"

    @model_validator(mode="after")
    def _vpc(self) -> SageMakerPlacement:
        if bool(self.subnets) != bool(self.security_group_ids):
            raise ValueError("a VPC needs both 'subnets' and 'security_group_ids'")
        return self


class SageMakerSettings(SageMakerPlacement):
    """Where a SageMaker training job runs (see docs/sagemaker.md)."""

    volume_size_gb: int = Field(default=30, ge=1)
    max_runtime: Duration = timedelta(hours=2)
    spot: bool = False
    max_wait: Duration | None = Field(
        default=None, description="Spot training: how long to wait for capacity (>= max_runtime)."
    )

    @model_validator(mode="after")
    def _spot(self) -> SageMakerSettings:
        if self.max_wait is not None and self.max_wait < self.max_runtime:
            raise ValueError("'max_wait' must be at least 'max_runtime'")
        return self


class BatchTransformSettings(SageMakerPlacement):
    """Where a SageMaker Batch Transform job scores a dataset (docs/scale.md).

    Each Parquet partition is one request to the container (SplitType None: SageMaker splits
    only line, RecordIO and TFRecord files), so ``max_payload_mb`` must hold the largest
    partition file; the partitions are spread over ``instance_count`` instances, each taking
    ``max_concurrent_transforms`` at a time.
    """

    instance_type: str = Field(
        default="ml.m5.xlarge",
        pattern=SAGEMAKER_INSTANCE_PATTERN,
        description="A SageMaker transform instance type, e.g. ml.m5.xlarge.",
    )
    max_payload_mb: int = Field(
        default=100,
        ge=1,
        le=100,
        description="MaxPayloadInMB: the largest partition file sent in one request.",
    )
    max_concurrent_transforms: int = Field(
        default=1,
        ge=1,
        description="Requests at once per instance (times max_payload_mb at most 100 MB).",
    )
    invocation_timeout: Duration = Field(
        default=timedelta(minutes=10),
        description="How long one partition may take in the container (at most 1h).",
    )
    invocation_retries: int = Field(default=1, ge=0, le=3)

    @field_validator("instance_type")
    @classmethod
    def _transform_instance(cls, value: str) -> str:
        # botocore's service model lists the instance types a transform job accepts (its
        # parameter validation does not check enums); imported only for these definitions.
        import botocore.session

        from mlwp.definitions.problems import did_you_mean

        shape = (
            botocore.session.get_session()
            .get_service_model("sagemaker")
            .shape_for("TransformInstanceType")
        )
        if value not in shape.enum:
            raise ValueError(
                f"{value!r} is not a SageMaker transform instance type"
                f"{did_you_mean(value, shape.enum)}"
            )
        return value

    @model_validator(mode="after")
    def _payload(self) -> BatchTransformSettings:
        if self.max_payload_mb * self.max_concurrent_transforms > 100:
            raise ValueError(
                f"max_payload_mb times max_concurrent_transforms may be at most 100 (MB), got "
                f"{self.max_payload_mb} x {self.max_concurrent_transforms}"
            )
        seconds = self.invocation_timeout.total_seconds()
        if not 1 <= seconds <= 3600:
            raise ValueError(f"invocation_timeout must be 1s to 1h, got {seconds:g} s")
        return self


class TrainTask(TaskBase):
    """Train an XGBoost model locally or on SageMaker, tracked in MLflow."""

    type: Literal["train"] = "train"
    target: str = Field(description="Name of the label column.")
    objective: Literal["binary", "multiclass", "regression"] = "binary"
    backend: Literal["local", "sagemaker"] = "local"
    # `params` is also BaseOperator's argument (Airflow merges the DAG's params into it);
    # TrainOperator separates the two (operators.train.task_params).
    params: dict[str, Any] = Field(default_factory=dict, description="XGBoost parameters.")
    num_boost_round: int = Field(default=100, ge=1)
    early_stopping_rounds: int | None = Field(default=None, ge=1)
    seed: int = 42
    threshold: Fraction | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="binary: the probability from which the positive class is predicted "
        "(0.5 when unset); lower it for a rare positive class.",
    )
    tuning: Tuning | None = None
    sagemaker: SageMakerSettings | None = None
    input: TaskId | None = None
    data: Literal["auto", "in_memory", "external_memory"] = Field(
        default="auto",
        description="How training holds the splits: external_memory streams them through "
        "XGBoost's external memory (never whole in memory); auto does so above 20 million "
        "cells (rows x columns) of the train split (docs/scale.md).",
    )

    @model_validator(mode="after")
    def _external_memory_tuning(self) -> TrainTask:
        if self.data == "external_memory" and self.tuning is not None and self.backend == "local":
            raise ValueError(
                "'tuning' trains every trial on data held in memory and cannot run with "
                "'data: external_memory': remove one of them (backend sagemaker tunes with "
                "one job per trial)"
            )
        return self

    @model_validator(mode="after")
    def _threshold_field(self) -> TrainTask:
        if "threshold" in self.params:
            raise ValueError(
                "'threshold' is not an XGBoost parameter: move it out of 'params' to the "
                "train task's own 'threshold' field"
            )
        if self.threshold is not None and self.objective != "binary":
            raise ValueError(f"'threshold' applies to binary objectives, not {self.objective!r}")
        return self


class EvaluateTask(TaskBase):
    """Compute metrics of a trained model on held-out data."""

    type: Literal["evaluate"] = "evaluate"
    metrics: list[str] = Field(default_factory=lambda: ["roc_auc", "accuracy"])
    input: TaskId | None = None


class Gate(StrictModel):
    """The condition a new model version must meet to be registered.

    ``beat: champion`` passes only when the new version is strictly better than the champion
    on ``metric`` by more than ``margin`` (so an identical retrain is not promoted); a
    negative margin (accept a slightly worse model) needs ``allow_worse: true``.
    """

    metric: str
    min: float | None = None
    beat: Literal["champion"] | None = None
    margin: float = Field(
        default=0.0, description="How much better than the champion, in the metric's units."
    )
    # Checked here only; not an operator argument (excluded from operator_kwargs).
    allow_worse: bool = Field(
        default=False,
        exclude=True,
        description="Allow a negative margin (a worse model may pass).",
    )

    @model_validator(mode="after")
    def _margin_meaning(self) -> Gate:
        if self.margin and self.beat is None:
            raise ValueError("'margin' applies to 'beat: champion', which is not set")
        if self.margin < 0 and not self.allow_worse:
            raise ValueError(
                f"margin {self.margin:g} is negative: a model worse than the champion would "
                "pass; use a margin >= 0, or set allow_worse: true if that is meant"
            )
        return self


class RegisterTask(TaskBase):
    """Register the trained model as a new version in the MLflow registry."""

    type: Literal["register"] = "register"
    model: str = Field(description="Registered model name in MLflow.")
    gate: Gate | None = None
    input: TaskId | None = None


class ApproveTask(TaskBase):
    """Wait for a human (or, in auto mode, nobody) to approve a promotion."""

    type: Literal["approve"] = "approve"
    mode: Literal["human", "auto"] = "human"
    approvers: list[str] = Field(
        default_factory=list,
        description="Who may answer: user names and roles (project:churn, DataScientist). "
        "Empty: every Admin and project member.",
    )
    # Unset (None) means the operator's default: 1, false, false.
    min_approvals: int | None = Field(
        default=None, ge=1, description="Different approvers who must approve (default 1)."
    )
    allow_self_approval: bool | None = Field(
        default=None, description="May the user who triggered the run approve it (default no)?"
    )
    allow_admins: bool | None = Field(
        default=None,
        description="May Admins answer although approvers does not name them (default no)?",
    )

    @model_validator(mode="after")
    def _approvable(self) -> ApproveTask:
        from mlwp.security.approvals import ApprovalPolicy
        from mlwp.security.roles import SecurityError

        try:
            ApprovalPolicy(tuple(self.approvers), self.min_approvals or 1)
        except SecurityError as exc:
            raise ValueError(exc.message) from exc
        return self


Alias = Literal["champion", "challenger"]


class DeployTask(TaskBase):
    """Point a serving alias at the approved version and set the traffic split."""

    type: Literal["deploy"] = "deploy"
    model: str
    alias: Alias = "champion"
    traffic: dict[Alias, Annotated[int, Field(ge=0, le=100)]] | None = Field(
        default=None, description="Percent of requests per alias; sums to 100."
    )

    @field_validator("traffic")
    @classmethod
    def _sums_to_100(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None and sum(value.values()) != 100:
            shares = " + ".join(f"{alias} {share}" for alias, share in value.items())
            raise ValueError(f"traffic must sum to 100, got {shares} = {sum(value.values())}")
        return value


class RolloutGuardrails(StrictModel):
    """What must hold for the challenger while a rollout moves traffic to it."""

    max_error_rate: float | None = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Largest share of the challenger's prediction requests that may fail "
        "(refused or raised), per step window; null: not checked.",
    )
    max_p99_latency_ms: float | None = Field(
        default=None, gt=0, description="Largest p99 scoring latency of the challenger (ms)."
    )
    min_requests: int = Field(
        default=100,
        ge=1,
        description="Challenger requests a step needs before its error rate and latency are "
        "judged and before it may advance.",
    )
    drift: bool = Field(
        default=True,
        description="Roll back when the monitor finds the challenger's predictions drifted.",
    )
    labels: bool = Field(
        default=True,
        description="Roll back when the monitor's labelled comparison finds the challenger "
        "significantly worse (only once enough labels exist).",
    )


class RolloutApproval(StrictModel):
    """A human approval of the promotion (the last step), with the rollout's evidence."""

    mode: Literal["human", "auto"] = "human"
    approvers: list[str] = Field(default_factory=list)
    min_approvals: int | None = Field(default=None, ge=1)
    allow_self_approval: bool | None = None
    allow_admins: bool | None = None


class RolloutTask(TaskBase):
    """Move traffic to the challenger in steps while guardrails hold; promote at 100 %."""

    type: Literal["rollout"] = "rollout"
    model: str
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: [10, 50, 100],
        min_length=1,
        description="Challenger percent at each step, increasing; 100 promotes the challenger.",
    )
    step_duration: Duration = Field(
        default=timedelta(hours=1),
        description="How long each step runs with the guardrails holding before it advances.",
    )
    check_every: Duration = Field(
        default=timedelta(minutes=5), description="How often the guardrails are checked."
    )
    guardrails: RolloutGuardrails = Field(default_factory=RolloutGuardrails)
    approve: RolloutApproval | None = Field(
        default=None,
        description="Ask for a human approval before the last step (100 %), the evidence "
        "in the request.",
    )

    @field_validator("steps")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        for before, after in itertools.pairwise(value):
            if after <= before:
                raise ValueError(f"steps must increase, got {value}")
        return value

    @model_validator(mode="after")
    def _approval_needs_promotion(self) -> RolloutTask:
        if self.approve is not None and self.steps[-1] != 100:
            raise ValueError(
                f"approve asks for an approval of the promotion, but the last step is "
                f"{self.steps[-1]} %, not 100 %"
            )
        if self.check_every.total_seconds() <= 0:
            raise ValueError("check_every must be positive")
        return self

    def operator_kwargs(self) -> dict[str, Any]:
        kwargs = super().operator_kwargs()
        kwargs["step_duration"] = self.step_duration.total_seconds()
        kwargs["check_every"] = self.check_every.total_seconds()
        return kwargs


class BatchPredictTask(TaskBase):
    """Score a dataset with a served model version and store the predictions."""

    type: Literal["batch_predict"] = "batch_predict"
    model: str
    alias: Alias = "champion"
    input: TaskId | None = None
    output: str | None = Field(
        default=None, description="Where predictions go; storage when unset."
    )
    keys: list[ColumnName] = Field(
        default_factory=list,
        description="Input columns that identify a row (e.g. customer_id), written beside its "
        "predictions; without keys, a 'row' column: the row's position in the input "
        '(docs/scale.md, "What the output holds").',
    )
    join_input: bool = Field(
        default=False,
        description="Write every input column beside the predictions (SageMaker's JoinSource: "
        "Input) instead of the keys; a larger output, slower to write.",
    )
    map_partitions: bool = Field(
        default=False,
        description="Score each partition of the input in its own mapped Airflow task, spread "
        "over the workers, in chunks of chunk_rows (docs/scale.md).",
    )
    chunk_rows: int | None = Field(
        default=None,
        ge=1,
        description="Rows scored at a time by each mapped task, or by the SageMaker container "
        "(65536 when unset).",
    )
    backend: Literal["local", "sagemaker"] = Field(
        default="local",
        description="sagemaker: a SageMaker Batch Transform job scores the partitions "
        "(docs/scale.md); the storage root must be s3://.",
    )
    sagemaker: BatchTransformSettings | None = None

    PRODUCES_DATASET: ClassVar[bool] = True

    @model_validator(mode="after")
    def _chunks_when_mapped(self) -> BatchPredictTask:
        if self.join_input and self.keys:
            raise ValueError("'join_input' writes every input column, keys included: remove 'keys'")
        if self.backend == "sagemaker":
            if self.map_partitions:
                raise ValueError(
                    "'map_partitions' maps local tasks; with 'backend: sagemaker' the "
                    "Batch Transform job spreads the partitions over its instances: remove it"
                )
            return self
        if self.sagemaker is not None:
            raise ValueError("'sagemaker' settings apply to 'backend: sagemaker', which is not set")
        if self.chunk_rows is not None and not self.map_partitions:
            raise ValueError("'chunk_rows' applies to 'map_partitions: true', which is not set")
        return self

    def operator_kwargs(self) -> dict[str, Any]:
        """The single-task operator takes no ``map_partitions``; the compiler reads it."""
        arguments = super().operator_kwargs()
        if not self.map_partitions:
            arguments.pop("map_partitions", None)
        if self.backend == "local":
            arguments.pop("backend", None)
            arguments.pop("sagemaker", None)
        return arguments


class PythonTask(TaskBase):
    """Call ``module:function`` with ``kwargs``; the module is imported when the task runs."""

    type: Literal["python"] = "python"
    callable: Annotated[str, StringConstraints(pattern=CALLABLE_PATTERN)] = Field(
        description="'package.module:function'."
    )
    kwargs: dict[str, Any] = Field(default_factory=dict)


DriftMethod = Literal[
    "anderson",
    "chisquare",
    "cramer_von_mises",
    "ed",
    "empirical_mmd",
    "es",
    "fisher_exact",
    "g_test",
    "hellinger",
    "jensenshannon",
    "kl_div",
    "ks",
    "mannw",
    "psi",
    "t_test",
    "TVD",
    "wasserstein",
    "z",
]
MonitorMetric = Literal["accuracy", "log_loss", "brier", "absolute_error", "squared_error"]
MonitorAlert = Literal["srm", "drift", "challenger_worse", "challenger_better", "capture"]


def _default_monitor_alerts() -> list[MonitorAlert]:
    # capture: spool parts the monitor could not read (rows it never saw, a storage problem)
    return ["srm", "drift", "challenger_worse", "capture"]


def _drift_threshold(method: str | None, threshold: float | None) -> float | None:
    from mlwp.monitoring.drift_methods import threshold_problem

    problem = threshold_problem(method, threshold)
    if problem is not None:
        raise ValueError(problem)
    return threshold


class DriftColumn(StrictModel):
    """How one column is tested for drift (Evidently's method name and its threshold)."""

    method: DriftMethod | None = Field(
        default=None, description="Evidently drift method; the shared `method` when unset."
    )
    threshold: float | None = Field(
        default=None,
        gt=0,
        description="p-value methods: drift below it; distance methods: drift at or above it.",
    )

    @field_validator("threshold")
    @classmethod
    def _threshold_fits_method(cls, value: float | None, info: ValidationInfo) -> float | None:
        return _drift_threshold(info.data.get("method"), value)


class DriftSpec(StrictModel):
    """Drift of captured inputs and predictions against the training baseline."""

    enabled: bool = True
    method: DriftMethod | None = Field(
        default=None,
        description="Method for every column it applies to; Evidently's choice when unset "
        "(K-S / chi-square up to 1,000 baseline rows, Wasserstein / Jensen-Shannon above).",
    )
    threshold: float | None = Field(default=None, gt=0, description="Threshold of `method`.")
    columns: dict[ColumnName, DriftColumn] = Field(
        default_factory=dict, description="Per-column method and threshold."
    )
    drift_share: Fraction | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Alarm when at least this share of columns drifted; any one column when unset.",
    )
    predictions: bool = Field(
        default=True, description="Also test the prediction and probability columns."
    )
    min_rows: int = Field(
        default=100, ge=1, description="Fewer captured rows in the window: no drift test."
    )

    @field_validator("threshold")
    @classmethod
    def _threshold_fits_method(cls, value: float | None, info: ValidationInfo) -> float | None:
        return _drift_threshold(info.data.get("method"), value)


class MonitorTask(TaskBase):
    """Analyse captured predictions: traffic, labels, metrics, challenger, drift."""

    type: Literal["monitor"] = "monitor"
    model: str = Field(description="Registered model name in MLflow.")
    window: Duration = Field(
        default=timedelta(days=1),
        description="Recent captured rows tested for drift and sample-ratio mismatch.",
    )
    lookback: Duration = Field(
        default=timedelta(days=30),
        description="How far back the comparison reads (rows of the current versions only).",
    )
    metric: MonitorMetric | None = Field(
        default=None,
        description="Per-row metric compared: accuracy for class labels, squared_error "
        "for values when unset.",
    )
    alpha: Fraction = Field(
        default=0.05, gt=0, lt=1, description="Always-valid significance level."
    )
    effect: float | None = Field(
        default=None,
        gt=0,
        description="The difference worth finding, in metric units (the mSPRT's tau); a "
        "tenth of the per-row standard deviation when unset.",
    )
    min_samples: int = Field(
        default=100, ge=2, description="Labelled rows each arm needs before a decision."
    )
    confidence: Fraction = Field(default=0.95, gt=0, lt=1, description="Of the metrics' intervals.")
    drift: DriftSpec = Field(default_factory=DriftSpec)
    alert_on: list[MonitorAlert] = Field(
        default_factory=_default_monitor_alerts,
        description="Findings sent through the project's alerts.on_failure notifiers.",
    )
    retrain_on_drift: bool = Field(
        default=False,
        description="On drift, update the asset '<project>.<workflow>.<task>' (a workflow "
        "scheduled on it retrains).",
    )
    experiment: str | None = Field(
        default=None, description="MLflow experiment of the monitoring runs (the DAG id)."
    )

    @model_validator(mode="after")
    def _lookback_covers_window(self) -> MonitorTask:
        if self.lookback < self.window:
            raise ValueError("'lookback' must be at least 'window'")
        return self


LabelField = Literal["inference_id", "row", "entity_key", "label", "label_time"]


class LabelsTask(TaskBase):
    """Ingest outcomes (labels) of served predictions in bulk from a file, S3 or SQL."""

    type: Literal["labels"] = "labels"
    model: str = Field(description="Registered model name the outcomes belong to.")
    source: str | None = Field(
        default=None,
        description="Path relative to the project folder, or a file:// or s3:// URI.",
    )
    query: str | None = Field(default=None, description="SQL query, with conn_id.")
    conn_id: str | None = Field(default=None, description="Airflow Postgres connection id.")
    format: Literal["csv", "parquet"] | None = Field(
        default=None, description="Inferred from the source's suffix when unset."
    )
    read_options: dict[str, Any] = Field(default_factory=dict)
    columns: dict[LabelField, ColumnName] = Field(
        default_factory=dict,
        description="Label field -> source column, where the names differ (e.g. {entity_key: "
        "customer_id, label: churn}).",
    )
    classes: list[str | int | float | bool] | None = Field(
        default=None,
        # an empty list names no class: the task ran as if classes were unset (numbers taken
        # as they are, a class value such as Yes failing the task), which a list of classes
        # never means; mlwp validate refuses it instead
        min_length=1,
        description="Label values in class-index order (e.g. [No, Yes]): values become class "
        "indices, as the model predicts them; numbers are taken as they are when unset.",
    )

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, classes: list[Any] | None) -> list[Any] | None:
        from mlwp.monitoring.capture import repeated_class

        problem = repeated_class(classes) if classes else None
        if problem:
            raise ValueError(problem)
        return classes

    @model_validator(mode="after")
    def _one_source(self) -> LabelsTask:
        if (self.source is None) == (self.query is None):
            raise ValueError("a labels task needs exactly one of 'source' or 'query'")
        if self.query is not None and self.conn_id is None:
            raise ValueError("a 'query' needs 'conn_id' (an Airflow Postgres connection id)")
        return self


TASK_MODELS: dict[str, type[TaskBase]] = {
    "extract": ExtractTask,
    "validate": ValidateTask,
    "transform": TransformTask,
    "train": TrainTask,
    "evaluate": EvaluateTask,
    "register": RegisterTask,
    "approve": ApproveTask,
    "deploy": DeployTask,
    "rollout": RolloutTask,
    "batch_predict": BatchPredictTask,
    "python": PythonTask,
    "monitor": MonitorTask,
    "labels": LabelsTask,
}
TASK_TYPES: tuple[str, ...] = tuple(TASK_MODELS)

Task = Annotated[
    ExtractTask
    | ValidateTask
    | TransformTask
    | TrainTask
    | EvaluateTask
    | RegisterTask
    | ApproveTask
    | DeployTask
    | RolloutTask
    | BatchPredictTask
    | PythonTask
    | MonitorTask
    | LabelsTask,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------- workflow, project


def _schedule_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict | AssetSchedule):
        return "assets"
    return None


class Workflow(StrictModel):
    """One workflow of a project: one Airflow DAG ``<project>.<workflow>``."""

    description: str = ""
    schedule: (
        Annotated[
            Annotated[ScheduleText, Tag("text")] | Annotated[AssetSchedule, Tag("assets")],
            Discriminator(
                _schedule_kind,
                custom_error_type="schedule_kind",
                custom_error_message="a schedule is a preset, a cron expression, "
                "{assets: [...]} or {cron: ..., assets: [...]}",
            ),
        ]
        | None
    ) = Field(
        default=None,
        description="A preset, a cron expression, {assets: [...]}, {cron: ..., assets: [...]} "
        "(on the cron OR when the assets update) or null (manual only).",
    )
    start_date: StartDate | None = None
    catchup: bool | None = None
    retries: int | None = Field(default=None, ge=0, le=100)
    retry_delay: Duration | None = None
    timeout: Duration | None = None
    max_active_runs: int | None = Field(default=None, ge=1)
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    tasks: dict[TaskId, Task] = Field(min_length=1)


class Project(StrictModel):
    """A project file: its people, alerts, defaults and workflows."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"title": "mlwp workflow definition"},
    )

    project: Name = Field(description="Project name; DAG ids are '<project>.<workflow>'.")
    description: str = ""
    owner: str = Field(description="Airflow user owning every DAG of the project.")
    members: list[str] = Field(default_factory=list, description="Users granted the project role.")
    tags: list[str] = Field(default_factory=list)
    alerts: Alerts = Field(default_factory=Alerts)
    storage: str | None = Field(
        default=None, description="Storage root (file:// or s3://); the platform's when unset."
    )
    defaults: WorkflowDefaults = Field(default_factory=WorkflowDefaults)
    pools: dict[Annotated[str, StringConstraints(pattern=POOL_PATTERN)], PoolSpec] = Field(
        default_factory=dict,
        description="Airflow pools the tasks name in `pool`; `mlwp roles sync` (run by "
        "`mlwp up`) creates the missing ones with these slots and never resizes existing ones.",
    )
    workflows: dict[Name, Workflow] = Field(min_length=1)

    @property
    def name(self) -> str:
        return self.project

    @property
    def role(self) -> str:
        """Name of the project's Airflow role."""
        return f"project:{self.project}"

    def dag_id(self, workflow: str) -> str:
        return f"{self.project}.{workflow}"


def asset_name(project: str, workflow: str, task_id: str) -> str:
    """Name of the Airflow Asset of a dataset-producing task (docs/contracts.md)."""
    return f"{project}.{workflow}.{task_id}"


def asset_uri(project: str, workflow: str, task_id: str) -> str:
    """URI of the Airflow Asset of a dataset-producing task.

    The scheme is ``x-mlwp``: Airflow leaves ``x-`` schemes alone, while any other scheme
    makes it load every provider's URI normalizers (and boto3) while a DAG file is parsed.
    """
    return f"x-mlwp://{project}/{workflow}/{task_id}"


class EntityField(NamedTuple):
    """A labels task's declaration: the outcomes of ``model`` are keyed by its records'
    ``field`` (``columns: {entity_key: <field>}``), at ``path`` in the definition."""

    model: str
    field: str
    path: tuple[str, ...]  # ("workflows", <workflow>, "tasks", <task>, "columns", "entity_key")


def declared_entity_fields(project: Project) -> Iterator[EntityField]:
    """Every labels task of ``project`` that keys its outcomes by a record field (serving's
    entity-key field of that model: ``mlwp.definitions.entity_keys``)."""
    for workflow_name, workflow in project.workflows.items():
        for task_id, task in workflow.tasks.items():
            if isinstance(task, LabelsTask) and "entity_key" in task.columns:
                path = ("workflows", workflow_name, "tasks", task_id, "columns", "entity_key")
                yield EntityField(task.model, task.columns["entity_key"], path)


def definition_json_schema() -> dict[str, Any]:
    """Return the JSON Schema of a definition file (draft 2020-12), for editors and CI."""
    schema = Project.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://mlwp.dev/schemas/workflow.schema.json"
    return schema
