"""``mlwp validate`` and ``mlwp schema``: check workflow definitions, export their JSON Schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from mlwp.definitions import Project
    from mlwp.definitions.problems import Problem
    from mlwp.settings import Settings

app = typer.Typer(no_args_is_help=False)


@app.command("validate")
def validate(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Definition files or folders (a folder: its */workflow.yaml). "
            "Default: the DAG folder's projects/."
        ),
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="text or json (one object per problem)")
    ] = "text",
    no_references: Annotated[
        bool, typer.Option("--no-references", help="Skip checks of datasets, suites, callables.")
    ] = False,
    platform: Annotated[
        bool,
        typer.Option(
            help="When `mlwp up` runs: warn about owners/members who are not Airflow users "
            "and say when a project's role will be created."
        ),
    ] = True,
) -> None:
    """Validate workflow definitions; print every problem as file:line:column and exit 1 if any.

    Warnings (an imbalanced binary target, for instance) are printed but do not fail.
    """
    from mlwp.definitions.loading import check_file, find_definitions
    from mlwp.settings import get_settings

    if output_format not in ("text", "json"):
        raise typer.BadParameter(f"--format is text or json, got {output_format!r}")
    settings = get_settings()
    targets = paths or [settings.dags_folder / "projects"]
    files = find_definitions(targets)
    if not files:
        typer.echo(f"no definition files under {', '.join(str(p) for p in targets)}", err=True)
        raise typer.Exit(2)
    problems = []
    projects = []
    for file in files:
        project, file_problems = check_file(
            file,
            expectations_dir=settings.expectations_folder,
            check_references=not no_references,
            inspect_data=not no_references,
            placement=settings.placement,
        )
        problems.extend(file_problems)
        if project is not None:
            projects.append((file, project))
    if platform and projects and _platform_running(settings):
        problems.extend(_people_problems(projects, settings))
    errors = [problem for problem in problems if problem.is_error]
    warnings = len(problems) - len(errors)
    if output_format == "json":
        sys.stdout.write(json.dumps([problem.as_dict() for problem in problems], indent=2) + "\n")
    else:
        for problem in problems:
            typer.echo(str(problem))
        broken = len({problem.file for problem in errors})
        summary = (
            f"{len(files)} definition{'s' if len(files) != 1 else ''} checked, "
            f"{len(errors)} problem{'s' if len(errors) != 1 else ''}"
            + (f" in {broken} file{'s' if broken != 1 else ''}" if errors else "")
            + (f", {warnings} warning{'s' if warnings != 1 else ''}" if warnings else "")
        )
        typer.echo(summary, err=True)
    if errors:
        raise typer.Exit(1)


@app.command("schema")
def schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Print the JSON Schema of workflow definitions (for editor completion and checks)."""
    from mlwp.definitions.schema import definition_json_schema

    text = json.dumps(definition_json_schema(), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}", err=True)


def _platform_running(settings: Settings) -> bool:
    from mlwp.platform.state import SupervisorLock

    return SupervisorLock(settings.home).held_by_other()


def _people_problems(projects: list[tuple[Path, Project]], settings: Settings) -> list[Problem]:
    """Warnings about the running platform: unknown owners/members, roles still to create."""
    from mlwp.definitions.problems import Problem
    from mlwp.security.client import run_rbac
    from mlwp.security.roles import MEMBER_ROLES, SecurityError

    names = sorted({n for _, p in projects for n in (p.owner, *p.members)})
    try:
        answer = run_rbac("people", {"users": names}, settings)
    except SecurityError as exc:
        return [Problem("(platform)", 0, 0, (), f"cannot read users: {exc.message}", "platform",
                        "warning")]  # fmt: skip
    users: dict[str, list[str] | None] = answer["users"]
    roles = set(answer["roles"])
    found: list[Problem] = []
    for file, project in projects:
        text = file.read_text(encoding="utf-8").splitlines()
        for field, name in [("owner", project.owner), *(("members", m) for m in project.members)]:
            line = next(
                (i + 1 for i, t in enumerate(text) if t.startswith(f"{field}:") and name in t), 0
            )
            held = users.get(name)
            if held is None:
                message = (
                    f"user '{name}' is not an Airflow user: the project's role cannot be "
                    f"granted until `mlwp users add {name} --role DataScientist "
                    f"--project {project.project}`"
                )
            elif not MEMBER_ROLES & set(held):
                message = f"user '{name}' has roles {held}: membership needs Admin or DataScientist"
            else:
                continue
            found.append(Problem(str(file), line, 1 if line else 0, (field,), message,
                                 "unknown_user", "warning"))  # fmt: skip
        if project.role not in roles:
            found.append(
                Problem(
                    str(file), 1, 1, ("project",),
                    f"role '{project.role}' does not exist yet: the running platform's "
                    "roles-sync creates it within seconds of the definition being saved, and "
                    "the project's DAGs are granted to it at the next parse (30 s)",
                    "role_pending", "warning",
                )
            )  # fmt: skip
    return found
