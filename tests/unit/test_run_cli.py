"""`mlwp predict` reads the rows a user has at hand: JSON records or a CSV file."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import typer

from mlwp.cli.run import read_rows
from mlwp.settings import REPO_ROOT

pytestmark = pytest.mark.unit


def test_rows_from_json_records_or_a_data_body(tmp_path: Path) -> None:
    example = read_rows(REPO_ROOT / "dags" / "projects" / "churn" / "data" / "example_rows.json")
    assert len(example) == 3 and "churn" not in example[0] and "tenure" in example[0]
    listed = tmp_path / "rows.json"
    listed.write_bytes(orjson.dumps([{"a": 1}]))
    assert read_rows(listed) == [{"a": 1}]


def test_rows_from_csv_are_typed_and_empty_cells_are_missing(tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("tenure,monthly,contract,total\n3,29.85,Month-to-month,\n")
    assert read_rows(rows) == [{"tenure": 3, "monthly": 29.85, "contract": "Month-to-month"}]


def test_a_csv_value_with_a_leading_zero_stays_text(tmp_path: Path) -> None:
    """`mlwp predict --file rows.csv` sent customer_id "0012" as 12, so the captured entity
    key never matched the label "0012" (the labels task keeps keys as text)."""
    rows = tmp_path / "rows.csv"
    rows.write_text("customer_id,zip,zero,share,neg,small\n0012,-007,0,0.5,-0.25,00.5\n")
    assert read_rows(rows) == [
        {
            "customer_id": "0012",
            "zip": "-007",
            "zero": 0,
            "share": 0.5,
            "neg": -0.25,
            "small": "00.5",
        }
    ]


def test_anything_else_is_refused_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "rows.json"
    bad.write_bytes(orjson.dumps({"rows": []}))
    with pytest.raises(typer.BadParameter, match=r"rows\.json: expected a list of records"):
        read_rows(bad)


def test_a_missing_file_or_broken_json_is_one_error_line_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mlwp predict churn --file rows.json` (the file `mlwp run` told users to try) ended in
    a FileNotFoundError traceback, and a file that is not JSON in a JSONDecodeError one."""
    from typer.testing import CliRunner

    from mlwp.cli import app

    monkeypatch.setenv("MLWP_HOME", str(tmp_path))
    missing = CliRunner().invoke(app, ["predict", "churn", "--file", str(tmp_path / "rows.json")])
    assert missing.exit_code == 2, missing.output
    assert "does not exist" in missing.output and missing.exception is not None
    assert isinstance(missing.exception, SystemExit)
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2")
    with pytest.raises(typer.BadParameter, match=r"broken\.json: not JSON"):
        read_rows(broken)


def test_the_hint_after_a_deploy_names_a_file_that_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlwp.cli.run import predict_hint

    monkeypatch.chdir(REPO_ROOT)
    hint = predict_hint(REPO_ROOT / "dags", "churn.train", "churn")
    assert hint == "mlwp predict churn --file dags/projects/churn/data/example_rows.json"
    assert (REPO_ROOT / hint.rpartition(" ")[2]).is_file()
    other = predict_hint(tmp_path, "shop.train", "shop")
    assert other == "mlwp predict shop --file <rows.json or rows.csv>"


class _FakeAirflow:
    """Airflow's REST answers for a finished run, by path (RunError for a missing XCom)."""

    def __init__(self, tis: list[dict], xcoms: dict[tuple[str, str], object]) -> None:
        self.tis, self.xcoms = tis, xcoms

    def request(self, method: str, path: str, **kwargs: object) -> object:
        from mlwp.cli.run import RunError

        if path.endswith("/taskInstances"):
            return {"task_instances": self.tis}
        task_id, key = path.split("/taskInstances/")[1].split("/xcomEntries/")
        if (task_id, key) not in self.xcoms:
            raise RunError(f"GET {path}: HTTP 404")
        return {"value": self.xcoms[task_id, key]}


def test_a_run_whose_gate_refused_the_version_says_so_and_why() -> None:
    """A second `mlwp run churn.train --approve` on a fresh platform retrains the same model:
    the gate refuses it (no better than the champion), register, approve and deploy are
    skipped, and the run succeeds. The command ended with "success" and nothing about the
    model, as if registering had silently not happened; now it prints the gate's verdict."""
    from mlwp.cli.run import _outcome

    summary = "roc_auc=0.8460 does not beat champion v1 (0.8460) by the margin 0.0"
    api = _FakeAirflow(
        [
            {"task_id": "register", "operator": "RegisterOperator", "state": "skipped"},
            {"task_id": "deploy", "operator": "DeployOperator", "state": "skipped"},
        ],
        {("register", "gate"): orjson.dumps({"passed": False, "summary": summary}).decode()},
    )
    lines: list[str] = []
    assert _outcome(api, "churn.train", "manual__1", lines.append) is None  # type: ignore[arg-type]
    assert lines == [f"not registered (register skipped): {summary}"]
    # no verdict stored: the message still says it was not registered, and where to look
    api.xcoms.clear()
    lines.clear()
    _outcome(api, "churn.train", "manual__1", lines.append)  # type: ignore[arg-type]
    assert lines == ["not registered (register skipped): see its log"]


