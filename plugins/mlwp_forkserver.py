"""Airflow plugin: the scheduler starts its preloaded forkserver at start-up, not at a task.

``mlwp.platform.airflow_config.preload_config`` sets ``[scheduler] mp_start_method =
forkserver`` and ``mp_forkserver_preload`` (the ML stack), so the LocalExecutor's workers,
and the task processes they fork, inherit pandas, MLflow, XGBoost and GX already imported.
Python starts a forkserver lazily, when the first worker is needed: the first task after a
start would then wait while the server imports everything (15 s or more on a laptop). This
listener starts it when the scheduler's job starts instead. ``ensure_running`` spawns a fresh
interpreter (fork+exec) and returns at once; the imports happen in that process, in the
background, and a worker request simply waits on its socket until they are done.

It acts only in an Airflow job process (scheduler, triggerer, dag-processor) whose start
method is ``forkserver``, which mlwp configures for the scheduler alone; task processes (not
jobs) and every other component are left alone. The module imports nothing heavy: the DAG
processor and the api-server load plugins too.
"""

from __future__ import annotations

import logging
import multiprocessing
from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)


def start_forkserver_early(component: Any) -> bool:
    """Start this job process's forkserver now if it uses one; whether it did."""
    from airflow.jobs.job import Job

    if not isinstance(component, Job):
        return False
    if multiprocessing.get_start_method(allow_none=True) != "forkserver":
        return False
    from multiprocessing import forkserver

    forkserver.ensure_running()
    log.info("Started the forkserver early: it preloads the task modules in the background")
    return True


class ForkserverWarmup:
    """Lifecycle listener: ``on_starting`` runs as a job is created, before its loop."""

    @hookimpl
    def on_starting(self, component: Any) -> None:
        start_forkserver_early(component)


class MlwpForkserverPlugin(AirflowPlugin):
    """Registers :class:`ForkserverWarmup`."""

    name = "mlwp_forkserver"
    listeners = [ForkserverWarmup()]


__all__ = ["ForkserverWarmup", "MlwpForkserverPlugin", "start_forkserver_early"]
