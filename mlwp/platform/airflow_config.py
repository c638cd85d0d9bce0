"""The one place where Airflow's configuration is generated.

Airflow reads ``AIRFLOW__SECTION__KEY`` environment variables before ``airflow.cfg``, so every
process mlwp starts (api-server, scheduler, dag-processor, triggerer, task subprocesses and
``mlwp airflow ...``) gets the same configuration from :func:`airflow_environment`.
"""

from __future__ import annotations

import json

from mlwp.platform.executors import ExecutorKind
from mlwp.platform.secrets import installation_secrets
from mlwp.platform.serving_key import generated_admin_key
from mlwp.settings import Settings

FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
# The KubernetesExecutor's pod template, in AIRFLOW_HOME (written by mlwp.platform.kubernetes).
POD_TEMPLATE_NAME = "pod_template.yaml"

# What a task process of the shipped workflows imports: the heavy libraries first (imported
# before Airflow configures logging, so GX's import-time chatter stays out of the scheduler
# log), then Airflow's task runner and mlwp's own modules (which import the heavy libraries
# lazily, inside functions, so the DAG processor stays light: they are listed for themselves).
# Each entry costs memory once (shared copy-on-write by every task), not per task. A missing
# module is skipped by multiprocessing; tests/unit/test_settings.py checks they all exist.
PRELOAD_MODULES: tuple[str, ...] = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "fsspec",
    "sklearn.metrics",
    "xgboost",
    "optuna",
    "matplotlib",
    "mlflow",
    "mlflow.models",
    "mlflow.xgboost",
    "great_expectations",
    "airflow.sdk.execution_time.task_runner",
    "airflow.executors.local_executor",
    "operators.compiler",
    "operators._registry",
    "mlwp.data.extract",
    "mlwp.data.storage",
    "mlwp.data.validation",
    "mlwp.data.transform",
    "mlwp.registry",
    "mlwp.training.pipeline",
    "mlwp.training.tracking",
    "mlwp.training.tuning",
)


def preload_config(settings: Settings) -> dict[tuple[str, str], str]:
    """Start LocalExecutor tasks warm: Airflow's own forkserver preload, scheduler only.

    On Linux the LocalExecutor forks its workers from the scheduler and each worker's
    supervisor ``os.fork``s the task process, which then imports pandas, MLflow, XGBoost and
    GX again: 3-7 s of every task on an idle two-core machine, paid once in one process. With
    ``[scheduler] mp_start_method = forkserver`` the workers come from a forkserver process
    (started with the scheduler by the ``mlwp_forkserver`` plugin, else at the first task),
    and ``[scheduler] mp_forkserver_preload`` makes that server import
    :data:`PRELOAD_MODULES` once (Airflow 3.3, ``airflow.utils.process_utils.
    set_component_mp_start_method``), like gunicorn's ``--preload``. Workers, then task
    processes, are forked from it and inherit the modules copy-on-write.

    Why a forkserver rather than importing in the scheduler: the scheduler (its threads, its
    database connections, its memory) stays as Airflow ships it, and the forkserver is a fresh
    interpreter (fork+exec) that only imports. No Python thread runs in it; the native helper
    threads some libraries start at import (OpenBLAS, pyarrow's jemalloc) register fork
    handlers, as for gunicorn preloading a pandas app. (Python 3.12+ warns when forking with
    such threads; to re-check on that upgrade.) The options are read from the ``[scheduler]``
    section first, so the dag-processor and the triggerer keep plain ``fork`` and never
    import the ML stack; the api-server has no executor. ``MLWP_PRELOAD=false`` turns it off.
    """
    if not settings.preload or not settings.configured_executors.uses(ExecutorKind.LOCAL):
        return {}
    return {
        ("scheduler", "mp_start_method"): "forkserver",
        ("scheduler", "mp_forkserver_preload"): ",".join(PRELOAD_MODULES),
    }


def remote_logging_config(settings: Settings) -> dict[tuple[str, str], str]:
    """Task logs in remote storage (S3) when ``MLWP_REMOTE_LOG_FOLDER`` is set.

    Each task's supervisor uploads the finished log with the Amazon provider's S3 task handler
    (chosen by Airflow from the ``s3://`` scheme) through the connection
    ``MLWP_REMOTE_LOG_CONN_ID``, and every api-server reads it from there: a log no longer
    depends on the disk of the worker that ran the task, nor on that worker's log server.
    The local copy under home stays (Airflow streams a running task's log from it); it is
    disposable.
    """
    if not settings.remote_log_folder:
        return {}
    return {
        ("logging", "remote_logging"): "True",
        ("logging", "remote_base_log_folder"): settings.remote_log_folder.rstrip("/"),
        ("logging", "remote_log_conn_id"): settings.remote_log_conn_id,
    }


