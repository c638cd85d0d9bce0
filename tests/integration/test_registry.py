"""Registry helpers and training tracking against a real MLflow tracking server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mlwp import model as mlwp_model
from mlwp import registry
from mlwp.data.transform import run_transform
from mlwp.training import entrypoint
from mlwp.training.local import prepare_workdir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests" / "fixtures" / "data" / "telco_churn_sample.csv"


def churn_steps() -> list[dict]:
    definition = yaml.safe_load((ROOT / "dags/projects/churn/workflow.yaml").read_text())
    return definition["workflows"]["train"]["tasks"]["features"]["steps"]


@pytest.fixture(scope="module")
def tracking(mlflow_server: str) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        patch.setenv("MLWP_CODE_VERSION", "test-sha")
        yield mlflow_server


@pytest.fixture(scope="module")
def data() -> dict:
    result = run_transform(pd.read_csv(SAMPLE), churn_steps())
    return {"splits": result.splits, "preprocessing": result.preprocessing}


@pytest.fixture(scope="module")
def trained(data: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A weak and a strong real model on the same data."""
    out = {}
    for name, hyper in {
        "weak": {"num_boost_round": 1, "max_depth": 1, "eta": 0.01},
        "strong": {"num_boost_round": 40, "max_depth": 3},
    }.items():
        workdir = tmp_path_factory.mktemp(name)
        environ = prepare_workdir(
            workdir,
            data["splits"],
            data["preprocessing"],
            {"target": "churn", "nthread": 1, **hyper},
        )
        entrypoint.run(environ)
        out[name] = workdir / "model"
    return out


@pytest.fixture(scope="module")
def logged(tracking: str, trained: dict[str, Path], data: dict) -> dict[str, str]:
    """Both models logged as MLflow models (two flavours) in runs of one experiment."""
    import mlflow

    from mlwp.training.tracking import log_model_run

    client = mlflow.MlflowClient()
    experiment = client.create_experiment("registry-tests")
    uris = {}
    for name, model_dir in trained.items():
        run = client.create_run(experiment, run_name=name)
        tracked = log_model_run(
            run.info.run_id,
            model_dir,
            splits=data["splits"],
            metrics={"validation:roc_auc": 0.5},
            params={"name": name},
        )
        client.set_terminated(run.info.run_id)
        uris[name] = tracked.model_uri
        uris[f"{name}_run"] = run.info.run_id
    return uris


def lineage(run_id: str, **extra: object) -> registry.Lineage:
    values = dict(
        project="churn",
        workflow="train",
        dag_id="churn.train",
        airflow_run_id=run_id,
        task_id="register",
        dataset_uri="file:///data/x.parquet",
        dataset_sha256="ab" * 32,
        gx_success=True,
        gx_statistics={"evaluated_expectations": 5, "success_percent": 100.0},
        backend="local",
        job_name="local-1",
    )
    values.update(extra)
    return registry.Lineage(**values)  # type: ignore[arg-type]


def test_logged_run_has_model_params_metrics_and_plots(logged: dict[str, str]) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    run = client.get_run(logged["strong_run"])
    assert run.data.params["name"] == "strong"
    assert run.data.metrics["validation_roc_auc"] == 0.5
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/feature_importance.png", "plots/roc.png", "plots/confusion_matrix.png"}
    path = mlflow.artifacts.download_artifacts(logged["strong"])
    assert {"MLmodel", "model.ubj", "mlwp.json", "preprocessing.json"} <= set(os.listdir(path))
    assert mlwp_model.load(path).classes == ["No", "Yes"]


def test_registration_is_idempotent_and_carries_lineage(logged: dict[str, str]) -> None:
    first = registry.register("churn-idem", logged["weak"], lineage("scheduled__1"))
    again = registry.register("churn-idem", logged["weak"], lineage("scheduled__1"))
    assert first.created and not again.created and again.version == first.version
    other = registry.register("churn-idem", logged["weak"], lineage("scheduled__2"))
    assert other.created and other.version != first.version
    assert len(registry.versions("churn-idem")) == 2
    import mlflow

    tags = mlflow.MlflowClient().get_model_version("churn-idem", first.version).tags
    assert tags["mlwp.dag_id"] == "churn.train" and tags["mlwp.airflow_run_id"] == "scheduled__1"
    assert tags["mlwp.dataset_sha256"] == "ab" * 32 and tags["mlwp.gx_success"] == "true"
    assert tags["mlwp.code_version"] == "test-sha" and tags["mlwp.backend"] == "local"
    back = registry.Lineage.from_tags(tags)
    assert back.gx_statistics == {"evaluated_expectations": 5, "success_percent": 100.0}


