"""Which Airflow executors the platform runs, parsed from ``MLWP_EXECUTOR`` without Airflow.

Airflow 3 reads ``[core] executor`` as a comma-separated list; the first entry is the default
executor and a task may pick any other by name (``executor=`` on the operator). Each entry is a
core executor name (``CeleryExecutor``), an executor's module path, or ``alias:name-or-path``
(``ExecutorLoader._get_executor_names`` in Airflow 3.3). mlwp supports the three executors it
configures and supervises (Local, Celery, Kubernetes) and accepts them in each of those
spellings; anything else is refused when the settings load, so a typo stops ``mlwp up`` with
a message instead of a scheduler that crashes at start. Airflow's multi-team syntax
(``team=...;``) is refused too: mlwp has one team per installation.

A task's ``executor`` is looked up as Airflow does (``lookup_executor_name_by_str``): by alias,
then module path, then class name; :meth:`Executors.task_names` lists what it accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ExecutorKind(StrEnum):
    """The executors mlwp knows how to run; the value is Airflow's core executor name."""

    LOCAL = "LocalExecutor"
    CELERY = "CeleryExecutor"
    KUBERNETES = "KubernetesExecutor"


# Airflow's own module paths for its core executor names (ExecutorLoader.executors).
MODULE_PATHS: dict[ExecutorKind, str] = {
    ExecutorKind.LOCAL: "airflow.executors.local_executor.LocalExecutor",
    ExecutorKind.CELERY: "airflow.providers.celery.executors.celery_executor.CeleryExecutor",
    ExecutorKind.KUBERNETES: (
        "airflow.providers.cncf.kubernetes.executors.kubernetes_executor.KubernetesExecutor"
    ),
}
_BY_NAME = {kind.value: kind for kind in ExecutorKind} | {
    path: kind for kind, path in MODULE_PATHS.items()
}


@dataclass(frozen=True)
class ConfiguredExecutor:
    """One entry of ``MLWP_EXECUTOR``: its kind and, when given, the alias tasks may use."""

    kind: ExecutorKind
    alias: str | None = None

    @property
    def module_path(self) -> str:
        return MODULE_PATHS[self.kind]

    @property
    def names(self) -> tuple[str, ...]:
        """Every string a task's ``executor`` may use to pick this executor."""
        found = (self.alias, self.kind.value, self.module_path)
        return tuple(dict.fromkeys(name for name in found if name))


@dataclass(frozen=True)
class Executors:
    """The executors configured, in order; the first one runs tasks that name none."""

    entries: tuple[ConfiguredExecutor, ...]

    @property
    def default(self) -> ConfiguredExecutor:
        return self.entries[0]

    def uses(self, kind: ExecutorKind) -> bool:
        return any(entry.kind is kind for entry in self.entries)

    def task_names(self) -> tuple[str, ...]:
        """What a task's ``executor`` may say, in the order the entries are configured."""
        return tuple(name for entry in self.entries for name in entry.names)

    def find(self, name: str) -> ConfiguredExecutor | None:
        """The entry a task's ``executor: name`` selects, or None when none does."""
        for entry in self.entries:
            if name in entry.names:
                return entry
        return None


def _parse_entry(text: str) -> ConfiguredExecutor:
    alias, sep, target = text.partition(":")
    if not sep:
        alias, target = "", text
    alias, target = alias.strip(), target.strip()
    kind = _BY_NAME.get(target)
    if kind is None:
        known = ", ".join(kind.value for kind in ExecutorKind)
        raise ValueError(
            f"unknown executor {target!r} in {text!r}; mlwp runs {known} "
            "(or their module paths), each optionally as alias:Executor"
        )
    if sep and (not alias or not alias.isidentifier()):
        raise ValueError(f"executor alias {alias!r} in {text!r} must be a plain name")
    return ConfiguredExecutor(kind, alias or None)


def parse_executors(value: str) -> Executors:
    """Parse ``MLWP_EXECUTOR``; raise ValueError naming the bad part and what is allowed."""
    if ";" in value or "=" in value:
        raise ValueError(
            f"{value!r}: Airflow's multi-team executor syntax (team=...;) is not supported; "
            "give a comma-separated list such as CeleryExecutor,KubernetesExecutor"
        )
    parts = [part.strip() for part in value.split(",")]
    if not value.strip() or any(not part for part in parts):
        raise ValueError(f"{value!r}: an empty executor name; e.g. LocalExecutor")
    entries = tuple(_parse_entry(part) for part in parts)
    kinds = [entry.kind for entry in entries]
    repeated = sorted({kind.value for kind in kinds if kinds.count(kind) > 1})
    if repeated:
        # Airflow refuses the same executor twice as well ("Duplicate executors").
        raise ValueError(f"{value!r}: {', '.join(repeated)} configured twice")
    aliases = [entry.alias for entry in entries if entry.alias]
    clashes = sorted({alias for alias in aliases if aliases.count(alias) > 1 or alias in _BY_NAME})
    if clashes:
        raise ValueError(
            f"{value!r}: alias {', '.join(clashes)} is used twice or names an executor"
        )
    return Executors(entries)


@dataclass(frozen=True)
class Placement:
    """Where this platform can run a task: its executors and the queues its workers consume.

    ``mlwp validate`` and the DAG loader check each task's ``executor`` and ``queue`` against
    it, so a task that no executor or worker of this platform would ever pick up is an error
    at its line in the definition, not a task queued forever.
    """

    executor_setting: str
    executors: Executors
    celery_queues: tuple[str, ...]