def celery_config(settings: Settings) -> dict[tuple[str, str], str]:
    """The CeleryExecutor's options: broker, result backend, concurrency, warm workers.

    The broker is the platform's Redis; results go to the metadata database (``db+`` URL),
    which the workers share already, so Celery needs nothing else. Remote control stays on:
    ``mlwp up`` and ``mlwp status`` tell a worker is ready by pinging it through the broker.

    Warm start: the LocalExecutor's forkserver preload (:func:`preload_config`) has a Celery
    twin. A worker's main process imports Celery's ``imports`` setting once, before it forks
    its prefork pool (``celery.loaders.base.BaseLoader.init_worker``); each pool process then
    forks the task process (Airflow's supervisor ``os.fork``s), so tasks inherit
    :data:`PRELOAD_MODULES` copy-on-write exactly as they do from the forkserver. Only
    workers run ``init_worker``: the scheduler's CeleryExecutor, which builds the same Celery
    app to send tasks, never imports the ML stack. ``MLWP_PRELOAD=false`` turns it off.
    """
    if not settings.configured_executors.uses(ExecutorKind.CELERY):
        return {}
    config = {
        ("celery", "broker_url"): settings.celery_broker_url,
        ("celery", "result_backend"): settings.celery_result_backend,
        ("celery", "worker_concurrency"): str(settings.celery_worker_concurrency),
        ("celery", "worker_enable_remote_control"): "True",
        # Tasks that name no queue go to the first queue the platform's workers consume.
        ("operators", "default_queue"): settings.celery_queues[0],
        # Airflow's default, stated (Airflow warns at every start when it is unset): Redis
        # hands an unacknowledged task to another worker after this long, so it must exceed
        # the longest task. A dead worker's task is failed and retried by the scheduler long
        # before (its heartbeat stops), not by this redelivery.
        ("celery_broker_transport_options", "visibility_timeout"): "86400",
    }
    if settings.preload:
        config[("celery", "extra_celery_config")] = json.dumps({"imports": PRELOAD_MODULES})
    return config


def kubernetes_config(settings: Settings) -> dict[tuple[str, str], str]:
    """Airflow's ``[kubernetes_executor]`` options: the template file and the namespace."""
    return {
        ("kubernetes_executor", "pod_template_file"): str(
            settings.airflow_home / POD_TEMPLATE_NAME
        ),
        ("kubernetes_executor", "namespace"): settings.kubernetes_namespace,
    }


def airflow_config(settings: Settings) -> dict[tuple[str, str], str]:
    """Return Airflow options as ``{(section, key): value}`` for these settings."""
    secrets = installation_secrets(settings)
    config: dict[tuple[str, str], str] = {
        ("core", "dags_folder"): str(settings.dags_folder),
        ("core", "plugins_folder"): str(settings.plugins_folder),
        ("core", "load_examples"): "False",
        ("core", "executor"): settings.executor,
        ("core", "parallelism"): str(settings.parallelism),
        ("core", "auth_manager"): FAB_AUTH_MANAGER,
        ("core", "fernet_key"): secrets["fernet_key"],
        # Tasks reach the api-server's execution API here; without it, a non-default port
        # makes every task fail at its start.
        ("core", "execution_api_server_url"): f"{settings.airflow_url}/execution/",
        ("core", "dagbag_import_timeout"): "60",
        ("database", "sql_alchemy_conn"): settings.airflow_database_url,
        ("api", "host"): settings.host,
        ("api", "port"): str(settings.airflow_port),
        ("api", "base_url"): settings.airflow_url,
        ("api", "secret_key"): secrets["api_secret_key"],
        ("api", "expose_config"): "False",
        ("api_auth", "jwt_secret"): secrets["jwt_secret"],
        ("api_auth", "jwt_expiration_time"): str(settings.jwt_expiration_seconds),
        ("api_auth", "jwt_issuer"): "mlwp",
        ("logging", "base_log_folder"): str(settings.logs_dir / "airflow"),
        ("logging", "dag_processor_child_process_log_directory"): str(
            settings.logs_dir / "dag_processor"
        ),
        ("core", "hide_sensitive_var_conn_fields"): "True",
        ("metrics", "statsd_on"): str(settings.statsd_on),
        ("metrics", "statsd_host"): settings.statsd_host,
        ("metrics", "statsd_port"): str(settings.statsd_port),
        ("metrics", "statsd_prefix"): "airflow",
        # Ids as tags (labels at the exporter), not inside names: dag ids are
        # <project>.<workflow>, and a dot in a StatsD name is a separator
        # (observability/statsd/mapping.yaml, docs/observability.md).
        ("metrics", "statsd_influxdb_enabled"): "True",
        ("metrics", "legacy_names_on"): "False",
        # Health comes from the api-server's /api/v2/monitor/health (heartbeats of the
        # scheduler, dag-processor and triggerer); the scheduler's own health server binds a
        # fixed port (8974) that would clash between two installs on one machine.
        ("scheduler", "enable_health_check"): "False",
        # A laptop should see new definitions quickly; production keeps Airflow's defaults.
        ("dag_processor", "refresh_interval"): "30",
        ("dag_processor", "min_file_process_interval"): "30",
        # The scheduler loop sleeps this long when a pass found nothing to do, which is how it
        # waits for a running task: the next task of a chain is queued on average half of it
        # after its upstream ends. Airflow's 1 s costs ~0.5 s per task (about 4 s on the
        # 8-task churn train workflow); 0.5 s halves that for a few more idle database
        # queries a second, a fair trade on a laptop. (The scheduler does not parse DAG files
        # in Airflow 3, and its heartbeat only records liveness: neither delays tasks.)
        ("scheduler", "scheduler_idle_sleep_time"): "0.5",
    }
    config.update(preload_config(settings))
    config.update(remote_logging_config(settings))
    config.update(celery_config(settings))
    if settings.configured_executors.uses(ExecutorKind.KUBERNETES):
        config.update(kubernetes_config(settings))
    if settings.secrets_manager_region:
        from mlwp.security.secrets_backend import secrets_manager_config

        config.update(secrets_manager_config(region=settings.secrets_manager_region))
    return config