def test_gate_both_ways_and_it_never_touches_aliases(
    logged: dict[str, str], trained: dict[str, Path], data: dict
) -> None:
    name = "churn-gate"
    weak = registry.register(name, logged["weak"], lineage("g1"))
    test = data["splits"]["test"]
    strong_model = mlwp_model.load(trained["strong"])
    weak_model = mlwp_model.load(trained["weak"])
    # no champion yet: only the minimum applies
    first = registry.compare_with_champion(name, weak_model, test)
    assert first.champion is None
    assert not registry.gate(first, "roc_auc", minimum=0.99).passed
    registry.deploy(name, weak.version, "champion")
    before = registry.aliases(name)

    better = registry.compare_with_champion(name, strong_model, test)
    assert better.champion_version == weak.version
    assert better.new["roc_auc"] > better.champion["roc_auc"]
    passed = registry.gate(better, "roc_auc", minimum=0.6, beat_champion=True, margin=0.01)
    assert passed.passed, passed.summary

    registry.deploy(
        name, registry.register(name, logged["strong"], lineage("g2")).version, "champion"
    )
    worse = registry.compare_with_champion(name, weak_model, test)
    failed = registry.gate(worse, "roc_auc", beat_champion=True)
    assert not failed.passed and "does not beat champion" in failed.summary
    assert registry.aliases(name)["champion"] != before["champion"]  # the deploy moved it
    snapshot = registry.aliases(name)
    registry.gate(worse, "logloss", beat_champion=True, margin=0.5)
    assert registry.aliases(name) == snapshot


def test_deploy_promote_rollback_and_traffic(logged: dict[str, str], data: dict) -> None:
    name = "churn-deploy"
    v1 = registry.register(name, logged["weak"], lineage("d1")).version
    v2 = registry.register(name, logged["strong"], lineage("d2")).version
    with pytest.raises(registry.RegistryError, match=r"alias .challenger. of .* not set"):
        registry.deploy(name, v1, "champion", {"champion": 90, "challenger": 10})
    registry.deploy(name, v1, "champion")
    registry.deploy(name, v2, "challenger", {"champion": 90, "challenger": 10})
    assert registry.aliases(name) == {"champion": v1, "challenger": v2}
    assert registry.get_traffic(name) == {"champion": 90, "challenger": 10}
    with pytest.raises(registry.RegistryError, match="must sum to 100"):
        registry.set_traffic(name, {"champion": 90, "challenger": 20})
    with pytest.raises(registry.RegistryError, match="alias must be one of"):
        registry.set_traffic(name, {"champion": 90, "shadow": 10})

    after = registry.promote(name)
    assert after == {"aliases": {"champion": v2}, "traffic": {"champion": 100}}
    restored = registry.rollback(name)
    assert restored == {
        "aliases": {"champion": v1, "challenger": v2},
        "traffic": {"champion": 90, "challenger": 10},
    }
    with pytest.raises(registry.RegistryError, match="nothing to roll back"):
        registry.rollback(name)

    # what serving loads: the champion through pyfunc takes raw records
    import mlflow

    frame = data["splits"]["test"].head(5)
    served = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(frame)
    direct = mlwp_model.load(
        mlflow.artifacts.download_artifacts(f"models:/{name}@champion")
    ).predict(frame.to_dict(orient="records"))
    assert served["prediction"].tolist() == direct.predictions


