"""Definition schema, loading and validation: precise, complete problem reports (no Airflow)."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlwp.cli import app
from mlwp.definitions import (
    AssetSchedule,
    DefinitionError,
    DeployTask,
    ExtractTask,
    Project,
    TrainTask,
    check_file,
    definition_json_schema,
    load_project,
    parse_definition,
    parse_duration,
)
from mlwp.definitions.loading import module_resolvable
from mlwp.definitions.schema import check_cron

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "definitions"
EXPECTATIONS = REPO_ROOT / "expectations"
CHURN = REPO_ROOT / "dags" / "projects" / "churn" / "workflow.yaml"
VALID = sorted((FIXTURES / "valid").glob("*.yaml"))
INVALID = sorted((FIXTURES / "invalid").glob("*.yaml"))


def expectations_of(path: Path) -> list[str]:
    """The ``# expect: line:col: path: message`` comments of an invalid fixture."""
    return [
        line.removeprefix("# expect: ").strip()
        for line in path.read_text().splitlines()
        if line.startswith("# expect: ")
    ]


def test_churn_definition_is_valid_and_typed() -> None:
    project = load_project(CHURN, expectations_dir=EXPECTATIONS)
    assert project.project == "churn"
    assert project.owner == "alice"
    train = project.workflows["train"]
    # weekly, and on the monitor's drift signal
    assert train.schedule == AssetSchedule(cron="@weekly", assets=["churn.monitor.monitor"])
    # every task type of the training workflow (DESIGN.md contract 1) is there
    assert {task.type for task in train.tasks.values()} >= {
        "extract",
        "validate",
        "transform",
        "train",
        "register",
        "approve",
        "deploy",
    }
    extract = train.tasks["extract"]
    assert isinstance(extract, ExtractTask)
    assert extract.resolved_format == "csv"
    model = train.tasks["train"]
    assert isinstance(model, TrainTask)
    assert model.tuning is not None and model.tuning.ranges["eta"].log is True
    assert model.timeout == timedelta(hours=1)
    deploy = train.tasks["deploy"]
    assert isinstance(deploy, DeployTask)
    assert deploy.traffic == {"champion": 90, "challenger": 10}
    assert project.defaults.retry_delay == timedelta(minutes=5)


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_fixtures_have_no_problems(path: Path) -> None:
    project, problems = check_file(path, expectations_dir=EXPECTATIONS)
    assert problems == []
    assert isinstance(project, Project)


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_fixtures_report_each_expected_problem(path: Path) -> None:
    display = f"tests/fixtures/definitions/invalid/{path.name}"
    project, problems = check_file(path, display=display, expectations_dir=EXPECTATIONS)
    assert project is None
    expected = expectations_of(path)
    assert expected, f"{path} has no '# expect:' lines"
    rendered = [str(problem) for problem in problems]
    for expectation in expected:
        wanted = f"{display}:{expectation}"
        assert any(line.startswith(wanted) for line in rendered), (wanted, rendered)
    if path.stem == "hidden_by_schema_errors":
        # schema errors and the checks' findings in valid tasks, all in one run
        assert len(problems) == len(expected)
    if path.stem == "many_problems":
        # one run reports everything, nothing else, in file order
        assert len(problems) == len(expected)
        assert [(p.line, p.column) for p in problems] == sorted(
            (p.line, p.column) for p in problems
        )


def test_load_project_raises_with_every_problem() -> None:
    with pytest.raises(DefinitionError) as caught:
        load_project(FIXTURES / "invalid" / "many_problems.yaml", expectations_dir=EXPECTATIONS)
    error = caught.value
    assert error.code == "invalid_definition"
    assert len(error.problems) == len(expectations_of(FIXTURES / "invalid" / "many_problems.yaml"))
    assert str(error).startswith(f"{len(error.problems)} problems in workflow definition")


def test_problem_codes_name_the_kind_of_fault() -> None:
    codes = {
        path.stem: {p.code for p in check_file(path, expectations_dir=EXPECTATIONS)[1]}
        for path in INVALID
    }
    assert codes["unknown_dependency"] == {"unknown_dependency"}
    assert codes["cycle"] == {"cycle"}
    assert codes["duplicate_task"] == {"duplicate"}
    assert codes["unknown_type"] == {"unknown_type"}
    assert codes["missing_field"] == {"missing_field"}
    assert codes["unsafe_tag"] == {"yaml"}


