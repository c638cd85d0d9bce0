"""Operator extra links: buttons on a task instance that open what the task produced.

Airflow 3 shows an extra link from XCom: after a task ran, the task runner stores each link's
URL under the link's ``xcom_key`` and the api-server only reads that XCom back (it never
imports the operator). mlwp operators store their URLs themselves, as soon as they know
them (:meth:`MlwpLink.persist`): the approve task before it waits for a human, so the
approver can open the model version from the waiting task; the validate task before it
fails, so a failed suite still links to its data docs. ``get_link`` then returns what was
stored, so Airflow's own end-of-task push changes nothing.

Where links point (docs/ui.md):

- MLflow run / model version: the MLflow UI at the address a *browser* reaches
  (``MLWP_MLFLOW_PUBLIC_URL``, default the tracking URL the task used), never an in-cluster
  service name;
- stored dataset, GX data docs: the Models plugin's storage pages inside the Airflow UI
  (``/mlwp/...``, the Airflow session decides who reads them) for anything under the
  platform's storage root; an ``s3://`` URI elsewhere opens the S3 console;
- SageMaker training and tuning jobs: the job's page in the AWS console
  (``operators.sagemaker_jobs``, imported only by DAGs that train on SageMaker).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlencode

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey

# Where the Models plugin mounts its FastAPI app inside the api-server (plugins/mlwp_ui.py).
PLUGIN_PREFIX = "/mlwp"


class MlwpLink(BaseOperatorLink):
    """A link whose URL the task stored in XCom while it ran (empty until then)."""

    name: ClassVar[str]  # type: ignore[misc]

    @classmethod
    def persist(cls, context: Context, url: str | None) -> None:
        """Store ``url`` as this link of the running task (nothing when there is no URL)."""
        if url:
            context["ti"].xcom_push(key=cls().xcom_key, value=url)

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        value = XCom.get_value(ti_key=ti_key, key=self.xcom_key)
        return value if isinstance(value, str) else ""


class MLflowRunLink(MlwpLink):
    """The MLflow run a train task logged (parent run of the tuning trials)."""

    name = "MLflow run"


class MLflowModelVersionLink(MlwpLink):
    """The registered model version a register, approve or deploy task acted on."""

    name = "MLflow model version"


class DataDocsLink(MlwpLink):
    """The Great Expectations data docs of a validate task's suite."""

    name = "GX data docs"


class DatasetLink(MlwpLink):
    """The dataset(s) an extract or transform task stored, with their sidecar metadata."""

    name = "Stored dataset"


class SageMakerJobLink(MlwpLink):
    """The SageMaker training or tuning job in the AWS console."""

    name = "SageMaker job"


# ---------------------------------------------------------------------------- URL builders


def mlflow_public_url() -> str:
    """The MLflow UI as a browser reaches it: ``MLWP_MLFLOW_PUBLIC_URL``, else the tracking URL."""
    from mlwp.settings import get_settings
    from operators._common import mlflow_tracking_uri

    return (get_settings().mlflow_public_url or mlflow_tracking_uri()).rstrip("/")


def mlflow_run_url(run_id: str | None, experiment_id: str | None) -> str | None:
    """The MLflow UI page of a run (None without a run id)."""
    if not run_id:
        return None
    base = mlflow_public_url()
    if experiment_id:
        return f"{base}/#/experiments/{quote(str(experiment_id), safe='')}/runs/{run_id}"
    return f"{base}/#/runs/{run_id}"


def mlflow_model_version_url(model: str | None, version: Any) -> str | None:
    """The MLflow UI page of a registered model version (None without both)."""
    if not model or version in (None, ""):
        return None
    return (
        f"{mlflow_public_url()}/#/models/{quote(model, safe='')}"
        f"/versions/{quote(str(version), safe='')}"
    )


def airflow_path(path: str) -> str:
    """``path`` under the api-server's base path (``[api] base_url``), as a same-origin link."""
    from urllib.parse import urlparse

    from airflow.configuration import conf

    base = urlparse(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    return f"{base}{path}"


def storage_relative(uri: str) -> str | None:
    """``uri``'s path under the platform's storage root, or None when it lies elsewhere."""
    from mlwp.settings import get_settings

    root = get_settings().storage_uri.rstrip("/") + "/"
    return uri[len(root) :] if uri.startswith(root) and ".." not in uri.split("/") else None


def s3_console_url(uri: str) -> str | None:
    """The S3 console page of an ``s3://`` object (None for other schemes)."""
    if not uri.startswith("s3://"):
        return None
    bucket, _, key = uri[len("s3://") :].partition("/")
    return f"https://s3.console.aws.amazon.com/s3/object/{bucket}?{urlencode({'prefix': key})}"


def storage_file_url(uri: str | None) -> str | None:
    """A stored file as served by the Models plugin (data docs), or the S3 console."""
    if not uri:
        return None
    relative = storage_relative(uri)
    if relative is not None:
        return airflow_path(f"{PLUGIN_PREFIX}/storage/{quote(relative)}")
    return s3_console_url(uri)


def dataset_url(*uris: str) -> str | None:
    """The Models plugin's page of one or more stored datasets (sidecar, schema, validation)."""
    relative = [storage_relative(uri) for uri in uris if uri]
    if relative and all(r is not None for r in relative):
        query = urlencode([("path", r) for r in relative if r is not None])
        return airflow_path(f"{PLUGIN_PREFIX}/datasets?{query}")
    return s3_console_url(uris[0]) if uris else None


def sagemaker_console_url(job_name: str | None, region: str | None, *, tuning: bool) -> str | None:
    """The AWS console page of a SageMaker training or hyperparameter tuning job."""
    if not job_name or not region:
        return None
    page = "hyper-tuning-jobs" if tuning else "jobs"
    return (
        f"https://{region}.console.aws.amazon.com/sagemaker/home"
        f"?region={region}#/{page}/{quote(job_name, safe='')}"
    )
