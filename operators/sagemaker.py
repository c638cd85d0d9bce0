"""The SageMaker training backend: ``backend: sagemaker`` on a train task.

A train task with this backend compiles to three tasks (see :func:`sagemaker_train_tasks`):

``<id>_request``  stages the splits as S3 channels, uploads the entry point's source tarball
                  and builds the CreateTrainingJob (or CreateHyperParameterTuningJob) request;
``<id>_job``      the Amazon provider's SageMakerTrainingOperator or SageMakerTuningOperator,
                  deferrable, submitting that request and waiting on the triggerer;
``<id>``          fetches model.tar.gz of the (best) job and logs it to MLflow exactly as the
                  local backend does, adding the job's name, ARN, instance type and billable
                  seconds. Downstream tasks see the same XCom document as with ``local``.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from mlwp.definitions import SageMakerSettings
from operators._common import MlwpOperator, mlflow_tracking_uri
from operators.links import MLflowRunLink, SageMakerJobLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context

    from mlwp.data.storage import Storage
    from mlwp.definitions import TrainTask

DEFAULT_AWS_CONN_ID = "aws_default"
# Where an execution role is found when the definition does not name one.
ROLE_EXTRA_KEY = "sagemaker_role_arn"
# Where jobs write model.tar.gz and checkpoints when not under the storage root: a bucket of
# its own lets the execution role read the data bucket and write only there (terraform/).
OUTPUT_ROOT_EXTRA_KEY = "sagemaker_output_root"
MODEL_ARCHIVE = "model.tar.gz"


def sagemaker_storage(operator: MlwpOperator) -> Storage:
    """The task's storage, which a SageMaker job reads and writes: refused unless on S3."""
    storage = operator.storage()
    if not storage.root.startswith("s3://"):
        raise AirflowFailException(
            f"task {operator.task_id!r}: backend sagemaker reads its input from S3, but the "
            f"storage root is {storage.root!r}; set the project's storage root (or "
            "MLWP_STORAGE_ROOT) to an s3:// URI"
        )
    return storage


def upload_source(storage: Storage, project: str) -> str:
    """Upload the source tarball (entry point, inference handler, ``mlwp/``) once per content."""
    from mlwp.training import sagemaker as sm

    code = sm.source_tarball()
    sha256 = hashlib.sha256(code).hexdigest()
    code_uri = f"{storage.root}/{project}/code/{sha256}/{sm.SOURCE_TARBALL}"
    if not storage.exists(code_uri):
        storage.write_bytes(code_uri, code)
    return code_uri


def execution_role(operator: Any, hook: Any, role_arn: str | None) -> str:
    """The definition's execution role, else the one in the AWS connection's extra."""
    role = role_arn or hook.conn_config.extra_config.get(ROLE_EXTRA_KEY)
    if not role:
        raise AirflowFailException(
            f"task {operator.task_id!r}: no SageMaker execution role: set sagemaker.role_arn in "
            f"the definition or '{ROLE_EXTRA_KEY}' in the extra of connection "
            f"{operator.aws_conn_id!r}"
        )
    return str(role)


def job_output_base(operator: Any, hook: Any, base: str, name: str) -> str:
    """Where job ``name`` writes: under ``sagemaker_output_root`` when the connection sets
    one (a bucket the execution role may write), else ``base`` under the storage root."""
    output_root = hook.conn_config.extra_config.get(OUTPUT_ROOT_EXTRA_KEY)
    if not output_root:
        return base
    if not str(output_root).startswith("s3://"):
        raise AirflowFailException(
            f"task {operator.task_id!r}: '{OUTPUT_ROOT_EXTRA_KEY}' in the extra of connection "
            f"{operator.aws_conn_id!r} must be an s3:// URI, got {output_root!r}"
        )
    return f"{str(output_root).rstrip('/')}/{operator.project}/sagemaker/{name}"


def job_name(operator: MlwpOperator, lineage: dict[str, Any]) -> str:
    """The SageMaker job name of a ``<task>_request`` task's job: per run and try, so a retry
    starts a new job (SageMaker names are unique and final)."""
    from mlwp.training import sagemaker as sm

    task = operator.task_id.removesuffix("_request")
    run_hash = hashlib.sha256(lineage["run_id"].encode()).hexdigest()[:8]
    return sm.job_name("mlwp", operator.project, task, run_hash, str(lineage["try_number"]))