def test_unsafe_yaml_tags_are_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = f'project: !!python/object/apply:os.system ["touch {marker}"]\nowner: a\n'
    _, problems = parse_definition(text, file="x.yaml")
    assert not marker.exists()
    assert problems[0].code == "yaml"


def test_duplicate_keys_anywhere_are_reported() -> None:
    text = "project: p\nowner: a\nowner: b\nworkflows: {w: {tasks: {a: {type: approve}}}}\n"
    _, problems = parse_definition(text, file="x.yaml")
    assert [str(p) for p in problems] == [
        "x.yaml:3:1: owner: duplicate key 'owner' (first defined at line 2)"
    ]


def test_input_must_name_a_task() -> None:
    text = (
        "project: p\nowner: a\nworkflows:\n  w:\n    tasks:\n"
        "      a: {type: extract, source: s3://b/x.csv}\n"
        "      b: {type: validate, suite: s, input: aa, after: [a]}\n"
    )
    _, problems = parse_definition(text, file="x.yaml")
    assert [str(p) for p in problems] == [
        "x.yaml:7:44: workflows.w.tasks.b.input: unknown task 'aa' (did you mean 'a'?)"
    ]


def test_asset_schedule_on_a_task_without_dataset_is_rejected(tmp_path: Path) -> None:
    text = (
        "project: p\nowner: a\nworkflows:\n"
        "  a:\n    tasks: {ok: {type: approve}}\n"
        "  b:\n    schedule: {assets: [p.a.ok, p.c.x, p.a.nope]}\n    tasks: {t: {type: approve}}\n"
    )
    _, problems = parse_definition(text, file="x.yaml", project_dir=tmp_path)
    messages = [p.message for p in problems]
    assert messages == [
        "task 'ok' (approve) produces no dataset, so no asset 'p.a.ok'",
        "unknown workflow 'c' in asset 'p.c.x'",
        "unknown task 'nope' in asset 'p.a.nope'",
    ]


CRON_OR_ASSETS = (
    "project: p\nowner: a\nworkflows:\n"
    "  watch:\n    tasks: {look: {type: monitor, model: m, retrain_on_drift: true}}\n"
    "  train:\n    schedule: SCHEDULE\n    tasks: {t: {type: approve}}\n"
)


def test_schedule_on_a_cron_or_assets() -> None:
    """``{cron: ..., assets: [...]}``: Airflow's AssetOrTimeSchedule, in YAML and in Python."""
    schedule = '{cron: "0 3 * * *", assets: [p.watch.look]}'
    project, problems = parse_definition(CRON_OR_ASSETS.replace("SCHEDULE", schedule), file="x")
    assert problems == [] and project is not None
    parsed = project.workflows["train"].schedule
    assert isinstance(parsed, AssetSchedule)
    assert (parsed.cron, parsed.assets) == ("0 3 * * *", ["p.watch.look"])
    # presets that are times of day combine too; without cron it is the asset schedule alone
    assert AssetSchedule(cron="@weekly", assets="p.watch.look").cron == "@weekly"
    assert AssetSchedule(assets=["p.watch.look"]).cron is None
    built = Project.model_validate(
        {
            "project": "p",
            "owner": "a",
            "workflows": {
                "train": {
                    "schedule": {"cron": "@daily", "assets": ["q.w.t"]},
                    "tasks": {"t": {"type": "approve"}},
                }
            },
        }
    )
    assert built.workflows["train"].schedule == AssetSchedule(cron="@daily", assets=["q.w.t"])


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        (
            '{cron: "@once", assets: [p.watch.look]}',
            "x.yaml:7:22: workflows.train.schedule.cron: '@once' cannot be combined with "
            "assets; the time half of a schedule is a cron expression or one of @hourly, "
            "@daily, @weekly, @monthly, @quarterly, @yearly",
        ),
        (
            '{cron: "0 25 * * *", assets: [p.watch.look]}',
            "x.yaml:7:22: workflows.train.schedule.cron: cron hour value '25' is outside 0-23: "
            "'0 25 * * *' is neither a preset nor a cron expression",
        ),
        (
            '{cron: "@daily"}',
            "x.yaml:7:5: workflows.train.schedule.assets: missing required field 'assets'",
        ),
        (
            '{crn: "@daily", assets: [p.watch.look]}',
            "x.yaml:7:16: workflows.train.schedule.crn: unknown key 'crn' (did you mean 'cron'?)",
        ),
        (
            '{cron: "@daily", assets: [p.watch.lok]}',
            "x.yaml:7:41: workflows.train.schedule.assets[0]: unknown task 'lok' in asset "
            "'p.watch.lok' (did you mean 'look'?)",
        ),
        (
            "[0 3 * * *, p.watch.look]",
            "x.yaml:7:15: workflows.train.schedule: a schedule is a preset, a cron expression, "
            "{assets: [...]} or {cron: ..., assets: [...]}",
        ),
    ],
)
def test_cron_or_assets_schedule_errors_name_the_field(
    schedule: str, expected: str, tmp_path: Path
) -> None:
    text = CRON_OR_ASSETS.replace("SCHEDULE", schedule)
    project, problems = parse_definition(text, file="x.yaml", project_dir=tmp_path)
    assert project is None
    assert [str(p) for p in problems] == [expected]


