"""The one place where Airflow's configuration is generated.

Airflow reads ``AIRFLOW__SECTION__KEY`` environment variables before ``airflow.cfg``, so every
process mlwp starts (api-server, scheduler, dag-processor, triggerer, task subprocesses and
``mlwp airflow ...``) gets the same configuration from :func:`airflow_environment`.
"""

from __future__ import annotations

from mlwp.platform.secrets import load_or_create
from mlwp.settings import Settings

FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"


def airflow_config(settings: Settings) -> dict[tuple[str, str], str]:
    """Return Airflow options as ``{(section, key): value}`` for these settings."""
    secrets = load_or_create(settings.secrets_file)
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
        # Health comes from the api-server's /api/v2/monitor/health (heartbeats of the
        # scheduler, dag-processor and triggerer); the scheduler's own health server binds a
        # fixed port (8974) that would clash between two installs on one machine.
        ("scheduler", "enable_health_check"): "False",
        # A laptop should see new definitions quickly; production keeps Airflow's defaults.
        ("dag_processor", "refresh_interval"): "30",
        ("dag_processor", "min_file_process_interval"): "30",
    }
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
    return env
