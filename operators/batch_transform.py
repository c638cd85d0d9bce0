"""Batch prediction on SageMaker: ``backend: sagemaker`` on a batch_predict task.

The task compiles to three tasks (see :func:`batch_transform_tasks`), like the SageMaker
training backend:

``<id>_request``  pins the alias's model version, packs that MLflow model as ``model.tar.gz``
                  (content-addressed under ``<root>/<project>/sagemaker/models/``), uploads the
                  source tarball holding the inference handler, writes a manifest of the
                  input's partitions and returns the provider's ``{"Model", "Transform"}``
                  config (CreateModel, CreateTransformJob);
``<id>_job``      the Amazon provider's SageMakerTransformOperator, deferrable: creates the
                  model and the job and waits on the triggerer;
``<id>``          gathers the job's ``<partition>.out`` files into one partitioned,
                  content-addressed dataset with the lineage the local forms write (model,
                  alias, version, input sha256, ``produced_by``) plus the job's name and ARN,
                  and returns the same XCom document.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from operators._common import MlwpOperator, check_choice
from operators.batch_predict import ALIASES, PredictionsCollector, _run_key
from operators.sagemaker import (
    execution_role,
    job_name,
    job_output_base,
    sagemaker_storage,
    upload_source,
)

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context

    from mlwp.definitions import BatchPredictTask

PLAN_KEY = "plan"


class BatchTransformRequestOperator(MlwpOperator):
    """Stage the model, code and input manifest on S3; return the transform job's config."""

    template_fields: Sequence[str] = ("model", "alias", "input", "sagemaker")
    template_fields_renderers = {"sagemaker": "json"}
    ui_color = "#ffe5cc"

    def __init__(
        self,
        *,
        model: str,
        alias: str = "champion",
        input: str | None = None,
        sagemaker: dict[str, Any] | None = None,
        chunk_rows: int = 65_536,
        keys: Sequence[str] = (),
        join_input: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice(self.task_id, "alias", alias, ALIASES)
        self.model = model
        self.alias = alias
        self.input = input
        self.sagemaker = dict(sagemaker or {})
        self.chunk_rows = chunk_rows
        self.keys = list(keys)
        self.join_input = join_input

    def execute(self, context: Context) -> dict[str, Any]:
        import mlflow
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        from mlwp import registry
        from mlwp.data import sagemaker_transform as bt
        from mlwp.data.batch_scoring import Output, OutputColumnsError
        from mlwp.data.partitions import partitions_of
        from mlwp.training import sagemaker as sm
        from operators import _registry

        storage = sagemaker_storage(self)
        _registry.use_tracking_server()
        version = registry.alias_version(self.model, self.alias)
        if version is None:
            raise AirflowFailException(
                f"task {self.task_id!r}: model {self.model!r} has no {self.alias!r} alias yet"
            )
        dataset = self.upstream_document(context, "sha256", self.input)
        sidecar = storage.read_sidecar(dataset["uri"])
        if sidecar.get("partition_by"):
            # SageMaker sends a file's bytes, not its key: Hive folder values would be lost.
            raise AirflowFailException(
                f"task {self.task_id!r}: {dataset['uri']} is partitioned by "
                f"{sidecar['partition_by']} (values in folder names, which SageMaker does not "
                "pass to the container); extract it with rows_per_partition only"
            )
        output = Output.of(self.keys, self.join_input)
        try:  # before a job starts: a missing key would fail every request
            output.check(sidecar.get("columns") or [], f"task {self.task_id!r}: {dataset['uri']}")
        except OutputColumnsError as exc:
            raise AirflowFailException(exc.message) from exc
        partitions = partitions_of(storage, dataset["uri"])
        settings = self.sagemaker
        sizes = {
            p.path or dataset["uri"]: self._size(storage, dataset["uri"], p) for p in partitions
        }
        try:
            bt.check_payloads(sizes, int(settings.get("max_payload_mb", bt.MAX_PAYLOAD_MB)))
        except sm.SageMakerRequestError as exc:
            raise AirflowFailException(f"task {self.task_id!r}: {exc.message}") from exc

        with tempfile.TemporaryDirectory(prefix="mlwp-transform-model-") as folder:
            model_dir = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{self.model}/{version.version}", dst_path=folder
            )
            archive = bt.model_archive(model_dir)
        model_sha = hashlib.sha256(archive).hexdigest()
        model_uri = f"{storage.root}/{self.project}/sagemaker/models/{model_sha}/{bt.MODEL_ARCHIVE}"
        if not storage.exists(model_uri):
            storage.write_bytes(model_uri, archive)

        hook = AwsBaseHook(aws_conn_id=self.aws_conn_id, client_type="sagemaker")
        region = hook.region_name or "us-east-1"
        lineage = self.lineage(context)
        name = job_name(self, lineage)
        base = f"{storage.root}/{self.project}/sagemaker/{name}"
        if partitions[0].path:
            manifest = bt.input_manifest(dataset["uri"], [p.path for p in partitions])
        else:  # a single-file dataset: its one file, relative to its folder
            folder, _, file = dataset["uri"].rpartition("/")
            manifest = bt.input_manifest(folder, [file])
        manifest_uri = f"{base}/input.manifest"
        storage.write_bytes(manifest_uri, manifest)

        spec = bt.TransformSpec(
            role_arn=execution_role(self, hook, settings.get("role_arn")),
            image_uri=settings.get("image_uri") or sm.xgboost_image_uri(region),
            source_uri=upload_source(storage, self.project),
            model_uri=model_uri,
            manifest_uri=manifest_uri,
            output_uri=f"{job_output_base(self, hook, base, name)}/output",
            region=region,
            instance_type=settings.get("instance_type", "ml.m5.xlarge"),
            instance_count=int(settings.get("instance_count", 1)),
            max_payload_mb=int(settings.get("max_payload_mb", bt.MAX_PAYLOAD_MB)),
            max_concurrent_transforms=int(settings.get("max_concurrent_transforms", 1)),
            invocation_timeout_seconds=int(settings.get("invocation_timeout_seconds", 600)),
            invocation_retries=int(settings.get("invocation_retries", 1)),
            chunk_rows=self.chunk_rows,
            output=output.to_dict(),
            subnets=tuple(settings.get("subnets") or ()),
            security_group_ids=tuple(settings.get("security_group_ids") or ()),
            tags={
                "mlwp:project": self.project,
                "mlwp:workflow": self.workflow,
                "mlwp:dag_id": lineage["dag_id"],
                "mlwp:task_id": self.task_id.removesuffix("_request"),
                "mlwp:model": f"{self.model}/{version.version}",
            },
        )
        # One SageMaker model per (model version, archive): named by both, reused by reruns.
        model_name = sm.job_name(
            "mlwp", self.project, self.model, f"v{version.version}", model_sha[:8]
        )
        try:
            config = {
                "Model": bt.model_request(name=model_name, spec=spec),
                "Transform": bt.transform_job_request(name=name, model_name=model_name, spec=spec),
            }
        except sm.SageMakerRequestError as exc:
            raise AirflowFailException(f"task {self.task_id!r}: {exc.message}") from exc
        context["ti"].xcom_push(
            key=PLAN_KEY,
            value={
                "dataset_uri": dataset["uri"],
                "dataset_sha256": dataset["sha256"],
                "partitions": [p.to_dict() for p in partitions],
                "model_version": str(version.version),
                "model_uri": model_uri,
            },
        )
        self.log.info(
            "SageMaker transform job %s: %s partitions of %s with %s version %s on %s x %s",
            name,
            len(partitions),
            dataset["uri"],
            self.model,
            version.version,
            spec.instance_count,
            spec.instance_type,
        )
        return config

    @staticmethod
    def _size(storage: Any, dataset_uri: str, partition: Any) -> int:
        from mlwp.data.partitions import partition_uri

        if partition.bytes:
            return int(partition.bytes)
        fs, path = storage._fs(partition_uri(dataset_uri, partition))
        return int(fs.size(path))


