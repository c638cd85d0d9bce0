"""Store a DAG built inside a test as the dag-processor stores those of the DAG folder.

Airflow 3.3's ``dag.test()`` looks a DAG up among the serialized DAGs of a bundle, and only a
stored DAG's schedule is known to Airflow (an asset event queues runs of the stored DAGs
scheduled on that asset). Shared by ``conftest.run_dag`` and tests that store a DAG without
running it.
"""

from __future__ import annotations

import os
from typing import Any


def store_dag(dag: Any) -> None:
    """Serialize ``dag`` into the default bundle (``dags-folder``)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=os.devnull, collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
