"""``mlwp expectations``: draft and check Great Expectations suites from data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer

app = typer.Typer(help="Great Expectations suites: suggest and check.", no_args_is_help=True)


def _read(dataset: str, fmt: str | None) -> object:
    """Read a CSV/Parquet path or URI, or a stored dataset (<sha256>.parquet, verified)."""
    from mlwp.data.extract import extract_frame
    from mlwp.data.storage import SHA256_PATTERN, Storage

    stem = dataset.rsplit("/", 1)[-1].removesuffix(".parquet")
    if dataset.endswith(".parquet") and SHA256_PATTERN.match(stem):
        root = dataset.rsplit("/", 1)[0]
        return Storage(root).read_dataset(
            dataset if "://" in dataset else Path(dataset).resolve().as_uri()
        )
    frame, _ = extract_frame(dataset, project_dir=Path.cwd(), fmt=fmt)
    return frame


@app.command("suggest")
def suggest(
    dataset: Annotated[
        str, typer.Argument(help="CSV or Parquet file (path, file:// or s3://) or stored dataset.")
    ],
    *,
    name: Annotated[
        str | None, typer.Option(help="Suite name; the file name without suffix by default.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write; expectations/<name>.json by default."),
    ] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="csv or parquet.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
    stdout: Annotated[bool, typer.Option("--stdout", help="Print the suite instead.")] = False,
) -> None:
    """Draft a suite from data: columns, types, null fractions, value sets and ranges."""
    from mlwp.data.validation import suggest_suite
    from mlwp.errors import MlwpError
    from mlwp.settings import get_settings

    suite_name = name or Path(dataset.rsplit("/", 1)[-1]).stem.split(".")[0]
    try:
        frame = _read(dataset, fmt)
        spec = suggest_suite(frame, suite_name)  # type: ignore[arg-type]
    except MlwpError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    text = orjson.dumps(spec, option=orjson.OPT_INDENT_2).decode() + "\n"
    if stdout:
        typer.echo(text, nl=False)
        return
    target = output or get_settings().expectations_folder / f"{suite_name}.json"
    if target.exists() and not force:
        typer.echo(f"error: {target} exists; pass --force to overwrite", err=True)
        raise typer.Exit(1)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    typer.echo(f"wrote {len(spec['expectations'])} expectations to {target}")


@app.command("check")
def check(
    dataset: Annotated[str, typer.Argument(help="CSV or Parquet file, or stored dataset.")],
    suite: Annotated[str, typer.Argument(help="Suite name (expectations/<suite>.json).")],
    *,
    fmt: Annotated[str | None, typer.Option("--format", help="csv or parquet.")] = None,
) -> None:
    """Validate data against a suite and print each failed expectation; exit 1 on failure."""
    from mlwp.data.validation import validate_frame
    from mlwp.errors import MlwpError

    try:
        report = validate_frame(_read(dataset, fmt), suite)  # type: ignore[arg-type]
    except MlwpError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    if not report.success:
        typer.echo(report.failure_message(), err=True)
        raise typer.Exit(1)
    stats = report.statistics
    typer.echo(f"suite {suite!r}: {stats['successful']}/{stats['evaluated']} expectations passed")