class BatchTransformCollectOperator(PredictionsCollector):
    """Gather the transform job's output files into one partitioned dataset with lineage."""

    template_fields: Sequence[str] = ("job_task_id", "request_task_id", "output_path")
    ui_color = "#f9e79f"

    def __init__(self, *, job_task_id: str, request_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job_task_id = job_task_id
        self.request_task_id = request_task_id

    def execute(self, context: Context) -> dict[str, Any]:
        from mlwp.data import sagemaker_transform as bt
        from mlwp.data.batch_scoring import Output
        from mlwp.data.partitions import Partition, stage_file

        ti = context["ti"]
        plan = ti.xcom_pull(task_ids=self.request_task_id, key=PLAN_KEY)
        job = (ti.xcom_pull(task_ids=self.job_task_id) or {}).get("Transform")
        if not plan or not job:
            raise AirflowFailException(
                f"task {self.task_id!r}: no transform job result from {self.job_task_id!r}"
            )
        storage = sagemaker_storage(self)
        output_uri = job["TransformOutput"]["S3OutputPath"]
        key = _run_key(ti.run_id)
        # The container numbers each request's rows from 0: `row` becomes the position in the
        # dataset here, as the mapped tasks write it.
        row_index = Output.of(self.keys, self.join_input).row_index
        first_row = 0
        staged = []
        for index, document in enumerate(plan["partitions"]):
            partition = Partition.from_dict(document)
            path = partition.path or plan["dataset_uri"].rpartition("/")[2]
            source = bt.output_key(output_uri, path)
            try:
                item = stage_file(
                    storage,
                    source,
                    project=self.project,
                    name=self.task_id,
                    key=key,
                    index=index,
                    first_row=first_row if row_index else None,
                )
            except FileNotFoundError as exc:
                raise AirflowFailException(
                    f"task {self.task_id!r}: transform job {job['TransformJobName']} wrote no "
                    f"output for {path} (expected {source})"
                ) from exc
            if item["rows"] != partition.rows:
                raise AirflowFailException(
                    f"task {self.task_id!r}: transform job {job['TransformJobName']} scored "
                    f"{item['rows']} rows of {path}, which has {partition.rows}"
                )
            staged.append(item)
            first_row += partition.rows
        resources = job.get("TransformResources") or {}
        sagemaker = {
            "job_name": job["TransformJobName"],
            "job_arn": job.get("TransformJobArn"),
            "model_name": job.get("ModelName"),
            "instance_type": resources.get("InstanceType"),
            "instance_count": resources.get("InstanceCount"),
        }
        document = self.publish(
            context,
            storage,
            staged,
            plan=plan,
            metadata={"backend": "sagemaker", "sagemaker": sagemaker},
            how=f"in SageMaker transform job {sagemaker['job_name']}",
        )
        return {**document, "backend": "sagemaker", "sagemaker": sagemaker}


def batch_transform_tasks(
    task: BatchPredictTask, *, task_id: str, context: dict[str, Any], base: dict[str, Any]
) -> tuple[BaseOperator, BaseOperator]:
    """The compiler's entry: request -> provider transform job (deferrable) -> collect.

    The tail keeps ``task_id`` and the outlets, so the asset event and downstream wiring are
    those of a local batch prediction.
    """
    from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTransformOperator

    from mlwp.definitions import BatchTransformSettings

    settings = task.sagemaker or BatchTransformSettings()
    base = {key: value for key, value in base.items() if key != "task_id"}
    outlets = base.pop("outlets", None)
    request_settings = settings.model_dump(
        mode="json", exclude={"aws_conn_id", "invocation_timeout"}, exclude_none=True
    )
    request_settings["invocation_timeout_seconds"] = int(
        settings.invocation_timeout.total_seconds()
    )
    request = BatchTransformRequestOperator(
        task_id=f"{task_id}_request",
        model=task.model,
        alias=task.alias,
        input=task.input,
        sagemaker=request_settings,
        chunk_rows=task.chunk_rows or 65_536,
        keys=task.keys,
        join_input=task.join_input,
        aws_conn_id=settings.aws_conn_id,
        **context,
        **base,
    )
    job = SageMakerTransformOperator(
        task_id=f"{task_id}_job",
        config=request.output,  # type: ignore[arg-type]  # an XComArg, resolved at run time
        aws_conn_id=settings.aws_conn_id,
        wait_for_completion=True,
        deferrable=True,
        # A retried job task starts a new, timestamped job instead of failing on the name.
        check_if_job_exists=True,
        action_if_job_exists="timestamp",
        **{k: v for k, v in base.items() if k != "doc_md"},
    )
    collect = BatchTransformCollectOperator(
        task_id=task_id,
        model=task.model,
        alias=task.alias,
        job_task_id=job.task_id,
        request_task_id=request.task_id,
        output=task.output,
        keys=task.keys,
        join_input=task.join_input,
        aws_conn_id=settings.aws_conn_id,
        outlets=outlets or [],
        **context,
        **base,
    )
    request >> job >> collect
    return request, collect