def test_durations() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2d") == timedelta(days=2)
    assert parse_duration(45) == timedelta(seconds=45)
    for bad in ("5 minutes", "", "m5", "-3s", True):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("0 3 * * 1-5", None),
        ("*/15 * * * *", None),
        ("0 0 1 jan,jul *", None),
        ("0 0 * * mon", None),
        ("0 24 * * *", "hour value '24' is outside 0-23"),
        ("* * *", "has 5 fields"),
        ("*/0 * * * *", "step of 0"),
        ("x * * * *", "outside 0-59"),
    ],
)
def test_cron_expressions(expression: str, problem: str | None) -> None:
    result = check_cron(expression)
    if problem is None:
        assert result is None
    else:
        assert result is not None and problem in result


def test_traffic_must_sum_to_100() -> None:
    with pytest.raises(ValueError, match="traffic must sum to 100"):
        DeployTask(model="m", traffic={"champion": 50, "challenger": 40})
    assert DeployTask(model="m", traffic={"champion": 100}).traffic == {"champion": 100}


def test_operator_kwargs_are_the_type_fields_only() -> None:
    task = TrainTask(target="y", after=["a"], retries=2, timeout="1h")
    kwargs = task.operator_kwargs()
    assert kwargs["target"] == "y"
    assert kwargs["backend"] == "local"
    assert not {"type", "after", "retries", "retry_delay", "timeout", "doc"} & set(kwargs)
    json.dumps(kwargs)  # JSON-compatible, so it serialises with the DAG


