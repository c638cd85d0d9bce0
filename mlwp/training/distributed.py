"""Several SageMaker hosts, one model: XGBoost's collective across the hosts of a training job.

With ``instance_count > 1`` SageMaker starts the entry point on every instance, telling each
the job's hosts (``SM_HOSTS``, a JSON list such as ``["algo-1", "algo-2"]``) and its own name
(``SM_CURRENT_HOST``); ``/opt/ml/input/config/resourceconfig.json`` carries the same. The train
channel is ``ShardedByS3Key``: each host receives about 1/n of the split's partition objects;
validation, test and ``preprocessing`` (the fitted ``preprocessing.json``, in a channel of its
own since a sharded channel would give it to one host only) are ``FullyReplicated``. On each
host the entry point then:

1. the first host in name order (``algo-1``) starts XGBoost's ``RabitTracker`` on
   :data:`TRACKER_PORT` (``MLWP_TRACKER_PORT`` overrides it), the rendezvous of the job;
2. every host, the first included, joins XGBoost's collective (rabit) with its host name as
   task id (ranks follow the names), checks that every host has the same preprocessing
   (else all fail at once, naming it) and agrees with the others on the label classes (the
   union of every shard's);
3. builds its matrices from its own shard, in memory or with external memory as ``data``
   says (decided per host on its shard), and trains: XGBoost sums the quantile sketches and
   every node's gradient histograms across hosts, so all hosts grow the same trees, and
   sums the evaluation metrics, so early stopping stops every host at the same round;
4. only the first host writes the model and prints the metric lines, so the job's model
   and SageMaker's metrics are that host's; its ``validation:*`` and ``test:*`` metrics are
   on the whole (replicated) splits, its ``train:*`` metrics on its own shard, and ``rows``
   in ``mlwp.json`` counts every host's training rows. The other hosts leave
   ``SM_MODEL_DIR`` empty (SageMaker then uploads the first host's model).

A single host (or no ``SM_HOSTS``, the local backend) trains alone, without any of this.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlwp.training.core import TrainingError

# The rabit port the AWS XGBoost container uses for its own distributed training.
TRACKER_PORT = 9099
# How long hosts wait for each other to join (their data downloads may differ by minutes).
JOIN_TIMEOUT_SECONDS = 1800


@dataclass(frozen=True)
class Cluster:
    """The hosts of one training job and which of them this process is."""

    hosts: tuple[str, ...]
    current: str
    port: int = TRACKER_PORT

    @property
    def master(self) -> str:
        return self.hosts[0]

    @property
    def is_master(self) -> bool:
        return self.current == self.master


def cluster_of(environ: Mapping[str, str], config_dir: Path) -> Cluster | None:
    """The job's hosts from ``SM_HOSTS``/``SM_CURRENT_HOST`` (else ``resourceconfig.json``);
    None for a single host."""
    hosts: list[str] = []
    current = environ.get("SM_CURRENT_HOST", "")
    if environ.get("SM_HOSTS"):
        try:
            hosts = list(json.loads(environ["SM_HOSTS"]))
        except ValueError as exc:
            raise TrainingError(f"SM_HOSTS: not a JSON list: {environ['SM_HOSTS']!r}") from exc
    elif (config_dir / "resourceconfig.json").is_file():
        resource = json.loads((config_dir / "resourceconfig.json").read_text())
        hosts = list(resource.get("hosts") or [])
        current = current or str(resource.get("current_host", ""))
    if len(hosts) <= 1:
        return None
    if current not in hosts:
        raise TrainingError(f"SM_CURRENT_HOST {current!r} is not one of SM_HOSTS {hosts}")
    port = int(environ.get("MLWP_TRACKER_PORT") or TRACKER_PORT)
    return Cluster(hosts=tuple(sorted(hosts)), current=current, port=port)


@contextmanager
def collective(cluster: Cluster | None) -> Iterator[None]:
    """Join the job's XGBoost collective for the block (the master also runs the tracker)."""
    if cluster is None:
        yield
        return
    from xgboost import collective as coll
    from xgboost.tracker import RabitTracker

    try:
        address = socket.gethostbyname(cluster.master)
    except OSError as exc:
        raise TrainingError(f"host {cluster.master!r} (the first host) does not resolve") from exc
    tracker = None
    if cluster.is_master:
        tracker = RabitTracker(
            n_workers=len(cluster.hosts),
            host_ip=address,
            port=cluster.port,
            sortby="task",
            timeout=JOIN_TIMEOUT_SECONDS,
        )
        tracker.start()
    print(
        f"mlwp: host {cluster.current} joins {len(cluster.hosts)} hosts, tracker "
        f"{cluster.master} ({address}:{cluster.port})",
        flush=True,
    )
    with coll.CommunicatorContext(
        dmlc_communicator="rabit",
        dmlc_tracker_uri=address,
        dmlc_tracker_port=cluster.port,
        dmlc_task_id=cluster.current,
        dmlc_retry=60,
        dmlc_timeout=JOIN_TIMEOUT_SECONDS,
    ):
        yield
    if tracker is not None:
        tracker.wait_for(JOIN_TIMEOUT_SECONDS)


def union_of_hosts(values: list[Any], cluster: Cluster | None) -> list[Any]:
    """The union of every host's ``values``, sorted as label classes are (numbers, then
    text); every host gets the same list."""
    if cluster is None:
        return values
    from xgboost import collective as coll

    seen: set[Any] = set()
    for rank in range(coll.get_world_size()):
        seen.update(coll.broadcast(values, rank))
    return sorted(seen, key=lambda v: (isinstance(v, str), v))


def check_same_on_hosts(value: bytes, what: str, cluster: Cluster | None) -> None:
    """Fail on every host, not just the odd one (the others would wait for it in the
    collective until the timeout), when ``value`` differs from the first host's."""
    if cluster is None:
        return
    import hashlib

    import numpy as np
    from xgboost import collective as coll

    digest = hashlib.sha256(value).hexdigest()
    differs = int(coll.broadcast(digest, 0) != digest)
    count = int(coll.allreduce(np.asarray([differs], dtype=np.int64), coll.Op.SUM)[0])
    if count:
        raise TrainingError(
            f"{what} differs between the hosts ({count} of {len(cluster.hosts)} differ from "
            f"{cluster.master}'s); every host must get the same"
        )


def total_of_hosts(value: int, cluster: Cluster | None) -> int:
    """The sum of ``value`` over every host."""
    if cluster is None:
        return value
    import numpy as np
    from xgboost import collective as coll

    return int(coll.allreduce(np.asarray([value], dtype=np.int64), coll.Op.SUM)[0])