def airflow_environment(settings: Settings) -> dict[str, str]:
    """Return the environment variables that configure Airflow for these settings."""
    env = {
        f"AIRFLOW__{section.upper()}__{key.upper()}": value
        for (section, key), value in airflow_config(settings).items()
    }
    env["AIRFLOW_HOME"] = str(settings.airflow_home)
    env["MLFLOW_TRACKING_URI"] = settings.mlflow_url
    env["MLWP_STORAGE_ROOT"] = settings.storage_uri
    env["MLWP_HOME"] = str(settings.home)
    # MLflow's client logs through its own stderr handler, and a task's stderr is logged at
    # ERROR by Airflow's supervisor ("Registered model ... already exists" as an error).
    # Unconfigured, its records propagate to Airflow's logging at their real level.
    env["MLFLOW_CONFIGURE_LOGGING"] = "false"
    env.update(shared_state_environment(settings))
    env.update(tracing_environment(settings))
    admin_key = generated_admin_key(settings)
    if admin_key is not None:
        # The deploy task's key for serving's POST /admin/reload (mlwp.platform.serving_key).
        env["MLWP_SERVING_ADMIN_KEY"] = admin_key
    return env


def tracing_environment(settings: Settings) -> dict[str, str]:
    """OpenTelemetry for Airflow's task runs and for serving (``mlwp up`` gives serving the
    same environment), when ``MLWP_OTEL_ENDPOINT`` is set: Airflow 3 wraps each task run in
    a span (``worker.<task_id>``) and exports it over OTLP/HTTP; the deploy task's reload
    request carries that span's context to serving (docs/observability.md)."""
    if not settings.otel_endpoint:
        return {}
    return {
        "AIRFLOW__TRACES__OTEL_ON": "True",
        "OTEL_EXPORTER_OTLP_ENDPOINT": settings.otel_endpoint,
        "OTEL_TRACES_EXPORTER": "otlp_proto_http",
        "OTEL_SERVICE_NAME": "mlwp-airflow",
        "MLWP_SERVING_OTEL_ENDPOINT": settings.otel_endpoint,
    }


def shared_state_environment(settings: Settings) -> dict[str, str]:
    """Where the api-server plugin, serving and the audit trail keep shared state, when it is
    not their embedded default: derived from the settings (a ``.env`` file included), so one
    ``MLWP_REDIS_URL`` or database URL configures every process alike."""
    env: dict[str, str] = {}
    if settings.auth_rate_limit_storage_uri != "memory://":
        env["MLWP_AUTH_RATE_LIMIT_STORAGE"] = settings.auth_rate_limit_storage_uri
    if settings.serving_database_url:
        env["MLWP_SERVING_DATABASE_URL"] = settings.serving_database_url
    if settings.audit_database_url or settings.database_url:
        env["MLWP_AUDIT_DATABASE_URL"] = settings.audit_url
    return env