def test_module_resolution_does_not_import(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "noisy_pkg_for_resolution"
    (package / "sub").mkdir(parents=True)
    marker = tmp_path / "imported"
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "tasks.py").write_text("def run(): return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert module_resolvable("noisy_pkg_for_resolution.sub.tasks")
    assert not module_resolvable("noisy_pkg_for_resolution.sub.nothing")
    assert not module_resolvable("no_such_top_level_xyz")
    assert module_resolvable("os.path")
    assert not marker.exists(), "resolving a module imported its package"
    assert "noisy_pkg_for_resolution" not in sys.modules


def test_loading_a_definition_imports_nothing_heavy() -> None:
    """The DAG processor loads every definition at each parse: its schema's checks (a drift
    threshold's range among them) must not pull numpy or pandas in."""
    import subprocess

    script = (
        "import sys, pathlib\n"
        "from mlwp.definitions.loading import load_project\n"
        f"load_project(pathlib.Path({str(CHURN)!r}))\n"
        "print(sorted(m for m in ('numpy', 'pandas', 'pyarrow') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_json_schema_accepts_valid_and_rejects_unknown_keys() -> None:
    import jsonschema
    import yaml

    schema = definition_json_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    assert set(schema["required"]) == {"project", "owner", "workflows"}
    validator = jsonschema.Draft202012Validator(schema)
    for path in [CHURN, *VALID]:
        # editors see YAML dates as strings
        document = json.loads(json.dumps(yaml.safe_load(path.read_text()), default=str))
        errors = list(validator.iter_errors(document))
        assert errors == [], (path, errors[:1])
    broken = yaml.safe_load(CHURN.read_text())
    broken["workflows"]["train"]["tasks"]["train"]["epochs"] = 3
    assert list(validator.iter_errors(broken))
    committed = json.loads((REPO_ROOT / "docs" / "workflow.schema.json").read_text())
    assert committed == json.loads(json.dumps(schema)), (
        "run: mlwp schema -o docs/workflow.schema.json"
    )


def test_cli_validate_reports_and_exits_non_zero() -> None:
    runner = CliRunner()
    good = runner.invoke(app, ["validate", str(CHURN), *map(str, VALID)])
    assert good.exit_code == 0, good.output
    bad_file = FIXTURES / "invalid" / "unknown_dependency.yaml"
    bad = runner.invoke(app, ["validate", str(CHURN), str(bad_file)])
    assert bad.exit_code == 1
    assert (
        f"{bad_file}:8:51: workflows.train.tasks.train.after[0]: "
        "unknown task 'featurs' (did you mean 'features'?)"
    ) in bad.output
    as_json = runner.invoke(app, ["validate", "--format", "json", str(bad_file)])
    assert as_json.exit_code == 1
    problems = json.loads(as_json.stdout)
    assert problems[0]["line"] == 8 and problems[0]["code"] == "unknown_dependency"


def test_cli_validate_folder_of_projects(tmp_path: Path) -> None:
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        text = (FIXTURES / "valid" / "minimal.yaml").read_text().replace("minimal", name)
        (folder / "workflow.yaml").write_text(text)
    result = CliRunner().invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 0
    assert "2 definitions checked, 0 problems" in result.output


def test_cli_schema_prints_json_schema() -> None:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert "Workflow" in schema["$defs"]
    assert schema["$defs"]["TrainTask"]["additionalProperties"] is False


def _imbalanced_project(tmp_path: Path, positives: int) -> Path:
    rows = [f"{i},{i % 7},{'yes' if i < positives else 'no'}" for i in range(100)]
    (tmp_path / "data.csv").write_text("id,tenure,churn\n" + "\n".join(rows) + "\n")
    definition = tmp_path / "workflow.yaml"
    definition.write_text(
        "project: rare\nowner: alice\nworkflows:\n  train:\n    tasks:\n"
        "      extract: {type: extract, source: data.csv}\n"
        "      features: {type: transform, after: [extract], steps: [{op: split}]}\n"
        "      train: {type: train, after: [features], target: churn}\n"
    )
    return definition


def test_an_imbalanced_binary_target_is_a_warning_of_validate_not_an_error(
    tmp_path: Path,
) -> None:
    definition = _imbalanced_project(tmp_path, positives=4)
    project, problems = check_file(definition, inspect_data=True)
    assert project is not None  # valid: its DAGs are built
    [warning] = problems
    assert warning.severity == "warning" and warning.code == "imbalanced_target"
    assert str(warning).startswith(
        f"{definition}:8:55: warning: workflows.train.tasks.train.target: target 'churn' is "
        "imbalanced: class 'yes' is 4.0% of 100 rows in data.csv"
    )
    assert "threshold" in warning.message
    # The DAG processor does not read whole datasets at every parse.
    assert check_file(definition) == (project, [])
    result = CliRunner().invoke(app, ["validate", str(definition)])
    assert result.exit_code == 0, result.output
    assert "1 definition checked, 0 problems, 1 warning" in result.output
    balanced = _imbalanced_project(tmp_path, positives=30)
    assert check_file(balanced, inspect_data=True)[1] == []


def test_threshold_is_a_field_of_train_that_reaches_the_training() -> None:
    from mlwp.training.core import TrainingConfig
    from mlwp.training.pipeline import hyperparameters_of

    task = TrainTask(target="churn", threshold=0.3)
    kwargs = task.operator_kwargs()
    assert kwargs["threshold"] == 0.3
    hyperparameters = hyperparameters_of(target="churn", threshold=kwargs["threshold"])
    assert TrainingConfig.from_hyperparameters(hyperparameters).threshold == 0.3
    assert "threshold" not in hyperparameters_of(target="churn")


def test_validate_in_database_needs_an_extract_query_and_excludes_map_partitions(
    tmp_path: Path,
) -> None:
    text = (
        "project: p\nowner: a\nworkflows:\n  w:\n    tasks:\n"
        "      a: {type: extract, source: s3://b/x.csv}\n"
        "      q: {type: extract, query: select 1, conn_id: pg}\n"
        "      b: {type: validate, suite: s, after: [a], in_database: true}\n"
        "      c: {type: validate, suite: s, after: [q], in_database: true}\n"
        "      d: {type: validate, suite: s, after: [q], in_database: true, map_partitions: true}\n"
    )
    _, problems = parse_definition(text, file="x.yaml", project_dir=tmp_path)
    found = {(p.path[3], p.code): p.message for p in problems}
    assert found.keys() == {("b", "in_database_needs_query"), ("d", "invalid")}, found
    assert (
        "set 'input' to an extract task with a 'query' (upstream: a)"
        in found[("b", "in_database_needs_query")]
    )
    assert "choose one of 'map_partitions' or 'in_database'" in found[("d", "invalid")]