class SageMakerRequestOperator(MlwpOperator):
    """Stage the channels and code on S3 and return the SageMaker request for the job task."""

    template_fields: Sequence[str] = ("target", "hyperparameters", "sagemaker", "tuning")
    template_fields_renderers = {"hyperparameters": "json", "sagemaker": "json", "tuning": "json"}
    ui_color = "#ffe5cc"

    def __init__(
        self,
        *,
        target: str,
        objective: str,
        hyperparameters: dict[str, Any],
        sagemaker: dict[str, Any] | None = None,
        tuning: dict[str, Any] | None = None,
        input: str | None = None,
        aws_conn_id: str = DEFAULT_AWS_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.target = target
        self.objective = objective
        self.hyperparameters = hyperparameters
        self.sagemaker = dict(sagemaker or {})
        self.tuning = tuning
        self.input = input
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        from mlwp.data.partitions import copy_dataset, partitions_of
        from mlwp.training import sagemaker as sm
        from mlwp.training.metrics import METRICS_BY_OBJECTIVE

        storage = sagemaker_storage(self)
        features = self.upstream_document(context, "splits", self.input)
        hook = AwsBaseHook(aws_conn_id=self.aws_conn_id, client_type="sagemaker")
        region = hook.region_name or "us-east-1"
        lineage = self.lineage(context)
        name = job_name(self, lineage)
        base = f"{storage.root}/{self.project}/sagemaker/{name}"
        output_base = job_output_base(self, hook, base, name)

        settings = self.sagemaker
        instance_count = int(settings.get("instance_count", 1))
        train_files = len(partitions_of(storage, features["splits"]["train"]["uri"]))
        if instance_count > train_files:
            # ShardedByS3Key hands out whole objects: a host without one has no data.
            raise AirflowFailException(
                f"task {self.task_id!r}: sagemaker.instance_count {instance_count} is more than "
                f"the {train_files} file(s) of the train split; every host needs at least one: "
                "lower instance_count, or partition the data (rows_per_partition on the extract)"
            )
        channels: dict[str, str] = {}
        for split, document in features["splits"].items():
            # One object per partition file, copied 1 MiB at a time: the unit ShardedByS3Key
            # distributes over the hosts.
            channels[split] = f"{base}/input/{split}"
            copy_dataset(storage, document["uri"], channels[split])
        if features.get("preprocessing_uri"):
            # A sharded train channel would hand the file to one host only: with several
            # instances it is a (replicated) channel of its own.
            if instance_count > 1:
                channels["preprocessing"] = f"{base}/input/preprocessing"
            storage.write_bytes(
                f"{channels['preprocessing' if instance_count > 1 else 'train']}/"
                "preprocessing.json",
                storage.read_bytes(features["preprocessing_uri"]),
            )
        code_uri = upload_source(storage, self.project)
        role_arn = execution_role(self, hook, settings.get("role_arn"))
        spec = sm.SageMakerJobSpec(
            role_arn=role_arn,
            image_uri=settings.get("image_uri") or sm.xgboost_image_uri(region),
            source_uri=code_uri,
            output_uri=f"{output_base}/output",
            instance_type=settings.get("instance_type", "ml.m5.large"),
            instance_count=instance_count,
            volume_size_gb=int(settings.get("volume_size_gb", 30)),
            max_runtime_seconds=int(settings.get("max_runtime_seconds", 7200)),
            spot=bool(settings.get("spot", False)),
            max_wait_seconds=settings.get("max_wait_seconds"),
            checkpoint_uri=f"{output_base}/checkpoints" if settings.get("spot") else None,
            subnets=tuple(settings.get("subnets") or ()),
            security_group_ids=tuple(settings.get("security_group_ids") or ()),
            tags={
                "mlwp:project": self.project,
                "mlwp:workflow": self.workflow,
                "mlwp:dag_id": lineage["dag_id"],
                "mlwp:task_id": self.task_id.removesuffix("_request"),
            },
        )
        metrics = [f"validation:{m}" for m in METRICS_BY_OBJECTIVE[self.objective]]
        try:
            if self.tuning:
                tuning = self.tuning
                request = sm.tuning_job_request(
                    name=name,
                    spec=spec,
                    static_hyperparameters=self.hyperparameters,
                    channels=channels,
                    metrics=metrics,
                    objective_metric=f"validation:{tuning.get('metric', 'roc_auc')}",
                    direction=tuning.get("direction", "maximize"),
                    ranges=tuning["ranges"],
                    max_jobs=int(tuning.get("trials", 10)),
                    max_parallel_jobs=int(tuning.get("parallel", 1)),
                    strategy=tuning.get("strategy", "bayesian"),
                    seed=self.hyperparameters.get("seed"),
                )
            else:
                request = sm.training_job_request(
                    name=name,
                    spec=spec,
                    hyperparameters=self.hyperparameters,
                    channels=channels,
                    metrics=metrics,
                )
        except sm.SageMakerRequestError as exc:
            raise AirflowFailException(f"task {self.task_id!r}: {exc.message}") from exc
        self.log.info(
            "SageMaker %s job %s, channels %s",
            "tuning" if self.tuning else "training",
            name,
            channels,
        )
        return request


class SageMakerModelOperator(MlwpOperator):
    """Fetch the job's model.tar.gz and log it to MLflow like the local backend does."""

    template_fields: Sequence[str] = ("job_task_id",)
    ui_color = "#e8daef"
    operator_extra_links = (MLflowRunLink(), SageMakerJobLink())

    def __init__(
        self,
        *,
        job_task_id: str,
        objective: str,
        target: str,
        hyperparameters: dict[str, Any],
        experiment: str | None = None,
        aws_conn_id: str = DEFAULT_AWS_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_task_id = job_task_id
        self.objective = objective
        self.target = target
        self.hyperparameters = hyperparameters
        self.experiment = experiment
        self.aws_conn_id = aws_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        import mlflow
        from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

        from mlwp.training.tracking import experiment_id as tracking_experiment_id
        from mlwp.training.tracking import log_model_run
        from operators.links import mlflow_run_url, sagemaker_console_url

        result = context["ti"].xcom_pull(task_ids=self.job_task_id) or {}
        hook = SageMakerHook(aws_conn_id=self.aws_conn_id)
        if "Tuning" in result:
            best = result["Tuning"].get("BestTrainingJob") or {}
            if not best.get("TrainingJobName"):
                raise AirflowFailException(
                    f"task {self.task_id!r}: tuning job "
                    f"{result['Tuning'].get('HyperParameterTuningJobName')!r} has no best "
                    "training job"
                )
            job = hook.describe_training_job(best["TrainingJobName"])
        elif "Training" in result:
            job = result["Training"]
        else:
            raise AirflowFailException(
                f"task {self.task_id!r}: task {self.job_task_id!r} returned no SageMaker job"
            )
        SageMakerJobLink.persist(
            context,
            sagemaker_console_url(
                (result.get("Tuning") or {}).get("HyperParameterTuningJobName")
                or job["TrainingJobName"],
                hook.conn_region_name,
                tuning="Tuning" in result,
            ),
        )
        storage = sagemaker_storage(self)
        artifact = job["ModelArtifacts"]["S3ModelArtifacts"]
        model_dir = Path(tempfile.mkdtemp(prefix="mlwp-sagemaker-model-"))
        extract_model_archive(storage.read_bytes(artifact), model_dir)

        from mlwp.training.local import StoredSplit

        features = self.upstream_document(context, "splits")
        # A seeded sample (all rows of a small split) for the input example, plots and drift
        # baseline: a split trained on several hosts need not fit in this worker.
        splits = {n: StoredSplit(storage, d["uri"]).sample() for n, d in features["splits"].items()}
        metrics = {m["MetricName"]: float(m["Value"]) for m in job.get("FinalMetricDataList", [])}
        lineage = self.lineage(context)
        train_split = features["splits"]["train"]
        tags = {
            "mlwp.backend": "sagemaker",
            "mlwp.project": self.project,
            "mlwp.workflow": self.workflow,
            "mlwp.dag_id": lineage["dag_id"],
            "mlwp.airflow_run_id": lineage["run_id"],
            "mlwp.task_id": self.task_id,
            "mlwp.dataset_uri": train_split["uri"],
            "mlwp.dataset_sha256": train_split["sha256"],
            "mlwp.sagemaker.job_name": job["TrainingJobName"],
            "mlwp.sagemaker.job_arn": job.get("TrainingJobArn", ""),
            "mlwp.sagemaker.instance_type": job.get("ResourceConfig", {}).get("InstanceType", ""),
            "mlwp.sagemaker.billable_seconds": str(job.get("BillableTimeInSeconds", "")),
            "mlwp.sagemaker.model_artifact": artifact,
        }
        mlflow.set_tracking_uri(mlflow_tracking_uri())
        client = mlflow.MlflowClient()
        experiment = self.experiment or lineage["dag_id"]
        experiment_id = tracking_experiment_id(client, experiment)
        run = client.create_run(
            experiment_id, run_name=f"{lineage['run_id']}.{self.task_id}", tags=tags
        )
        try:
            tracked = log_model_run(
                run.info.run_id,
                model_dir,
                splits=splits,
                metrics=metrics,
                params=self.hyperparameters,
            )
        except BaseException:
            client.set_terminated(run.info.run_id, status="FAILED")
            raise
        client.set_terminated(run.info.run_id)
        MLflowRunLink.persist(context, mlflow_run_url(tracked.run_id, tracked.experiment_id))
        # Same shape as TrainOperator's document, so evaluate/register do not care.
        return {
            "run_id": tracked.run_id,
            "experiment_id": tracked.experiment_id,
            "model_uri": tracked.model_uri,
            "model_id": tracked.model_id,
            "metrics": metrics,
            "hyperparameters": self.hyperparameters,
            "objective": self.objective,
            "target": self.target,
            "backend": "sagemaker",
            "sagemaker": {
                "job_name": job["TrainingJobName"],
                "job_arn": job.get("TrainingJobArn"),
                "instance_type": tags["mlwp.sagemaker.instance_type"],
                "billable_seconds": job.get("BillableTimeInSeconds"),
            },
            "tuning": None,
            "splits": features["splits"],
            "preprocessing_uri": features.get("preprocessing_uri"),
            "input": features.get("input"),
            "validation": features.get("validation"),
            "task_id": self.task_id,
        }


def extract_model_archive(archive: bytes, destination: Path) -> None:
    """Unpack SageMaker's model.tar.gz, refusing members that would land outside it."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(destination, filter="data")


def sagemaker_train_tasks(
    *,
    task_id: str,
    target: str,
    objective: str,
    hyperparameters: dict[str, Any],
    sagemaker: dict[str, Any] | None,
    tuning: dict[str, Any] | None,
    input: str | None,
    project: str,
    workflow: str | None = None,
    project_dir: str | None = None,
    aws_conn_id: str = DEFAULT_AWS_CONN_ID,
    **base: Any,
) -> tuple[BaseOperator, BaseOperator]:
    """Build the request -> job -> model tasks of a SageMaker train task; return (head, tail).

    ``base`` holds the usual BaseOperator arguments (dag, retries, execution_timeout...).
    The tail keeps ``task_id``, so downstream tasks and their XCom lookups are unchanged.
    """
    from operators.sagemaker_jobs import SageMakerTrainingJobOperator, SageMakerTuningJobOperator

    context = {"project": project, "workflow": workflow, "project_dir": project_dir}
    base.pop("outlets", None)
    request = SageMakerRequestOperator(
        task_id=f"{task_id}_request",
        target=target,
        objective=objective,
        hyperparameters=hyperparameters,
        sagemaker=sagemaker,
        tuning=tuning,
        input=input,
        aws_conn_id=aws_conn_id,
        **context,
        **base,
    )
    job_args: dict[str, Any] = {
        "task_id": f"{task_id}_job",
        "config": request.output,
        "aws_conn_id": aws_conn_id,
        "wait_for_completion": True,
        "deferrable": True,
        **{k: v for k, v in base.items() if k != "doc_md"},
    }
    if tuning:
        job: BaseOperator = SageMakerTuningJobOperator(**job_args)
    else:
        # A retried job task starts a new, timestamped job instead of failing on the name.
        job = SageMakerTrainingJobOperator(
            **job_args, check_if_job_exists=True, action_if_job_exists="timestamp"
        )
    model = SageMakerModelOperator(
        task_id=task_id,
        job_task_id=job.task_id,
        objective=objective,
        target=target,
        hyperparameters=hyperparameters,
        aws_conn_id=aws_conn_id,
        **context,
        **base,
    )
    request >> job >> model
    return request, model


def sagemaker_tasks_for(
    task: TrainTask, *, task_id: str, context: dict[str, Any], base: dict[str, Any]
) -> tuple[BaseOperator, BaseOperator]:
    """The compiler's entry: the three tasks of a definition's ``backend: sagemaker`` train."""
    from mlwp.training.pipeline import hyperparameters_of

    settings = task.sagemaker or SageMakerSettings()
    base = {key: value for key, value in base.items() if key != "task_id"}
    request_settings: dict[str, Any] = {
        "instance_type": settings.instance_type,
        "instance_count": settings.instance_count,
        "volume_size_gb": settings.volume_size_gb,
        "max_runtime_seconds": int(settings.max_runtime.total_seconds()),
        "role_arn": settings.role_arn,
        "image_uri": settings.image_uri,
        "spot": settings.spot,
        "max_wait_seconds": int(settings.max_wait.total_seconds()) if settings.max_wait else None,
        "subnets": list(settings.subnets),
        "security_group_ids": list(settings.security_group_ids),
    }
    hyperparameters = hyperparameters_of(
        target=task.target,
        objective=task.objective,
        params=task.params,
        num_boost_round=task.num_boost_round,
        early_stopping_rounds=task.early_stopping_rounds,
        threshold=task.threshold,
        seed=task.seed,
        data=task.data,
    )
    return sagemaker_train_tasks(
        task_id=task_id,
        target=task.target,
        objective=task.objective,
        hyperparameters=hyperparameters,
        sagemaker={k: v for k, v in request_settings.items() if v is not None},
        tuning=task.tuning.model_dump(mode="json") if task.tuning else None,
        input=task.input,
        aws_conn_id=settings.aws_conn_id,
        **context,
        **base,
    )
