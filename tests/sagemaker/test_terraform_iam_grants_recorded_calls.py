"""terraform/iam.tf grants what the SageMaker code paths call, and nothing beyond a listed margin.

The churn DAG with ``backend: sagemaker`` runs through ``dag.test()`` against moto in server
mode, laid out as terraform/ lays out production: the storage root is the data bucket, jobs
write to the models bucket (``sagemaker_output_root``), the execution role is the one passed.
Then a ``batch_predict`` with ``backend: sagemaker`` scores a partitioned extract with the model
it registered (a Batch Transform job). Every AWS call is recorded before it is sent
(tests/aws_calls.py): the Airflow tasks' and the triggerer's as the ``airflow_worker`` role, the
training and transform containers' (played by sagemaker_emulator) as the SageMaker execution
role. Each call is translated into the IAM
authorizations AWS checks, and the statements of terraform/iam.tf, parsed with python-hcl2
and resolved to this run's ARNs, must allow every one. Conversely, every action a statement
grants must be needed by a recorded call or be listed in MARGIN with its reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aws_calls import (
    ACCOUNT,
    KMS_KEY_ARN,
    REGION,
    AwsCallRecorder,
    Permission,
    allowed,
    required_permissions,
    used_grants,
)
from churn_sagemaker import (
    EXECUTION_ROLE_ARN,
    aws_connection,
    batch_transform_dag,
    churn_sagemaker_dag,
    moto_client,
)
from sagemaker_emulator import install_into_moto
from terraform_hcl import TERRAFORM, load_module, resolve

# A whole DAG on a loaded machine: give it room beyond the suite's default.
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BUCKETS = {key: f"mlwp-iam-{key}" for key in ("data", "models", "artifacts", "logs")}

# Which locals of terraform/iam.tf make up each role checked here.
ROLE_STATEMENTS = {
    "airflow_worker": ("airflow_worker_permissions", "airflow_secrets_backend_permissions"),
    "sagemaker_execution": ("sagemaker_execution_permissions", "sagemaker_vpc_permissions"),
}

# Granted although no recorded call needs it: (statement id, action) -> why.
MARGIN: dict[str, dict[tuple[str, str], str]] = {
    "airflow_worker": {
        ("SageMakerJobs", "sagemaker:CreateHyperParameterTuningJob"): "the tuning path "
        "(tuning: in a definition); moto runs no tuning job, the request is checked by "
        "botocore in test_requests.py",
        ("SageMakerJobs", "sagemaker:DescribeHyperParameterTuningJob"): "the tuning path: the "
        "triggerer waits on the tuning job",
        ("SageMakerJobs", "sagemaker:ListTrainingJobsForHyperParameterTuningJob"): "the tuning "
        "path: the provider's tuning operator lists the trials of a finished job",
        ("SageMakerJobs", "sagemaker:StopHyperParameterTuningJob"): "on_kill: a cleared or "
        "timed-out tuning task stops its job instead of leaving it billing",
        ("SageMakerJobs", "sagemaker:StopTrainingJob"): "on_kill: a cleared or timed-out "
        "training task stops its job",
        ("TaskLogsList", "s3:ListBucket"): "Airflow's S3 task handler (remote logging), not "
        "configured under dag.test()",
        ("TaskLogsObjects", "s3:GetObject"): "Airflow's S3 task handler reads a task's earlier "
        "log before appending",
        ("TaskLogsObjects", "s3:PutObject"): "Airflow's S3 task handler uploads the task log",
        ("TrainingJobLogs", "logs:GetLogEvents"): "reads the job's log once SageMaker has "
        "written a stream; moto's log group is empty, so only DescribeLogStreams runs",
        ("AirflowSecretsBackend", "secretsmanager:GetSecretValue"): "Airflow's Secrets "
        "Manager backend reads the aws_default connection in production "
        "(MLWP_SECRETS_MANAGER_REGION); here it comes from AIRFLOW_CONN_AWS_DEFAULT",
    },
    "sagemaker_execution": {
        ("ModelsBucketList", "s3:ListBucket"): "checkpoint sync of spot jobs lists what an "
        "interrupted job left (the emulator runs no spot job)",
        ("WriteModelsAndCheckpoints", "s3:GetObject"): "checkpoint sync downloads the "
        "checkpoints of an interrupted spot job",
        ("TrainingLogs", "logs:CreateLogGroup"): "SageMaker writes the container's stdout to "
        "/aws/sagemaker/TrainingJobs; the emulator keeps it in memory",
        ("TrainingLogs", "logs:CreateLogStream"): "as above, one stream per job instance",
        ("TrainingLogs", "logs:DescribeLogStreams"): "as above",
        ("TrainingLogs", "logs:PutLogEvents"): "as above",
        ("TransformLogs", "logs:CreateLogGroup"): "SageMaker writes the transform "
        "container's stdout to /aws/sagemaker/TransformJobs; the emulator keeps it in memory",
        ("TransformLogs", "logs:CreateLogStream"): "as above, one stream per instance",
        ("TransformLogs", "logs:DescribeLogStreams"): "as above",
        ("TransformLogs", "logs:PutLogEvents"): "as above",
        ("TrainingMetrics", "cloudwatch:PutMetricData"): "SageMaker publishes the metric "
        "definitions' values to CloudWatch; the emulator fills FinalMetricDataList only",
        ("RegistryLogin", "ecr:GetAuthorizationToken"): "pulling the training image; the "
        "emulator runs the entry point in this Python instead",
        ("PullTrainingImage", "ecr:BatchCheckLayerAvailability"): "pulling the training image",
        ("PullTrainingImage", "ecr:BatchGetImage"): "pulling the training image",
        ("PullTrainingImage", "ecr:GetDownloadUrlForLayer"): "pulling the training image",
        ("TrainInVpc", "ec2:CreateNetworkInterface"): "only with sagemaker_vpc_access: "
        "SageMaker attaches the job's instances to the VPC",
        ("TrainInVpc", "ec2:CreateNetworkInterfacePermission"): "as above",
        ("TrainInVpc", "ec2:DeleteNetworkInterface"): "as above",
        ("TrainInVpc", "ec2:DeleteNetworkInterfacePermission"): "as above",
        ("TrainInVpc", "ec2:DescribeDhcpOptions"): "as above",
        ("TrainInVpc", "ec2:DescribeNetworkInterfaces"): "as above",
        ("TrainInVpc", "ec2:DescribeSecurityGroups"): "as above",
        ("TrainInVpc", "ec2:DescribeSubnets"): "as above",
        ("TrainInVpc", "ec2:DescribeVpcs"): "as above",
    },
}


def _statements(role: str) -> dict[str, dict[str, Any]]:
    """The role's statements from terraform/iam.tf, resolved to this run's ARNs."""
    module = load_module(TERRAFORM)
    substitutions: dict[str, Any] = {
        "local.region": REGION,
        "local.partition": "aws",
        "local.account_id": ACCOUNT,
        "aws_kms_key.this.arn": KMS_KEY_ARN,
        "module.sagemaker_execution_role.arn": EXECUTION_ROLE_ARN,
        "var.name": "mlwp-iam",
        **{f"local.bucket_arns.{key}": f"arn:aws:s3:::{name}" for key, name in BUCKETS.items()},
    }
    statements: dict[str, dict[str, Any]] = {}
    for local_name in ROLE_STATEMENTS[role]:
        for sid, statement in resolve(module.locals[local_name], module, substitutions).items():
            assert sid not in statements, f"{role}: statement id {sid} used twice"
            statements[sid] = statement
    return statements


@pytest.fixture(scope="module")
def role_statements() -> dict[str, dict[str, dict[str, Any]]]:
    """Parsed before the DAG runs: python-hcl2 builds its parser slowly on a loaded machine."""
    return {role: _statements(role) for role in ROLE_STATEMENTS}


@pytest.fixture
def recorded(
    role_statements: dict[str, dict[str, dict[str, Any]]],
    aws_env: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mlflow_tracking: str,
    dag_runner: Any,
) -> AwsCallRecorder:
    """Run the churn SageMaker DAG with every AWS call recorded; return the recorder."""
    import boto3
    import mlflow
    import s3fs
    from airflow.utils.state import DagRunState

    setup = moto_client("s3", aws_env)
    for bucket in BUCKETS.values():
        setup.create_bucket(Bucket=bucket)
    monkeypatch.setenv("MLWP_STORAGE_ROOT", f"s3://{BUCKETS['data']}")
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        aws_connection(
            aws_env,
            sagemaker_output_root=f"s3://{BUCKETS['models']}",
            # moto answers CreateTrainingJob only once the emulated container has trained,
            # which can pass botocore's 60 s on a loaded machine; a retry would train twice.
            config_kwargs={"read_timeout": 900, "retries": {"max_attempts": 1}},
        ),
    )
    # s3fs caches filesystems (and their sessions) across tests: start with fresh ones.
    s3fs.S3FileSystem.clear_instance_cache()

    recorder = AwsCallRecorder()
    recorder.install(monkeypatch)
    undo = install_into_moto(
        lambda: recorder.tag(
            moto_client("s3", aws_env, session=boto3.session.Session()), "sagemaker_execution"
        ),
        tmp_path / "containers",
    )
    try:
        run = dag_runner(churn_sagemaker_dag("churn.iam_sm", model="churn_iam"))
        assert run.state == DagRunState.SUCCESS
        # The batch transform of the model just registered, made champion.
        client = mlflow.MlflowClient()
        (version,) = client.search_model_versions("name = 'churn_iam'")
        client.set_registered_model_alias("churn_iam", "champion", version.version)
        scored = dag_runner(batch_transform_dag(tmp_path, "churn_iam"))
        assert scored.state == DagRunState.SUCCESS, {
            ti.task_id: ti.state for ti in scored.get_task_instances()
        }
    finally:
        undo()
    s3fs.S3FileSystem.clear_instance_cache()
    return recorder


def test_iam_statements_grant_exactly_the_recorded_calls(
    recorded: AwsCallRecorder, role_statements: dict[str, dict[str, dict[str, Any]]]
) -> None:
    # The comparison is only worth its calls: the key ones must be there.
    worker = {(c.service, c.operation) for c in recorded.by_principal("airflow_worker")}
    assert {("sagemaker", "CreateTrainingJob"), ("sagemaker", "DescribeTrainingJob")} <= worker
    assert {
        ("sagemaker", "CreateModel"),
        ("sagemaker", "DescribeModel"),
        ("sagemaker", "CreateTransformJob"),
        ("sagemaker", "DescribeTransformJob"),
    } <= worker
    assert ("s3", "PutObject") in worker
    execution = recorded.by_principal("sagemaker_execution")
    written = {c.params["Bucket"] for c in execution if c.operation == "PutObject"}
    read = {c.params["Bucket"] for c in execution if c.operation in ("GetObject", "HeadObject")}
    assert written == {BUCKETS["models"]}  # the jobs' output goes to the models bucket
    assert read == {BUCKETS["data"]}  # channels, code, model archive, partitions: data bucket
    read_keys = {c.params["Key"] for c in execution if c.operation == "GetObject"}
    assert any(key.endswith("/input.manifest") for key in read_keys)  # the transform ran
    assert any("/datasets/" in key for key in read_keys)

    problems: list[str] = []
    for role in ROLE_STATEMENTS:
        statements = role_statements[role]
        calls = recorded.by_principal(role)
        permissions: list[Permission] = [p for call in calls for p in required_permissions(call)]
        for permission in permissions:
            if not allowed(statements, permission):
                problems.append(
                    f"{role}: {permission.because} needs {permission.action} on "
                    f"{permission.resource} {permission.context_dict() or ''}: no statement "
                    "of terraform/iam.tf grants it"
                )
        used = used_grants(statements, permissions)
        granted = {(sid, action) for sid, st in statements.items() for action in st["actions"]}
        for sid, action in sorted(granted - used - MARGIN[role].keys()):
            problems.append(
                f"{role}: statement {sid} grants {action}, which no recorded call needs: "
                "remove it, or list it in MARGIN with the reason"
            )
        for sid, action in sorted(MARGIN[role].keys() & used):
            problems.append(f"{role}: MARGIN lists ({sid}, {action}) but a recorded call uses it")
        for sid, action in sorted(MARGIN[role].keys() - granted):
            problems.append(f"{role}: MARGIN lists ({sid}, {action}), which is not granted")
    assert not problems, "\n".join(problems)
