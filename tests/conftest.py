"""Shared fixtures: free ports, real PostgreSQL and Redis, a real MLflow tracking server, AWS
as a moto server.

Services are real. A test that needs PostgreSQL or Redis reads its URL from the environment
(``MLWP_TEST_POSTGRES_URL``, ``MLWP_TEST_REDIS_URL``; localhost by default) and is skipped
with the reason when the service is unreachable, unless ``MLWP_REQUIRE_SERVICES=1`` (set by
``.ci/run``), in which case it fails.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from aws_endpoint import aws_environment
from server_process import run_mlflow_server
from stored_dags import store_dag

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

POSTGRES_URL = os.environ.get(
    "MLWP_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("MLWP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _configure_test_airflow() -> None:
    """Give this test session its own Airflow home and SQLite database.

    Airflow reads its configuration when first imported, so this runs at conftest import,
    before any test module imports Airflow. The database itself is created lazily by the
    ``airflow_db`` fixture, so tests that never touch Airflow pay nothing.
    """
    import tempfile

    from mlwp.platform.airflow_config import airflow_environment
    from mlwp.settings import Settings

    if os.environ.get("MLWP_TEST_SESSION_PID") == str(os.getpid()):
        return  # this module was imported a second time under another name
    os.environ["MLWP_TEST_SESSION_PID"] = str(os.getpid())
    home = Path(tempfile.mkdtemp(prefix="mlwp-tests-"))
    os.environ["MLWP_HOME"] = str(home)
    for key, value in airflow_environment(Settings(home=home)).items():
        os.environ[key] = value
    os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


_configure_test_airflow()


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """Undo a test's structlog configuration: the serving app configures it process-wide,
    and Airflow's task loggers (``self.log`` of an operator) need Airflow's own."""
    import structlog

    saved = structlog.get_config()
    airflow_configured = "airflow" in sys.modules
    yield
    if structlog.get_config() == saved:
        return
    structlog.configure(**saved)
    # importing Airflow configures its logging, once per process: when that import happened
    # in this test, the configuration saved before it is structlog's default, and restoring
    # it left every later test without Airflow's (a Slack hook then got a logger without
    # ``.level`` and failed to alert), so Airflow configures it again
    if not airflow_configured and "airflow.logging_config" in sys.modules:
        sys.modules["airflow.logging_config"].configure_logging()


def services_required() -> bool:
    return os.environ.get("MLWP_REQUIRE_SERVICES") == "1"


def service_unavailable(name: str, url: str, exc: BaseException) -> None:
    """Skip (or, when services are required, fail) a test whose service cannot be reached."""
    message = f"{name} unreachable at {url}: {exc}"
    if services_required():
        pytest.fail(f"{message} (MLWP_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """URL of the PostgreSQL server's maintenance database (skips/fails when unreachable)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
        engine.dispose()
    except Exception as exc:  # any driver error means "not reachable" here
        service_unavailable("PostgreSQL", POSTGRES_URL, exc)
    return POSTGRES_URL


