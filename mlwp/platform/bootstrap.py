"""First-run setup of the platform: Airflow's database and the initial admin user.

All steps are idempotent, so every ``mlwp up`` runs them: ``airflow db migrate`` creates or
upgrades the metadata database (the FAB tables included), ``mlwp roles sync`` writes FAB's
and the platform's roles, and the ``admin`` user is added only when it does not exist. The
admin's password is generated once, written to ``<home>/credentials`` (mode 0600) and shown
once, on the run that created it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson
from pydantic import BaseModel, ValidationError

from mlwp.errors import PlatformError
from mlwp.platform.processes import executable
from mlwp.platform.secrets import write_private
from mlwp.platform.supervisor import tail
from mlwp.settings import REPO_ROOT, Settings

ADMIN_ROLE = "Admin"


class Credentials(BaseModel):
    """The initial admin login, as stored in ``<home>/credentials``."""

    username: str
    password: str
    url: str
    # Whether `mlwp up` has printed the password yet: it is printed once, by the first start
    # that gets as far as "ready" (a first start that fails later has not shown it).
    shown: bool = False


@dataclass(frozen=True)
class AdminUser:
    """Outcome of ensuring the admin user: whether it was created now, and its login."""

    username: str
    password: str | None
    created: bool
    show_password: bool = False


def read_credentials(path: Path) -> Credentials | None:
    """Return the stored admin login, or None when there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return Credentials.model_validate(orjson.loads(data))
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise PlatformError(f"{path}: not a valid credentials file ({exc})") from exc


def write_credentials(path: Path, credentials: Credentials) -> None:
    write_private(path, orjson.dumps(credentials.model_dump(), option=orjson.OPT_INDENT_2))


# A set-up step that takes longer is stuck (a database lock, a hung connection), not slow.
STEP_TIMEOUT_SECONDS = 600.0


# Set-up steps running now, so that a stop (Ctrl-C, `mlwp down`) can end them at once instead
# of waiting up to STEP_TIMEOUT_SECONDS for a roles sync or a migration it no longer needs.
_running_steps: set[subprocess.Popen[str]] = set()
_running_steps_lock = threading.Lock()


def stop_running_steps() -> None:
    """SIGTERM every set-up step still running (each in its own process group)."""
    with _running_steps_lock:
        steps = list(_running_steps)
    for proc in steps:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)


def _run_logged(step: str, argv: list[str], env: Mapping[str, str], log: Path) -> str:
    """Run a one-shot command with its output appended to ``log``; return its output."""
    log.parent.mkdir(parents=True, exist_ok=True)
    # Its own session: a stop signals the step and whatever it started, nothing else.
    proc = subprocess.Popen(
        argv,
        env=dict(env),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    with _running_steps_lock:
        _running_steps.add(proc)
    try:
        stdout, stderr = proc.communicate(timeout=STEP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise PlatformError(
            f"{step} did not finish within {STEP_TIMEOUT_SECONDS:.0f}s (log: {log})",
            code="bootstrap_timeout",
        ) from exc
    finally:
        with _running_steps_lock:
            _running_steps.discard(proc)
    output = stdout + stderr
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"\n===== {' '.join(argv[:3])} ...\n{output}")
    if proc.returncode != 0:
        raise PlatformError(
            f"{step} failed with code {proc.returncode} (log: {log}):\n{tail(log)}",
            code="bootstrap_failed",
        )
    return output


def migrate_database(airflow: str, env: Mapping[str, str], log: Path) -> None:
    """Create or upgrade Airflow's metadata database, FAB tables included."""
    _run_logged("airflow db migrate", [airflow, "db", "migrate"], env, log)


def ensure_admin(settings: Settings, log: Path) -> AdminUser:
    """Create the admin user when it does not exist; keep an existing one untouched.

    Runs after :func:`sync_roles`, which creates the Admin role and syncs FAB's permissions.
    The user is created through ``operators.rbac`` with the password on stdin: never in a
    process list, and a generated password starting with ``-`` is not taken for an option.

    The password comes from ``MLWP_ADMIN_PASSWORD``, else from the credentials file, else is
    generated; it is written to the credentials file only when this call created the user,
    so the file never claims a password the database does not have.
    """
    from mlwp.security.client import run_rbac
    from mlwp.security.roles import SecurityError

    stored = read_credentials(settings.credentials_file)
    if settings.admin_password is not None:
        password = settings.admin_password.get_secret_value()
    elif stored is not None and stored.username == settings.admin_username:
        password = stored.password
    else:
        password = secrets.token_urlsafe(18)
    request = {
        "username": settings.admin_username,
        "password": password,
        "role": ADMIN_ROLE,
        "first_name": "mlwp",
        "last_name": "admin",
        "email": f"{settings.admin_username}@mlwp.invalid",
    }
    try:
        run_rbac("user_add", request, settings)
        created = True
    except SecurityError as exc:
        if exc.code != "user_exists":
            _log(log, f"creating the admin user {settings.admin_username!r} failed: {exc.message}")
            raise PlatformError(
                f"creating the admin user failed: {exc.message} (log: {log})",
                code="bootstrap_failed",
            ) from exc
        created = False
    _log(log, f"admin user {settings.admin_username!r}: {'created' if created else 'exists'}")
    if created:
        write_credentials(
            settings.credentials_file,
            Credentials(
                username=settings.admin_username, password=password, url=settings.airflow_url
            ),
        )
        return AdminUser(settings.admin_username, password, created=True, show_password=True)
    if stored is not None and stored.username == settings.admin_username:
        return AdminUser(
            settings.admin_username, password, created=False, show_password=not stored.shown
        )
    return AdminUser(settings.admin_username, None, created=False)


def _log(log: Path, line: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"\n===== {line}\n")


def mark_password_shown(path: Path) -> None:
    """Record that the admin password has been printed, so later starts do not print it."""
    stored = read_credentials(path)
    if stored is not None and not stored.shown:
        write_credentials(path, stored.model_copy(update={"shown": True}))


# The roles sync as a command line: `mlwp up` runs it, and so does the Helm chart's roles-sync
# Job (charts/mlwp/templates/roles-sync-job.yaml; a test keeps the two the same).
ROLES_SYNC_COMMAND = ("mlwp", "roles", "sync")


def sync_roles(env: Mapping[str, str], log: Path) -> None:
    """Create the platform and project roles (``mlwp roles sync``) before DAGs are parsed.

    Generated DAGs grant their project's role through ``access_control``; Airflow refuses a
    DAG naming a role that does not exist yet, so the roles come first.
    """
    program, *arguments = ROLES_SYNC_COMMAND
    _run_logged(
        "syncing roles (mlwp roles sync)",
        [executable(program), *arguments],
        {**env, "MLWP_ACTOR": "mlwp-up"},
        log,
    )


def migrate_audit(settings: Settings) -> str | None:
    """Create or upgrade the audit table and import a legacy ``<home>/audit.jsonl``.

    Returns a line for the user when a legacy trail was imported, else None.
    """
    from mlwp.security import audit

    try:
        audit.migrate(settings.audit_url)
        imported = audit.import_legacy_trail(settings.home, url=settings.audit_url)
    except audit.AuditError as exc:
        raise PlatformError(exc.message, code=exc.code) from exc
    if imported is None:
        return None
    return (
        f"imported {imported} audit event(s) from {audit.audit_path(settings.home)} into the "
        f"audit database (the file is kept as audit.jsonl.imported)"
    )
