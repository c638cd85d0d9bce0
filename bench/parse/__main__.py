"""Parse-time benchmark: mlwp YAML definitions vs the same DAGs in plain Python vs dag-factory.

Generates N projects with one 7-task training workflow each, writes the same DAGs three ways,
then parses each DAG folder with a ``DagBag`` in a fresh Python process (one after the other,
in one run) and prints seconds, peak RSS and the ratios::

    python -m bench.parse            # N=1000
    python -m bench.parse --n 200 --keep

The plain-Python floor and dag-factory build the very same DAGs as mlwp: the same operator
classes with the same keyword arguments, the same default_args, tags, doc_md, access_control,
outlets and schedules. mlwp's time includes validation (schema, graph, dataset and suite
references). Targets (issue #3): mlwp <= 1.3x plain Python, >= 3.5x faster than dag-factory,
peak RSS no higher than dag-factory's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The peer, kept out of the project's environment: its Airflow plugin (an entry point) would load
# in every task process of every user's platform and log Airflow 2 deprecation warnings there.
DAG_FACTORY = "dag-factory==1.1.0"
TASK_TYPES = ("extract", "validate", "transform", "train", "register", "approve", "deploy")


def definition_yaml(index: int) -> str:
    """A project with one 7-task training workflow (the churn workflow's shape)."""
    return textwrap.dedent(
        f"""\
        project: p{index:05d}
        description: Benchmark project {index}
        owner: alice
        members: [bob]
        tags: [bench]
        defaults: {{retries: 2, retry_delay: 5m, timeout: 2h}}
        workflows:
          train:
            schedule: "@weekly"
            tasks:
              extract: {{type: extract, source: data/input.csv}}
              validate: {{type: validate, suite: bench_suite, after: [extract]}}
              features:
                type: transform
                after: [validate]
                steps:
                  - {{op: drop, columns: [id]}}
                  - {{op: split, test_size: 0.2, seed: {index}}}
              train:
                type: train
                after: [features]
                target: label
                params: {{max_depth: 4, eta: 0.1}}
              register:
                type: register
                after: [train]
                model: m{index:05d}
                gate: {{metric: roc_auc, min: 0.8, beat: champion}}
              approve: {{type: approve, after: [register], mode: auto}}
              deploy:
                type: deploy
                after: [approve]
                model: m{index:05d}
                traffic: {{champion: 90, challenger: 10}}
        """
    )


def _operator_reference(task_type: str) -> tuple[str, dict[str, str]]:
    """Return the dotted class path used for a type, and the extra kwargs of a stand-in."""
    import functools

    from operators.task_types import OPERATORS, operator_factory

    factory = operator_factory(task_type)
    if isinstance(factory, functools.partial):
        return "operators.task_types.MissingOperator", dict(factory.keywords)
    return OPERATORS[task_type], {}


def generate(root: Path, n: int) -> dict[str, Path]:
    """Write the three DAG folders under ``root``; return them by variant name."""
    from mlwp.definitions import load_project
    from operators.compiler import access_control, doc_md

    mlwp_dir, plain_dir, factory_dir = root / "mlwp", root / "plain", root / "dagfactory"
    expectations = root / "expectations"
    for folder in (mlwp_dir / "projects", plain_dir, factory_dir, expectations):
        folder.mkdir(parents=True)
    (expectations / "bench_suite.json").write_text(
        json.dumps({"name": "bench_suite", "expectations": [], "meta": {}})
    )
    shutil.copy(REPO_ROOT / "dags" / "mlwp_projects.py", mlwp_dir / "mlwp_projects.py")
    shutil.copy(REPO_ROOT / "dags" / ".airflowignore", mlwp_dir / ".airflowignore")
    references = {task_type: _operator_reference(task_type) for task_type in TASK_TYPES}
    factory_loader = (
        '"""dag-factory loader (airflow dag)."""\n'
        "from dagfactory import load_yaml_dags\n\n"
        "load_yaml_dags(globals_dict=globals(), dags_folder=__file__.rpartition('/')[0])\n"
    )
    (factory_dir / "load_dagfactory.py").write_text(factory_loader)

    for index in range(n):
        project_dir = mlwp_dir / "projects" / f"p{index:05d}"
        (project_dir / "data").mkdir(parents=True)
        (project_dir / "data" / "input.csv").write_text("id,label\n1,0\n")
        definition = project_dir / "workflow.yaml"
        definition.write_text(definition_yaml(index))
        project = load_project(definition, expectations_dir=expectations)
        workflow = project.workflows["train"]
        dag_id = project.dag_id("train")
        doc = doc_md(project, "train", os.path.relpath(definition, mlwp_dir.parent))
        context = {"project": project.project, "workflow": "train", "project_dir": str(project_dir)}
        tasks = []
        for task_id, task in workflow.tasks.items():
            path, extra = references[task.type]
            kwargs = {**task.operator_kwargs(), **context, **extra}
            outlet = None
            if task.PRODUCES_DATASET:
                outlet = (f"{dag_id}.{task_id}", f"x-mlwp://{project.project}/train/{task_id}")
            tasks.append((task_id, path, kwargs, list(task.after), outlet))
        access = {
            role: {k: sorted(v) for k, v in perms.items()}
            for role, perms in access_control(project).items()
        }
        tags = ["mlwp", project.role, *project.tags]
        _write_plain(plain_dir / f"dag_{index:05d}.py", dag_id, doc, tags, access, tasks)
        _write_factory(factory_dir / f"dag_{index:05d}.yaml", dag_id, doc, tags, access, tasks)
    return {"plain": plain_dir, "mlwp": mlwp_dir, "dagfactory": factory_dir, "_exp": expectations}


def _write_plain(
    path: Path, dag_id: str, doc: str, tags: list[str], access: dict, tasks: list
) -> None:
    classes = sorted({class_path for _, class_path, _, _, _ in tasks})
    lines = [
        "# airflow DAG written by hand (benchmark floor)",
        "import datetime",
        "from airflow.sdk import DAG, Asset",
    ]
    aliases = {}
    for number, class_path in enumerate(classes):
        module, _, name = class_path.rpartition(".")
        aliases[class_path] = f"_Op{number}"
        lines.append(f"from {module} import {name} as _Op{number}")
    access_literal = {role: {k: set(v) for k, v in perms.items()} for role, perms in access.items()}
    lines += [
        "with DAG(",
        f"    dag_id={dag_id!r},",
        "    schedule='@weekly',",
        "    start_date=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),",
        "    catchup=False,",
        "    max_active_runs=1,",
        "    default_args={'owner': 'alice', 'retries': 2,",
        "                  'retry_delay': datetime.timedelta(minutes=5),",
        "                  'execution_timeout': datetime.timedelta(hours=2)},",
        f"    tags={tags!r},",
        f"    doc_md={doc!r},",
        f"    access_control={access_literal!r},",
        ") as dag:",
    ]
    for task_id, class_path, kwargs, _after, outlet in tasks:
        outlets = f", outlets=[Asset(name={outlet[0]!r}, uri={outlet[1]!r})]" if outlet else ""
        lines.append(
            f"    {task_id} = {aliases[class_path]}(task_id={task_id!r}, **{kwargs!r}{outlets})"
        )
    for task_id, _, _, after, _ in tasks:
        for upstream in after:
            lines.append(f"    {upstream} >> {task_id}")
    path.write_text("\n".join(lines) + "\n")


def _write_factory(
    path: Path, dag_id: str, doc: str, tags: list[str], access: dict, tasks: list
) -> None:
    import yaml

    config = {
        "default_args": {
            "owner": "alice",
            "retries": 2,
            "retry_delay": {"__type__": "datetime.timedelta", "minutes": 5},
            "execution_timeout": {"__type__": "datetime.timedelta", "hours": 2},
            "start_date": "2024-01-01",
        },
        "schedule": "@weekly",
        "catchup": False,
        "max_active_runs": 1,
        "tags": tags,
        "doc_md": doc,
        "access_control": access,
        "tasks": {},
    }
    for task_id, class_path, kwargs, after, outlet in tasks:
        task = {"operator": class_path, **kwargs}
        if after:
            task["dependencies"] = after
        if outlet:
            task["outlets"] = [
                {"__type__": "airflow.sdk.Asset", "name": outlet[0], "uri": outlet[1]}
            ]
        config["tasks"][task_id] = task
    path.write_text(yaml.safe_dump({dag_id: config}, sort_keys=False))


PARSE_SCRIPT = """
import json, resource, sys, time
from airflow.dag_processing.dagbag import DagBag
import airflow.sdk
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
start, start_cpu = time.perf_counter(), cpu()
bag = DagBag(dag_folder=sys.argv[1])
seconds, cpu_seconds = time.perf_counter() - start, cpu() - start_cpu
heavy = [m for m in ("xgboost", "great_expectations", "mlflow", "sagemaker", "boto3")
         if m in sys.modules]
print(json.dumps({
    "seconds": seconds, "cpu": cpu_seconds, "dags": len(bag.dags),
    "errors": len(bag.import_errors), "first_error": next(iter(bag.import_errors.values()), None),
    "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "heavy": heavy,
}))
"""


def dag_factory_path(root: Path) -> Path:
    """A folder holding dag-factory alone (its dependencies are the project's), installed with
    uv once, for the dag-factory parse's PYTHONPATH only."""
    marker = root / "installed.txt"
    if marker.exists() and marker.read_text() == DAG_FACTORY:
        return root
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path.home() / ".local" / "bin"))
    if uv is None:
        raise SystemExit(f"uv is needed to install {DAG_FACTORY} under {root} for the comparison")
    print(f"installing {DAG_FACTORY} into {root} ...", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(
        [uv, "pip", "install", "-q", "--no-deps", "--target", str(root), DAG_FACTORY], check=True
    )
    marker.write_text(DAG_FACTORY)
    return root


def parse_in_fresh_process(folder: Path, env: dict[str, str]) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"parsing {folder} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.parse", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--n", type=int, default=1000, help="number of workflows (default 1000)")
    parser.add_argument("--keep", action="store_true", help="keep the generated folders")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="mlwp-bench-parse-"))
    home = root / "home"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home / "airflow"),
        "MLWP_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "0",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    os.environ.update({k: env[k] for k in ("AIRFLOW_HOME", "MLWP_HOME")})
    try:
        folders = generate(root, args.n)
        env["MLWP_EXPECTATIONS_FOLDER"] = str(folders.pop("_exp"))
        factory_env = {
            **env,
            "PYTHONPATH": os.pathsep.join(
                [str(dag_factory_path(REPO_ROOT / ".bench" / "dag-factory")), env["PYTHONPATH"]]
            ),
        }
        results = {
            name: parse_in_fresh_process(folder, factory_env if name == "dagfactory" else env)
            for name, folder in folders.items()
        }
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"DagBag parse of {args.n} workflows x 7 tasks, each in a fresh process")
    print(f"{'variant':<12}{'wall s':>9}{'CPU s':>9}{'peak RSS MB':>13}{'DAGs':>7}{'errors':>8}")
    for name, result in results.items():
        print(
            f"{name:<12}{result['seconds']:>9.2f}{result['cpu']:>9.2f}{result['rss_mb']:>13.0f}"
            f"{result['dags']:>7}{result['errors']:>8}"
        )
        if result["first_error"]:
            print(f"  first error: {result['first_error'][:500]}")
    floor, ours, factory = results["plain"], results["mlwp"], results["dagfactory"]
    # CPU time is the fairer measure on a shared machine; wall time is printed beside it.
    for label, key in (("CPU", "cpu"), ("wall", "seconds")):
        print(
            f"{label:>4}: mlwp / plain Python {ours[key] / floor[key]:.2f}x (target <= 1.3x); "
            f"dag-factory / mlwp {factory[key] / ours[key]:.2f}x faster (target >= 3.5x)"
        )
    print(
        f"peak RSS mlwp / dag-factory: {ours['rss_mb']:.0f} / {factory['rss_mb']:.0f} MB "
        f"= {ours['rss_mb'] / factory['rss_mb']:.2f}x (target <= 1.0x)"
    )
    if ours["heavy"]:
        print(f"heavy modules imported while parsing mlwp DAGs: {', '.join(ours['heavy'])}")
    return 0 if all(r["errors"] == 0 and r["dags"] == args.n for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