def test_a_registered_and_deployed_version_is_printed() -> None:
    from mlwp.cli.run import _outcome

    api = _FakeAirflow(
        [
            {"task_id": "register", "operator": "RegisterOperator", "state": "success"},
            {"task_id": "deploy", "operator": "DeployOperator", "state": "success"},
        ],
        {
            ("register", "return_value"): {"model": "churn", "version": "2"},
            ("deploy", "return_value"): {
                "model": "churn",
                "alias": "challenger",
                "version": "2",
                "traffic": {"champion": 90, "challenger": 10},
                "serving": {"state": "serving"},
            },
        },
    )
    lines: list[str] = []
    assert _outcome(api, "churn.train", "manual__1", lines.append) == "churn"  # type: ignore[arg-type]
    assert lines == [
        "registered: churn version 2",
        "deployed: churn@challenger -> version 2, traffic champion 90%, challenger 10%",
    ]
    # serving not showing it: its message says why
    api.xcoms["deploy", "return_value"]["serving"] = {
        "state": "refused",
        "message": "answered 401 to POST /admin/reload",
    }
    lines.clear()
    _outcome(api, "churn.train", "manual__1", lines.append)  # type: ignore[arg-type]
    assert lines[-1] == (
        "deployed: churn@challenger -> version 2, traffic champion 90%, challenger 10% "
        "(serving: answered 401 to POST /admin/reload)"
    )


def test_what_serves_is_one_readable_line() -> None:
    """The end of `mlwp run churn.train` printed "serving churn: {...}", serving's whole
    entry as JSON (the signature included); it is one line now: variants, versions, shares,
    the URL to predict at."""
    from mlwp.cli.run import serving_summary

    entry = {
        "name": "churn",
        "variants": [
            {"alias": "champion", "version": "1", "run_id": "r1", "classes": [0, 1]},
            {"alias": "challenger", "version": "2", "run_id": "r2", "classes": [0, 1]},
        ],
        "traffic": {"champion": 90.0, "challenger": 10.0},
        "effective_traffic": {"champion": 90.0, "challenger": 10.0},
        "signature": {"type": "object", "properties": {"tenure": {"type": "number"}}},
        "load_errors": [],
    }
    assert serving_summary("http://127.0.0.1:8000", entry) == [
        "serving churn: champion v1 90%, challenger v2 10% at "
        "http://127.0.0.1:8000/v1/models/churn/predict"
    ]
    entry["load_errors"] = [{"version": "3", "error": "boom"}]
    assert serving_summary("http://127.0.0.1:8000", entry)[1] == (
        "  1 version(s) not loaded: see http://127.0.0.1:8000/v1/models"
    )


def test_a_monitor_run_says_what_the_look_found() -> None:
    """`mlwp run churn.monitor` ended with "success after 12s" and nothing of the result:
    rows, labels, the decision, drift and alerts were only in the task log and MLflow."""
    from mlwp.cli.run import _outcome

    result = {
        "model": "churn",
        "versions": {"champion": "1"},
        "rows": 303,
        "labelled_rows": 24,
        "metric": "accuracy",
        "comparison": {"decision": "no_difference_yet", "reason": "no labelled rows of x"},
        "drift": {"drifted": True, "skipped": None},
        "alerts": ["drift in champion v1: tenure (share 5%)"],
        "mlflow_run_id": "abc123",
    }
    api = _FakeAirflow(
        [{"task_id": "monitor", "operator": "MonitorOperator", "state": "success"}],
        {("monitor", "return_value"): result},
    )
    lines: list[str] = []
    assert _outcome(api, "churn.monitor", "manual__1", lines.append) is None  # type: ignore[arg-type]
    assert lines == [
        "monitor churn (champion v1): 303 rows, 24 labelled; accuracy comparison: "
        "no_difference_yet (no labelled rows of x); drift: drifted",
        "  alert: drift in champion v1: tenure (share 5%)",
        "  MLflow run abc123 (monitor/report.html)",
    ]


def test_a_broken_conf_is_refused_before_the_dag_is_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mlwp run churn.train --conf '{bad json'` unpaused the DAG (starting its scheduled
    run), then ended in a JSONDecodeError traceback; it is a usage error now, before any
    request (none is possible here: the login would fail first)."""
    from typer.testing import CliRunner

    from mlwp.cli import app

    monkeypatch.setenv("MLWP_HOME", str(tmp_path))
    monkeypatch.setenv("MLWP_AIRFLOW_PORT", "9")  # nothing answers: no request may be made
    for conf, says in (("{bad json", "not JSON"), ("[1]", "expected a JSON object")):
        result = CliRunner().invoke(app, ["run", "churn.train", "--conf", conf])
        assert result.exit_code == 2, result.output
        assert "--conf" in result.output and says in result.output, result.output
        assert isinstance(result.exception, SystemExit)