def test_cli_models_commands(logged: dict[str, str]) -> None:
    import orjson
    from typer.testing import CliRunner

    from mlwp.cli import app

    name = "churn-cli"
    v1 = registry.register(name, logged["weak"], lineage("c1")).version
    v2 = registry.register(name, logged["strong"], lineage("c2")).version
    registry.deploy(name, v1, "champion")
    registry.deploy(name, v2, "challenger")
    runner = CliRunner()
    result = runner.invoke(app, ["models", "traffic", name, "champion=80", "challenger=20"])
    assert result.exit_code == 0, result.output
    assert registry.get_traffic(name) == {"champion": 80, "challenger": 20}
    bad = runner.invoke(app, ["models", "traffic", name, "champion=50"])
    assert bad.exit_code == 1 and "must sum to 100" in bad.output
    listed = runner.invoke(app, ["models", "list", name, "--json"])
    described = orjson.loads(listed.stdout)
    assert [v["aliases"] for v in described["versions"]] == [["challenger"], ["champion"]]
    assert runner.invoke(app, ["models", "promote", name]).exit_code == 0
    assert registry.aliases(name) == {"champion": v2}
    assert runner.invoke(app, ["models", "rollback", name]).exit_code == 0
    assert registry.aliases(name) == {"champion": v1, "challenger": v2}
    everything = orjson.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    assert name in [m["name"] for m in everything]

    from mlwp.security.audit import list_events

    actions = [e.action for e in list_events(target=name)]
    assert actions == ["traffic.set", "model.promote", "model.rollback"]


def test_history_and_rollback_to_any_recorded_state(logged: dict[str, str]) -> None:
    """Every change, by a workflow or a person, is in `mlwp models history` with from -> to;
    `mlwp models rollback --to <event id>` returns to any of them in one step (issue #14)."""
    import orjson
    from typer.testing import CliRunner

    from mlwp.cli import app
    from mlwp.registry import model_changes

    name = "churn-history"
    v1 = registry.register(name, logged["weak"], lineage("h1")).version
    v2 = registry.register(name, logged["strong"], lineage("h2")).version
    first = model_changes.deploy("workflow:churn.train", name, v1, "champion")
    assert first == {"aliases": {"champion": v1}, "traffic": {"champion": 100}}
    model_changes.deploy(
        "workflow:churn.train", name, v2, "challenger", {"champion": 90, "challenger": 10}
    )
    model_changes.set_traffic(
        "guardrail:churn.train",
        name,
        {"champion": 100, "challenger": 0},
        "p99 latency",
        kind="guardrail",
    )
    model_changes.promote("alice", name, v2, "v2 wins")
    runner = CliRunner()
    shown = runner.invoke(app, ["models", "history", name, "--json"])
    assert shown.exit_code == 0, shown.output
    changes = orjson.loads(shown.stdout)
    assert [(c["actor"], c["action"], c["details"]["kind"]) for c in changes] == [
        ("alice", "model.promote", "person"),
        ("guardrail:churn.train", "traffic.set", "guardrail"),
        ("workflow:churn.train", "model.deploy", "workflow"),
        ("workflow:churn.train", "model.deploy", "workflow"),
    ]
    canary = changes[2]
    assert canary["details"]["from"] == {"aliases": {"champion": v1}, "traffic": {"champion": 100}}
    assert canary["details"]["to"] == {
        "aliases": {"champion": v1, "challenger": v2},
        "traffic": {"champion": 90, "challenger": 10},
    }
    table = runner.invoke(app, ["models", "history", name])
    assert "champion v1 90%, challenger v2 10%" in table.output, table.output

    # One step back to the canary state, two changes ago.
    back = runner.invoke(app, ["models", "rollback", name, "--to", str(canary["id"]), "--json"])
    assert back.exit_code == 0, back.output
    assert registry.snapshot(name) == canary["details"]["to"]
    # ... to the very first state, by time
    moment = changes[-1]["timestamp"]
    assert runner.invoke(app, ["models", "rollback", name, "--to", moment]).exit_code == 0
    assert registry.snapshot(name) == {"aliases": {"champion": v1}, "traffic": {"champion": 100}}
    # ... and the default: before the last promotion (the guardrail's state).
    assert runner.invoke(app, ["models", "rollback", name, "--reason", "undo"]).exit_code == 0
    assert registry.snapshot(name) == changes[1]["details"]["to"]
    again = runner.invoke(app, ["models", "rollback", name])
    assert again.exit_code == 1 and "nothing to roll back" in again.output
    bad = runner.invoke(app, ["models", "rollback", name, "--to", "999999"])
    assert bad.exit_code == 1 and "is not a recorded alias or traffic change" in bad.output
    # Each rollback is itself in the history, with what it restored.
    latest = model_changes.history(name, limit=3)
    assert [c["action"] for c in latest] == ["model.rollback"] * 3
    assert latest[0]["details"]["reason"] == "undo"
    assert latest[2]["details"]["restored"].startswith(f"the state after event {canary['id']}")


