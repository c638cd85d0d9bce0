"""Per-task placement: executor, queue, pool and resources, from the definition to the DAG."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlwp.cli import app
from mlwp.definitions import parse_definition
from mlwp.platform.executors import Placement, parse_executors
from mlwp.security.projects import discover_projects

pytestmark = pytest.mark.unit

DEFINITION = textwrap.dedent(
    """\
    project: placed
    owner: alice
    pools:
      sagemaker: {slots: 2, description: concurrent SageMaker jobs}
    workflows:
      train:
        tasks:
          extract: {type: extract, source: s3://bucket/x.csv}
          features:
            type: transform
            after: [extract]
            steps: [{op: drop, columns: [id]}]
            executor: EXECUTOR
            queue: QUEUE
          train:
            type: train
            target: churn
            after: [features]
            pool: POOL
            pool_slots: 2
            resources: {cpu: 2, memory: 8Gi}
    """
)


def definition(
    executor: str = "KubernetesExecutor", queue: str = "default", pool: str = "sagemaker"
) -> str:
    return DEFINITION.replace("EXECUTOR", executor).replace("QUEUE", queue).replace("POOL", pool)


def placement(
    executor: str = "CeleryExecutor,KubernetesExecutor",
    queues: tuple[str, ...] = ("default", "gpu"),
) -> Placement:
    return Placement(executor, parse_executors(executor), queues)


def problems(text: str, where: Placement | None = None) -> list[str]:
    _, found = parse_definition(text, file="placed/workflow.yaml", placement=where)
    return [str(problem) for problem in found]


def test_a_placed_task_is_valid_where_the_platform_runs_its_executor() -> None:
    project, found = parse_definition(definition(), file="w.yaml", placement=placement())
    assert found == []
    assert project is not None
    tasks = project.workflows["train"].tasks
    assert tasks["features"].executor == "KubernetesExecutor"
    assert tasks["features"].queue == "default"
    train = tasks["train"]
    assert (train.pool, train.pool_slots) == ("sagemaker", 2)
    assert train.resources is not None
    assert (train.resources.cpu, train.resources.memory) == ("2", "8Gi")
    # Placement fields are not operator keyword arguments.
    assert not {"executor", "queue", "pool", "resources"} & set(tasks["features"].operator_kwargs())


def test_an_executor_the_platform_does_not_run_is_named_with_file_line_and_did_you_mean() -> None:
    laptop = placement("LocalExecutor", ("default",))
    assert problems(definition(), laptop) == [
        "placed/workflow.yaml:13:19: workflows.train.tasks.features.executor: executor "
        "'KubernetesExecutor' is not configured on this platform (MLWP_EXECUTOR=LocalExecutor); "
        "a task may name LocalExecutor"
    ]
    found = problems(definition(executor="KubernetesExecuter"), placement())
    assert len(found) == 1
    assert found[0].endswith("(did you mean 'KubernetesExecutor'?)")
    # Aliases from MLWP_EXECUTOR are names a task may use.
    aliased = placement("LocalExecutor,pods:KubernetesExecutor")
    assert problems(definition(executor="pods"), aliased) == []
    assert "(did you mean 'pods'?)" in problems(definition(executor="pod"), aliased)[0]


def test_without_the_platform_the_executor_is_not_checked() -> None:
    assert problems(definition(executor="AnythingExecutor")) == []


def test_a_celery_queue_no_worker_consumes_is_refused() -> None:
    celery = placement("CeleryExecutor", ("default", "gpu"))
    found = problems(definition(executor="CeleryExecutor", queue="gpus"), celery)
    assert found == [
        "placed/workflow.yaml:14:16: workflows.train.tasks.features.queue: no Celery worker "
        "consumes queue 'gpus' (MLWP_CELERY_QUEUES=default,gpu), so the task would wait "
        "forever (did you mean 'gpu'?)"
    ]
    # Kubernetes ignores queues, so the same queue is fine on a task it runs.
    assert problems(definition(queue="gpus"), placement()) == []


def test_pools_must_be_declared_or_airflows_default() -> None:
    found = problems(definition(pool="sagemakr"))
    assert found == [
        "placed/workflow.yaml:19:15: workflows.train.tasks.train.pool: unknown pool "
        "'sagemakr': declare it under the project's `pools` (with its slots) or use "
        "'default_pool' (did you mean 'sagemaker'?)"
    ]
    assert problems(definition(pool="default_pool")) == []
    reserved = definition().replace("  sagemaker:", "  default_pool: {slots: 3}\n  sagemaker:")
    assert "'default_pool' is Airflow's own pool" in problems(reserved)[0]


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ("{cpu: lots}", "resources.cpu"),
        ("{memory: 8GB}", "resources.memory"),
        ("{}", "resources needs 'cpu', 'memory' or both"),
        ("{cpu: 1, gpu: 1}", "resources.gpu"),
        ("{cpu: -1}", "resources.cpu"),
    ],
)
def test_resources_are_kubernetes_quantities(resources: str, message: str) -> None:
    text = definition().replace("resources: {cpu: 2, memory: 8Gi}", f"resources: {resources}")
    found = problems(text)
    assert found and message in found[0], found


def test_validate_cli_checks_against_the_configured_executors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "placed"
    folder.mkdir()
    (folder / "workflow.yaml").write_text(definition())
    monkeypatch.delenv("MLWP_EXECUTOR", raising=False)
    result = CliRunner().invoke(app, ["validate", "--no-references", str(folder)])
    assert result.exit_code == 1
    assert "executor 'KubernetesExecutor' is not configured on this platform" in result.output
    monkeypatch.setenv("MLWP_EXECUTOR", "LocalExecutor,KubernetesExecutor")
    result = CliRunner().invoke(app, ["validate", "--no-references", str(folder)])
    assert result.exit_code == 0, result.output


def test_the_roles_sync_request_carries_the_declared_pools(tmp_path: Path) -> None:
    folder = tmp_path / "projects" / "placed"
    folder.mkdir(parents=True)
    (folder / "workflow.yaml").write_text(definition())
    request = discover_projects(tmp_path)["placed"].as_request()
    assert request["pools"] == {
        "sagemaker": {"slots": 2, "description": "concurrent SageMaker jobs"}
    }


def test_placement_compiles_to_operator_arguments_and_survives_serialization(
    tmp_path: Path,
) -> None:
    from airflow.serialization.serialized_objects import DagSerialization
    from kubernetes.client import models as k8s

    from operators.compiler import build_dag

    project, found = parse_definition(
        definition(executor="LocalExecutor"), file="w.yaml", placement=None
    )
    assert project is not None, found
    dag = build_dag(project, "train", project_dir=tmp_path)
    features, train = dag.get_task("features"), dag.get_task("train")
    assert (features.executor, features.queue) == ("LocalExecutor", "default")
    assert (train.pool, train.pool_slots) == ("sagemaker", 2)
    override = train.executor_config["pod_override"]
    assert isinstance(override, k8s.V1Pod)
    (base,) = override.spec.containers
    assert base.name == "base"
    assert base.resources.requests == {"cpu": "2", "memory": "8Gi"}
    assert base.resources.limits == {"memory": "8Gi"}
    assert dag.get_task("extract").executor_config == {}

    # What the DAG processor stores and the scheduler hands to the executor.
    restored = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    task = restored.get_task("train")
    assert task.executor_config["pod_override"].spec.containers[0].resources.limits == {
        "memory": "8Gi"
    }
    assert restored.get_task("features").executor == "LocalExecutor"
    assert (task.pool, task.pool_slots) == ("sagemaker", 2)
