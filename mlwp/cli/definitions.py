"""``mlwp validate`` and ``mlwp schema``: check workflow definitions, export their JSON Schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

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
    for file in files:
        _, file_problems = check_file(
            file,
            expectations_dir=settings.expectations_folder,
            check_references=not no_references,
            inspect_data=not no_references,
            placement=settings.placement,
        )
        problems.extend(file_problems)
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
