"""Serving's MLWP_SERVING_ENTITY_FIELDS derived from the definitions' labels tasks: the
derivation, its problems, `mlwp config serving-entity-fields`, and the environment `mlwp up`
gives serving (docker-compose.yaml and the Helm chart: test_supervisor_compose.py and
tests/charts/test_mlwp_chart.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlwp.cli import app
from mlwp.definitions import parse_definition
from mlwp.definitions.entity_keys import serving_entity_fields
from mlwp.platform import processes
from mlwp.settings import Settings
from serving.core.config import ServingSettings

pytestmark = pytest.mark.unit

PROJECT = """project: {name}
owner: a
workflows:
  watch:
    tasks:
{tasks}
"""
LABELS = "      {id}: {{type: labels, model: {model}, source: o.csv{columns}}}\n"


def definition(name: str, *labels: tuple[str, str, str | None]) -> str:
    """A project with a labels task per (task id, model, entity-key column or None)."""
    tasks = "".join(
        LABELS.format(
            id=task_id,
            model=model,
            columns=f", columns: {{entity_key: {column}, label: y}}" if column else "",
        )
        for task_id, model, column in labels
    )
    return PROJECT.format(name=name, tasks=tasks.rstrip("\n"))


def write_projects(root: Path, **texts: str) -> Path:
    """``<root>/dags/projects/<name>/workflow.yaml`` for each text; returns the DAG folder."""
    for name, text in texts.items():
        folder = root / "dags" / "projects" / name
        folder.mkdir(parents=True)
        (folder / "workflow.yaml").write_text(text)
    return root / "dags"


def test_labels_tasks_declare_each_models_entity_field(tmp_path: Path) -> None:
    dags = write_projects(
        tmp_path,
        shop=definition("shop", ("orders", "basket", "order_id"), ("plain", "other", None)),
        telco=definition("telco", ("outcomes", "churn", "customer_id")),
    )
    files = sorted((dags / "projects").glob("*/workflow.yaml"))
    fields, problems = serving_entity_fields(files)
    # a labels task without entity_key reads serving's default field: no entry needed
    assert (fields, problems) == ({"basket": "order_id", "churn": "customer_id"}, [])


def test_two_fields_for_one_model_are_refused_in_a_project_and_reported_across(
    tmp_path: Path,
) -> None:
    text = definition("p", ("a", "churn", "customer_id"), ("b", "churn", "cust"))
    _, problems = parse_definition(text, file="p.yaml")
    assert [str(p) for p in problems] == [
        "p.yaml:7:76: workflows.watch.tasks.b.columns.entity_key: model 'churn' is already "
        "labelled by field 'customer_id' (workflows.watch.tasks.a.columns.entity_key); "
        "serving captures one entity-key field per model"
    ]

    dags = write_projects(
        tmp_path,
        a=definition("a", ("labels", "churn", "customer_id")),
        b=definition("b", ("labels", "churn", "cust")),
        c="project: c\nowner: [x]\n",
    )
    files = sorted((dags / "projects").glob("*/workflow.yaml"))
    fields, problems = serving_entity_fields(files)
    assert fields == {"churn": "customer_id"}
    assert problems == [
        f"model 'churn' is labelled by field 'cust' at {files[1]}: "
        "workflows.watch.tasks.labels.columns.entity_key but by 'customer_id' at "
        f"{files[0]}: workflows.watch.tasks.labels.columns.entity_key; serving captures one "
        "field per model, so 'customer_id' is kept",
        f"{files[2]}: not read (2 problem(s); run mlwp validate)",
    ]
    # a path that does not exist was "not read (1 problem(s); run mlwp validate)"
    missing = tmp_path / "nosuchdir"
    assert serving_entity_fields([missing])[1] == [
        f"not read: {missing}: cannot read definition: [Errno 2] No such file or directory: "
        f"'{missing}'"
    ]


def test_mlwp_config_prints_the_setting(tmp_path: Path) -> None:
    dags = write_projects(tmp_path, telco=definition("telco", ("o", "churn", "customer_id")))
    runner = CliRunner()
    result = runner.invoke(app, ["config", "serving-entity-fields", str(dags / "projects")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"churn": "customer_id"}

    write_projects(tmp_path / "other", x=definition("x", ("o", "churn", "cust")))
    both = [str(dags / "projects"), str(tmp_path / "other" / "dags" / "projects")]
    result = runner.invoke(app, ["config", "serving-entity-fields", *both])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"churn": "customer_id"}
    assert "so 'customer_id' is kept" in result.stderr


def serving_env(settings: Settings) -> dict[str, str]:
    [serving] = [s for s in processes.platform_processes(settings) if s.name == "serving"]
    return dict(serving.env)


def test_mlwp_up_gives_serving_the_entity_fields_of_its_definitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLWP_SERVING_ENTITY_FIELDS", raising=False)
    dags = write_projects(tmp_path, telco=definition("telco", ("o", "churn", "customer_id")))
    settings = Settings(home=tmp_path / "home", dags_folder=dags)
    given = serving_env(settings)["MLWP_SERVING_ENTITY_FIELDS"]
    assert json.loads(given) == {"churn": "customer_id"}
    # ... as serving reads it
    monkeypatch.setenv("MLWP_SERVING_ENTITY_FIELDS", given)
    assert ServingSettings(_env_file=None).entity_fields == {"churn": "customer_id"}
    # the operator's own value wins, model by model
    monkeypatch.setenv("MLWP_SERVING_ENTITY_FIELDS", '{"churn": "account", "credit": "id"}')
    assert json.loads(serving_env(settings)["MLWP_SERVING_ENTITY_FIELDS"]) == {
        "churn": "account",
        "credit": "id",
    }
    # one serving cannot read is left as it is, for serving to name
    monkeypatch.setenv("MLWP_SERVING_ENTITY_FIELDS", "churn=account")
    assert serving_env(settings)["MLWP_SERVING_ENTITY_FIELDS"] == "churn=account"
    # no labels task keyed by a field: nothing set; the other processes never get it
    monkeypatch.delenv("MLWP_SERVING_ENTITY_FIELDS")
    empty = Settings(home=tmp_path / "home", dags_folder=tmp_path / "nothing")
    assert "MLWP_SERVING_ENTITY_FIELDS" not in serving_env(empty)
    others = [s for s in processes.platform_processes(settings) if s.name != "serving"]
    assert all("MLWP_SERVING_ENTITY_FIELDS" not in s.env for s in others)


def test_the_repository_definitions_declare_the_churn_entity_key() -> None:
    settings = Settings()
    fields, problems = processes.serving_entity_fields(settings)
    assert (fields, problems) == ({"churn": "customer_id"}, [])
