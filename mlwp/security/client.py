"""Run ``operators.rbac`` commands under the platform's Airflow environment.

``mlwp`` itself never imports Airflow: user and role commands run FAB's security manager in a
child process configured by :func:`mlwp.platform.airflow_config.airflow_environment`, with the
request (passwords included) on stdin, never on the command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mlwp.security.roles import SecurityError
from mlwp.settings import REPO_ROOT, Settings


def run_rbac(command: str, request: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Run one ``operators.rbac`` command and return its JSON answer, or raise its error."""
    from mlwp.platform.airflow_config import airflow_environment
    from mlwp.platform.processes import without_fab_sync

    require_airflow_database(settings.airflow_database_url)

    # FAB syncs its permissions whenever its app starts unless told not to. No command needs
    # that: `sync` does FAB's sync itself, first (as `airflow sync-perm` does), and the others
    # read or add users. It cost every command seconds, and made each a writer of FAB's tables
    # next to a running roles sync (the one writer `mlwp up` intends).
    env = without_fab_sync({**os.environ, **airflow_environment(settings)})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "operators.rbac", command],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
        check=False,
    )
    answer: dict[str, Any] | None = None
    # Airflow may log to stdout before the answer: the answer is the last JSON line.
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            try:
                answer = json.loads(line)
            except json.JSONDecodeError:
                continue
            break
    if answer is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise SecurityError(
            f"`operators.rbac {command}` exited with {proc.returncode} and no answer:\n"
            + "\n".join(tail),
            code="rbac_failed",
        )
    if "error" in answer:
        raise SecurityError(answer["error"]["message"], code=answer["error"]["code"])
    return answer


def require_airflow_database(url: str) -> None:
    """Raise a one-line cause unless Airflow's metadata database at ``url`` has its tables.

    Before the first ``mlwp up`` there is none: a user or role command then ended in
    Airflow's traceback ("no such table: variable"), and left an empty SQLite file behind.
    """
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from mlwp.platform.preflight import display_url

    parsed = make_url(url)
    shown = display_url(url)
    fix = (
        "start the platform once with `mlwp up` (it sets the database up) "
        "or run `mlwp airflow db migrate`"
    )
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        raise SecurityError(
            f"Airflow's database {shown} does not exist yet: {fix}", code="database_not_set_up"
        )
    # a host that drops packets must not hold the command for the driver's default minutes
    timeout = {"connect_timeout": 5} if parsed.get_backend_name() == "postgresql" else {}
    engine = create_engine(parsed, connect_args=timeout)
    try:
        with engine.connect() as connection:
            migrated = inspect(connection).has_table("alembic_version")
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        first = cause[0] if cause else type(exc).__name__
        raise SecurityError(
            f"Airflow's database {shown} is unreachable: {first}", code="database_unreachable"
        ) from exc
    finally:
        engine.dispose()
    if not migrated:
        raise SecurityError(
            f"Airflow's database {shown} has no tables yet: {fix}", code="database_not_set_up"
        )