@pytest.fixture
def postgres_database(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    import sqlalchemy

    name = f"mlwp_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    parsed = urlparse(postgres_admin_url)
    yield parsed._replace(path=f"/{name}").geturl()
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a reachable Redis (skips/fails when unreachable)."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:  # any client error means "not reachable" here
        service_unavailable("Redis", REDIS_URL, exc)
    return REDIS_URL


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on loopback; boto3 clients talk to it like to AWS, with real HTTP (so
    botocore builds, signs and validates every request as it would for AWS)."""
    from moto.server import ThreadedMotoServer
    from server_process import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point every boto3 client, s3fs, MLflow and the Airflow AWS connection at moto."""
    for key, value in aws_environment(moto_endpoint).items():
        monkeypatch.setenv(key, value)
    return moto_endpoint


@pytest.fixture
def s3_bucket(aws_env: str) -> str:
    """A new, empty bucket on the moto server (its name; unique per test)."""
    import boto3

    name = f"mlwp-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite + local artifacts) on a free port; yields its URL.

    One per test process, shared by every test that needs one (each names its models and
    experiments uniquely): a start costs half a minute or more on a loaded two-core machine,
    hence the patience too. ``MLWP_TEST_MLFLOW_URL`` reuses a running server instead.
    """
    existing = os.environ.get("MLWP_TEST_MLFLOW_URL")
    if existing:
        yield existing
        return
    with run_mlflow_server(tmp_path_factory.mktemp("mlflow"), timeout=600) as (url, _):
        yield url


@pytest.fixture
def mlflow_tracking(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLflow clients at the test tracking server for one test."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    # A process-wide URI wins over the variable, and one set by code that ran outside any
    # test (a session fixture's setup) escapes _mlflow_tracking_uri_restored: set both here
    # (the CI run's monitor test reached the platform default 127.0.0.1:5000 that way).
    mlflow.set_tracking_uri(mlflow_server)
    return mlflow_server


@pytest.fixture(scope="session")
def migrated_airflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty Airflow metadata database (SQLite) as ``airflow db migrate`` leaves it, to copy
    to ``<home>/airflow.db`` of a test's platform home (``shutil.copy``).

    For tests that need a migrated database but do not test the migration: each
    ``airflow db migrate`` is a new Airflow process, seconds to a minute on a loaded machine,
    about as long on an up-to-date database as on an empty one. The migration from empty stays
    proven by every ``mlwp up`` of the tests (test_first_run, test_platform_up, tests/e2e).
    """
    import subprocess

    from mlwp.platform.airflow_config import airflow_environment
    from mlwp.settings import Settings

    home = tmp_path_factory.mktemp("airflow-migrated")
    env = {**os.environ, **airflow_environment(Settings(home=home, dags_folder=home / "dags"))}
    migrated = subprocess.run(
        [which("airflow"), "db", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    return home / "airflow.db"


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Migrate this session's Airflow metadata database once and sync the platform roles.

    The FAB auth manager refuses to serialize a DAG whose ``access_control`` names a role
    that does not exist, so the project roles (``project:<name>``) of every example project,
    plus those the tests use, are created here exactly as ``mlwp up`` creates them.
    """
    from airflow.utils import db

    from mlwp.security.projects import discover_projects
    from mlwp.settings import REPO_ROOT
    from operators import rbac

    db.initdb()
    projects = {name: {} for name in discover_projects(REPO_ROOT / "dags")}
    projects.update({name: {} for name in ("churn", "credit", "examples", "demo")})
    rbac.sync({"projects": projects})


def run_dag(dag: object, **kwargs: object) -> object:
    """``dag.test()`` for a DAG built inside a test rather than in the DAG folder.

    Airflow 3.3's ``dag.test()`` looks the DAG up among the serialized DAGs of a bundle; a
    DAG defined in a test module is in none, so it is stored first.
    """
    store_dag(dag)
    return dag.test(**kwargs)  # type: ignore[attr-defined]


def which(name: str) -> str:
    found = shutil.which(name, path=str(VENV_BIN)) or shutil.which(name)
    if found is None:
        raise FileNotFoundError(name)
    return found


@pytest.fixture
def dag_runner(airflow_db: None) -> object:
    """:func:`run_dag`, as a fixture (test modules cannot import conftest reliably)."""
    return run_dag


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_restored() -> Iterator[None]:
    """Code under test calls mlflow.set_tracking_uri (the CLI, operators), which sets a
    process-wide URI and the MLFLOW_TRACKING_URI variable; both would win over later tests'
    environments in the same worker. Put both back after each test."""
    before_env = os.environ.get("MLFLOW_TRACKING_URI")
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    before = getattr(utils, "_tracking_uri", None)
    yield
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    # getattr: a thread a test left behind (an app's registry poll) may be importing mlflow
    # right now, the module in sys.modules but not yet run: nothing of it to restore then
    if getattr(utils, "_tracking_uri", before) != before:
        utils.set_tracking_uri(before)  # type: ignore[union-attr]
    if before_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before_env
