"""What every mlwp operator shares: project context, storage, upstream documents, assets.

Operators pass small JSON documents through XCom (``return_value``): a dataset document
(:meth:`mlwp.data.storage.DatasetRef.to_dict`), a transform document (``splits`` of dataset
documents plus ``preprocessing_uri``), a training document (``run_id``, ``model_uri``,
``metrics``), a registration document (``model``, ``version``). A task finds its input in the
task its ``input`` field names, else in the nearest upstream task whose document has the key
it needs (the single one; two candidates at the same distance are an error asking for
``input``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

if TYPE_CHECKING:
    from airflow.sdk import Context

    from mlwp.data.storage import Storage

# Fields every operator takes besides its task type's own (docs/contracts.md).
CONTEXT_FIELDS = ("project", "workflow", "project_dir")

# MLflow draws progress bars ("Downloading artifacts: 33%|...") on stderr, and Airflow's task
# supervisor logs a task's stderr at ERROR: a clean run would show error lines. Tasks need no
# progress bar; an explicit setting is kept.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class MlwpOperator(BaseOperator):
    """Base of the mlwp operators: stores the project context and resolves shared things."""

    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        project: str,
        workflow: str | None = None,
        project_dir: str | None = None,
        storage_root: str | None = None,
        aws_conn_id: str = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not project:
            raise ValueError(f"task {self.task_id!r}: 'project' is required")
        self.project = project
        self.workflow = workflow or (self.dag_id.split(".", 1)[-1] if self.has_dag() else "")
        self.project_dir = project_dir
        self.storage_root = storage_root
        self.aws_conn_id = aws_conn_id

    # ------------------------------------------------------------------ shared resources

    def storage(self) -> Storage:
        """The storage of this task: ``storage_root`` if given, else the platform's.

        An ``s3://`` root is reached with the credentials, region and endpoint of the Airflow
        AWS connection ``aws_conn_id`` (``aws_default``), like every Amazon provider operator.
        """
        from mlwp.data.storage import Storage, default_storage

        storage = default_storage(self.storage_root)
        if storage.root.startswith("s3://"):
            return Storage(storage.root, **s3_storage_options(self.aws_conn_id))
        return storage

    def lineage(self, context: Context) -> dict[str, Any]:
        """Identifiers tying what this task produces to the Airflow run that produced it."""
        ti = context["ti"]
        return {
            "project": self.project,
            "workflow": self.workflow,
            "dag_id": ti.dag_id,
            "run_id": ti.run_id,
            "task_id": ti.task_id,
            "try_number": ti.try_number,
        }

    # ------------------------------------------------------------------ upstream documents

    def upstream_document(
        self, context: Context, key: str, input_task_id: str | None = None
    ) -> dict[str, Any]:
        """Return the XCom document of the upstream task that provides ``key``.

        ``input_task_id`` (the definition's ``input``) wins; otherwise the nearest upstream
        task whose ``return_value`` has ``key`` is used.
        """
        ti = context["ti"]
        if input_task_id:
            document = ti.xcom_pull(task_ids=input_task_id)
            if not isinstance(document, dict) or key not in document:
                raise AirflowException(
                    f"task {self.task_id!r}: input task {input_task_id!r} produced no {key!r} "
                    f"(got {_shape(document)})"
                )
            return document
        level: list[str] = sorted(self.upstream_task_ids)
        seen: set[str] = set()
        while level:
            found: dict[str, dict[str, Any]] = {}
            for task_id in level:
                document = ti.xcom_pull(task_ids=task_id)
                if isinstance(document, dict) and key in document:
                    found[task_id] = document
            if len(found) == 1:
                return next(iter(found.values()))
            if len(found) > 1:
                raise AirflowException(
                    f"task {self.task_id!r}: several upstream tasks provide {key!r} "
                    f"({', '.join(sorted(found))}); set 'input' to choose one"
                )
            seen.update(level)
            level = sorted(_parents(self, level) - seen)
        raise AirflowException(
            f"task {self.task_id!r}: no upstream task provides {key!r}; add the producing task "
            "to 'after' or set 'input'"
        )

    # ------------------------------------------------------------------ assets, metrics

    def emit_dataset_event(self, context: Context, extra: dict[str, Any]) -> None:
        """Attach ``extra`` (small JSON) to the asset events of this task's outlets."""
        outlet_events = context["outlet_events"]
        for outlet in self.outlets:
            outlet_events[outlet].extra = dict(extra)

    def stat(self, kind: str, name: str, value: float | int = 1) -> None:
        """Send a statsd metric named ``mlwp.<name>`` (a no-op unless statsd is on)."""
        from airflow.sdk.observability.stats import Stats

        metric = f"mlwp.{name}"
        tags = {"project": self.project, "workflow": self.workflow, "task": self.task_id}
        if kind == "gauge":
            Stats.gauge(metric, value, tags=tags)
        elif kind == "timing":
            Stats.timing(metric, value, tags=tags)
        else:
            Stats.incr(metric, int(value), tags=tags)


def _parents(operator: BaseOperator, task_ids: Iterable[str]) -> set[str]:
    dag = operator.dag
    parents: set[str] = set()
    for task_id in task_ids:
        parents.update(dag.get_task(task_id).upstream_task_ids)
    return parents


def _shape(document: Any) -> str:
    if isinstance(document, dict):
        return "keys " + ", ".join(sorted(document)) if document else "an empty document"
    return "nothing" if document is None else type(document).__name__


def s3_storage_options(aws_conn_id: str) -> dict[str, Any]:
    """fsspec (s3fs) options from an Airflow AWS connection: credentials, region, endpoint.

    With no explicit credentials (IRSA on EKS, an instance profile), only region and endpoint
    are passed and s3fs uses the default credential chain, as boto3 would.
    """
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="s3")
    client_kwargs: dict[str, Any] = {}
    if hook.region_name:
        client_kwargs["region_name"] = hook.region_name
    if hook.conn_config.endpoint_url:
        client_kwargs["endpoint_url"] = hook.conn_config.endpoint_url
    options: dict[str, Any] = {"client_kwargs": client_kwargs} if client_kwargs else {}
    credentials = hook.get_credentials()
    if credentials is not None and credentials.access_key:
        options.update(key=credentials.access_key, secret=credentials.secret_key)
        if credentials.token:
            options["token"] = credentials.token
    return options


def check_choice(task_id: str, field: str, value: Any, allowed: Iterable[str]) -> None:
    """Refuse an enum-like argument, naming the field, the value and the allowed values."""
    choices = tuple(allowed)
    if value not in choices:
        raise ValueError(
            f"task {task_id!r}: {field} must be one of {', '.join(choices)}, got {value!r}"
        )


def mlflow_tracking_uri() -> str:
    """The MLflow tracking server: ``MLFLOW_TRACKING_URI`` if set, else the platform's."""
    from mlwp.settings import get_settings

    return os.environ.get("MLFLOW_TRACKING_URI") or get_settings().mlflow_url


def to_jsonable(value: Any) -> Any:
    """Plain JSON values for XCom and asset extras (numpy scalars, tuples, NaN handled)."""
    from mlwp.data.validation import jsonable

    return jsonable(value)
