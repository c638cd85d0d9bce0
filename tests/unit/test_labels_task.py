"""The labels task type (issue #14): definition, compiled operator, bulk ingestion from a file
and from a PostgreSQL query, column mapping, class values, and re-runs that write nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mlwp.monitoring.capture import MonitoringError, read_labels
from mlwp.monitoring.labels import ingest_labels

pytestmark = pytest.mark.unit

DEFINITION = """\
project: shop
owner: alice
workflows:
  watch:
    schedule: "@daily"
    tasks:
      labels:
        type: labels
        model: shop
        source: data/outcomes.csv
        columns: {entity_key: customer_id, label: churn, label_time: churned_at}
        classes: ["No", "Yes"]
      monitor:
        type: monitor
        model: shop
        after: [labels]
"""

OUTCOMES = """\
customer_id,churn,churned_at
c1,Yes,2026-11-01T10:00:00Z
c2,No,2026-11-02T10:00:00Z
"""


def _project(tmp_path: Path, text: str = DEFINITION) -> tuple[object, Path]:
    from mlwp.definitions.loading import load_project

    folder = tmp_path / "shop"
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "outcomes.csv").write_text(OUTCOMES)
    (folder / "workflow.yaml").write_text(text)
    return load_project(folder / "workflow.yaml"), folder


def test_compiled_task_ingests_once(tmp_path: Path) -> None:
    from mlwp.definitions.schema import LabelsTask
    from operators.compiler import build_dag
    from operators.labels import LabelsOperator

    project, folder = _project(tmp_path)
    task = project.workflows["watch"].tasks["labels"]  # type: ignore[attr-defined]
    assert isinstance(task, LabelsTask)
    dag = build_dag(project, "watch", project_dir=folder, grant_role=False)
    operator = dag.get_task("labels")
    assert isinstance(operator, LabelsOperator)
    assert dag.get_task("monitor").upstream_task_ids == {"labels"}
    root = (tmp_path / "storage").as_uri()
    operator.storage_root = root

    first = operator.execute({})  # type: ignore[arg-type]
    assert (first["rows"], first["written"], first["unchanged"]) == (2, 2, 0)
    assert first["source"] == "shop.watch.labels"
    again = operator.execute({})  # type: ignore[arg-type]
    assert (again["written"], again["unchanged"], again["parts"]) == (0, 2, [])

    (folder / "data" / "outcomes.csv").write_text(OUTCOMES + "c3,Yes,2026-11-03T10:00:00Z\n")
    grown = operator.execute({})  # type: ignore[arg-type]
    assert (grown["written"], grown["unchanged"]) == (1, 2)
    labels = read_labels(root, "shop")
    assert dict(zip(labels["entity_key"], labels["label"], strict=True)) == {
        "c1": 1.0,
        "c2": 0.0,
        "c3": 1.0,
    }
    assert str(labels["label_time"].iloc[0]) == "2026-11-01 10:00:00+00:00"


def test_csv_keys_are_read_as_text(tmp_path: Path) -> None:
    """A key column is read as it is written: "0012" stays "0012" (pandas' inference made it
    12, which joins no prediction captured as "0012"), a 19-digit id beside an empty cell
    keeps its digits; a dtype the definition gives for the column still wins."""
    from operators.compiler import build_dag

    project, folder = _project(tmp_path)
    (folder / "data" / "outcomes.csv").write_text(
        "customer_id,churn,churned_at\n"
        "0012,Yes,2026-11-01T10:00:00Z\n"
        "1234567890123456789,No,2026-11-02T10:00:00Z\n"
        ",No,2026-11-02T10:00:00Z\n"
    )
    operator = build_dag(project, "watch", project_dir=folder, grant_role=False).get_task("labels")
    frame, _ = operator._read()  # type: ignore[attr-defined]
    assert frame["customer_id"].tolist()[:2] == ["0012", "1234567890123456789"]

    operator.read_options = {"dtype": {"customer_id": "float64"}}  # type: ignore[attr-defined]
    frame, _ = operator._read()  # type: ignore[attr-defined]
    assert frame["customer_id"].iloc[0] == 12.0


def test_a_row_with_a_label_time_in_the_future_fails_the_task_naming_it(tmp_path: Path) -> None:
    """A row whose label_time is later than now (beyond five minutes of clock skew) was
    stored, as the feedback endpoint stored such a label; it is refused like the task's
    other bad rows: the task fails naming the file, the row and the field, and stores
    nothing until the file is fixed."""
    from operators.compiler import build_dag

    project, folder = _project(tmp_path)
    outcomes = folder / "data" / "outcomes.csv"
    outcomes.write_text(OUTCOMES + "c3,Yes,2099-01-01T10:00:00Z\n")
    operator = build_dag(project, "watch", project_dir=folder, grant_role=False).get_task("labels")
    root = (tmp_path / "storage").as_uri()
    operator.storage_root = root  # type: ignore[attr-defined]
    with pytest.raises(MonitoringError) as caught:
        operator.execute({})  # type: ignore[arg-type]
    assert caught.value.message.startswith(
        f"task 'labels' ({outcomes.as_uri()})[2].label_time: 2099-01-01T10:00:00+00:00 is in "
        "the future"
    )
    assert read_labels(root, "shop").empty

    outcomes.write_text(OUTCOMES + "c3,Yes,2026-11-03T10:00:00Z\n")
    assert operator.execute({})["written"] == 3  # type: ignore[arg-type]


def test_definition_problems_are_named(tmp_path: Path) -> None:
    from mlwp.definitions.problems import DefinitionError
    from operators.labels import LabelsOperator

    bad = DEFINITION.replace("        source: data/outcomes.csv\n", "")
    with pytest.raises(DefinitionError, match="exactly one of 'source' or 'query'"):
        _project(tmp_path, bad)
    typo = DEFINITION.replace("{entity_key: customer_id", "{entity: customer_id")
    with pytest.raises(DefinitionError, match="entity"):
        _project(tmp_path, typo)
    # an empty class list was accepted, and the task ran as if classes were unset
    empty = DEFINITION.replace('classes: ["No", "Yes"]', "classes: []")
    with pytest.raises(DefinitionError) as caught:
        _project(tmp_path, empty)
    assert (
        "workflow.yaml:12:18: workflows.watch.tasks.labels.classes: List should have at least "
        "1 item after validation, not 0"
    ) in str(caught.value)
    with pytest.raises(ValueError, match="'classes' is empty"):
        LabelsOperator(task_id="labels", project="shop", model="shop", source="x.csv", classes=[])
    # a class listed twice: a label naming it always took the first index
    repeated = DEFINITION.replace('classes: ["No", "Yes"]', 'classes: ["No", "Yes", "No"]')
    with pytest.raises(DefinitionError) as caught:
        _project(tmp_path, repeated)
    assert ("workflows.watch.tasks.labels.classes: class 'No' is listed twice (at 0 and 2)") in str(
        caught.value
    )
    with pytest.raises(ValueError, match=r"'classes': class '1' is listed twice \(at 0 and 1\)"):
        LabelsOperator(
            task_id="labels", project="shop", model="shop", source="x.csv", classes=[1, "1"]
        )


def test_mapping_and_values_are_checked(tmp_path: Path) -> None:
    root = str(tmp_path)
    frame = pd.DataFrame({"id": ["r1", "r2"], "outcome": [1, 0]})
    with pytest.raises(MonitoringError, match="no 'label' column"):
        ingest_labels(frame, root=root, model="m", source="s")
    with pytest.raises(MonitoringError, match=r"columns\.label: the source has no column 'y'"):
        ingest_labels(frame, root=root, model="m", source="s", columns={"label": "y"})
    with pytest.raises(MonitoringError, match="needs an 'inference_id' or 'entity_key'"):
        ingest_labels(frame, root=root, model="m", source="s", columns={"label": "outcome"})
    summary = ingest_labels(
        frame, root=root, model="m", source="s", columns={"inference_id": "id", "label": "outcome"}
    )
    assert summary["written"] == 2
    stored = read_labels(root, "m")
    assert list(stored["row"]) == [0, 0] and list(stored["label"]) == [1.0, 0.0]
    # a corrected outcome is written and wins
    frame.loc[0, "outcome"] = 0
    fixed = ingest_labels(
        frame, root=root, model="m", source="s", columns={"inference_id": "id", "label": "outcome"}
    )
    assert (fixed["written"], fixed["unchanged"]) == (1, 1)
    assert list(read_labels(root, "m").sort_values("inference_id")["label"]) == [0.0, 0.0]
    with pytest.raises(MonitoringError, match=r"labels\[1\]: missing label"):
        ingest_labels(
            pd.DataFrame({"entity_key": ["a", "b"], "label": [1.0, None]}),
            root=root,
            model="m",
            source="s",
        )


def test_a_rerun_does_not_undo_a_correction_received_since(tmp_path: Path) -> None:
    """Re-running an ingestion over an unchanged file compared its rows with the store's
    latest label only: a correction the feedback endpoint received in between differed, so
    the re-run wrote the file's row again, received last, and the correction was undone. A
    row this source already stored unchanged is left alone; a row the file changes still
    wins."""
    from mlwp.monitoring.capture import write_labels

    root = str(tmp_path)
    frame = pd.DataFrame({"entity_key": ["c1", "c2"], "label": [1, 0]})
    first = ingest_labels(frame, root=root, model="m", source="shop.watch.labels")
    assert (first["written"], first["unchanged"]) == (2, 0)
    write_labels(root, "m", [{"entity_key": "c1", "label": 0}], source="api")  # a correction

    again = ingest_labels(frame, root=root, model="m", source="shop.watch.labels")
    assert (again["written"], again["unchanged"]) == (0, 2)
    latest = read_labels(root, "m").set_index("entity_key")
    assert (latest.loc["c1", "label"], latest.loc["c1", "source"]) == (0.0, "api")

    frame.loc[1, "label"] = 1  # the file itself changes c2: written, and wins
    changed = ingest_labels(frame, root=root, model="m", source="shop.watch.labels")
    assert (changed["written"], changed["unchanged"]) == (1, 1)
    assert read_labels(root, "m").set_index("entity_key").loc["c2", "label"] == 1.0

    # a label another source already holds is not written again either
    other = ingest_labels(frame.iloc[:1].assign(label=0), root=root, model="m", source="x.y.z")
    assert (other["written"], other["unchanged"]) == (0, 1)


@pytest.mark.integration
def test_labels_from_a_postgres_query(
    tmp_path: Path, postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy
    from airflow.sdk import DAG

    from operators.labels import LabelsOperator

    engine = sqlalchemy.create_engine(postgres_database)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE outcomes (request_id text, churned boolean)"))
        conn.execute(
            sqlalchemy.text("INSERT INTO outcomes VALUES ('r1', true), ('r2', false), ('r3', NULL)")
        )
    engine.dispose()
    monkeypatch.setenv(
        "AIRFLOW_CONN_OUTCOMES_DB", postgres_database.replace("postgresql", "postgres", 1)
    )
    with DAG("shop.watch", schedule=None):
        operator = LabelsOperator(
            task_id="labels",
            project="shop",
            model="shop",
            query="SELECT request_id AS inference_id, churned AS label FROM outcomes "
            "WHERE churned IS NOT NULL",
            conn_id="outcomes_db",
            storage_root=str(tmp_path),
        )
    summary = operator.execute({})  # type: ignore[arg-type]
    assert summary["written"] == 2 and summary["from"] == "postgres://outcomes_db"
    stored = read_labels(str(tmp_path), "shop")
    assert dict(zip(stored["inference_id"], stored["label"], strict=True)) == {"r1": 1.0, "r2": 0.0}


def test_the_churn_examples_first_predictions_get_labels(tmp_path: Path) -> None:
    """The first-run walkthrough (train, `mlwp predict churn --file example_rows.json`, then
    churn.monitor) showed no labelled rows: the example rows carried no customer_id, so no
    entity key was captured and the outcomes file (keyed by customer_id) joined nothing. The
    rows are customers 1-3 of telco_churn.csv now; outcomes.csv knows 1 and 3, so two of the
    three predictions are labelled by the monitor's labels task, run after them."""
    from datetime import UTC, datetime, timedelta

    from mlwp.cli.run import read_rows
    from mlwp.definitions.loading import load_project
    from mlwp.monitoring.capture import join_labels
    from mlwp.settings import REPO_ROOT
    from operators.compiler import build_dag

    folder = REPO_ROOT / "dags" / "projects" / "churn"
    rows = read_rows(folder / "data" / "example_rows.json")
    data = pd.read_csv(folder / "data" / "telco_churn.csv", dtype={"customer_id": str})
    for record in rows:  # the rows are the dataset's records of those customers
        match = data[data["customer_id"] == record["customer_id"]]
        assert len(match) == 1, record
        for field, value in record.items():
            if field in ("monthly_charges", "total_charges"):
                assert float(match.iloc[0][field]) == pytest.approx(value), (record, field)
            else:
                assert str(match.iloc[0][field]) == str(value), (record, field)

    project = load_project(folder / "workflow.yaml")
    task = build_dag(project, "monitor", project_dir=folder, grant_role=False).get_task("labels")
    predicted = datetime.now(UTC) - timedelta(minutes=1)  # before the labels are ingested
    frame, _ = task._read()  # type: ignore[attr-defined]
    root = (tmp_path / "storage").as_uri()
    ingest_labels(
        frame,
        root=root,
        model="churn",
        source="churn.monitor.labels",
        columns=task.columns,  # type: ignore[attr-defined]
        classes=task.classes,  # type: ignore[attr-defined]
    )
    # what serving captures of one request of those rows (entity field customer_id)
    capture = pd.DataFrame(
        {
            "inference_id": ["r1"] * len(rows),
            "row": range(len(rows)),
            "entity_key": [str(record.get("customer_id")) for record in rows],
            "time": pd.Series([predicted] * len(rows), dtype="datetime64[ms, UTC]"),
        }
    )
    joined = join_labels(capture, read_labels(root, "churn"))
    assert joined["label"].tolist()[0] == 0 and joined["label"].tolist()[2] == 1
    assert int(joined["label"].notna().sum()) == 2