def test_a_rollout_reads_the_monitor_result_of_its_two_versions(
    logged: dict[str, str], tmp_path: Path
) -> None:
    """The guardrails' labels and drift come from the monitor task's MLflow run, found from
    the challenger version's tag, and only when the run is about the same two versions."""
    import json

    from mlwp.registry import rollout

    name = "churn-monitored"
    v1 = registry.register(name, logged["weak"], lineage("m1")).version
    v2 = registry.register(name, logged["strong"], lineage("m2")).version
    assert rollout.read_monitor_result(name, v1, v2) is None  # no monitoring yet
    client = registry.client()
    experiment = client.create_experiment("monitoring-for-rollout")
    run = client.create_run(
        experiment,
        tags={
            "mlwp.kind": "monitoring",
            "mlwp.model": name,
            "mlwp.champion_version": v1,
            "mlwp.challenger_version": v2,
        },
    )
    result = {
        "comparison": {"decision": "challenger_worse", "metric": "roc_auc"},
        "drift": {"drifted": False, "variants": {"challenger": {"prediction_drifted": False}}},
    }
    folder = tmp_path / "monitor"
    folder.mkdir()
    (folder / "result.json").write_text(json.dumps(result))
    client.log_artifacts(run.info.run_id, str(folder), artifact_path="monitor")
    client.set_model_version_tag(name, v2, rollout.MONITORING_RUN_TAG, run.info.run_id)
    found = rollout.read_monitor_result(name, v1, v2)
    assert found is not None and found["comparison"]["decision"] == "challenger_worse"
    assert found["mlflow_run_id"] == run.info.run_id
    verdict = rollout.evaluate(
        rollout.Guardrails(min_requests=1),
        {"challenger": rollout.VariantWindow(requests=50)},
        found,
    )
    assert verdict.breaches == ["labelled outcomes: challenger significantly worse on roc_auc"]
    assert rollout.read_monitor_result(name, v2, v1) is None  # another pair of versions


def test_train_model_tunes_and_tracks_one_run(tracking: str, data: dict, tmp_path: Path) -> None:
    import mlflow

    from mlwp.training.pipeline import hyperparameters_of, train_model

    outcome = train_model(
        data["splits"],
        data["preprocessing"],
        hyperparameters_of(
            target="churn", params={"nthread": 1}, num_boost_round=30, early_stopping_rounds=5
        ),
        experiment="churn.train",
        run_name="train",
        tags={"mlwp.dag_id": "churn.train"},
        tuning={
            "trials": 3,
            "parallel": 1,
            "pruning": True,
            "metric": "roc_auc",
            "ranges": {
                "max_depth": {"min": 2, "max": 4, "integer": True},
                "eta": {"min": 0.05, "max": 0.3, "log": True},
            },
        },
        workdir=tmp_path,
        on_line=lambda _: None,
        timeout=600,
    )
    client = mlflow.MlflowClient()
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mlwp.dag_id"] == "churn.train"
    assert "validation_roc_auc" in run.data.metrics and "tuning_best_value" in run.data.metrics
    assert outcome.hyperparameters["max_depth"] in (2, 3, 4)
    children = client.search_runs(
        [outcome.experiment_id], f"tags.mlflow.parentRunId = '{outcome.run_id}'"
    )
    assert len(children) == 3
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}
    registered = registry.register(
        "churn-trained", outcome.model_uri, lineage("t1", mlflow_run_id=outcome.run_id)
    )
    assert registered.run_id == outcome.run_id


def test_evaluation_tells_when_a_classifier_predicts_a_single_class(
    trained: dict[str, Path], data: dict
) -> None:
    # The weak model (one shallow round) never reaches 0.5 on a churn rate of about 27%:
    # every row is "No", the F1 = 0 case an imbalanced target produces.
    test = data["splits"]["test"]
    weak = registry.predicted_class_counts(mlwp_model.load(trained["weak"]), test)
    assert weak == {"No": len(test)}
    strong = registry.predicted_class_counts(mlwp_model.load(trained["strong"]), test)
    assert strong is not None and set(strong) == {"No", "Yes"}
