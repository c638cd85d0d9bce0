"""The table from task type to operator class, imported lazily by dotted path.

Each operator receives its task's own fields (``TaskBase.operator_kwargs()``) plus
``task_id``, ``project``, ``workflow`` and ``project_dir`` as keyword arguments, and the
usual ``BaseOperator`` arguments (retries, retry_delay, execution_timeout, doc_md, outlets).

Until the module of a type's operator exists, its tasks are :class:`MissingOperator` tasks:
the DAG parses and shows the task, and running it fails with an error naming the type. A
module that exists but fails to import is a real bug and fails the definition's parse.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

OPERATORS: dict[str, str] = {
    "extract": "operators.extract.ExtractOperator",
    "validate": "operators.validate.ValidateOperator",
    "transform": "operators.transform.TransformOperator",
    "train": "operators.train.TrainOperator",
    "evaluate": "operators.evaluate.EvaluateOperator",
    "register": "operators.register.RegisterOperator",
    "approve": "operators.approve.ApproveOperator",
    "deploy": "operators.deploy.DeployOperator",
    "rollout": "operators.rollout.RolloutOperator",
    "batch_predict": "operators.batch_predict.BatchPredictOperator",
    "python": "operators.python_callable.PythonCallableOperator",
    "monitor": "operators.monitor.MonitorOperator",
    "labels": "operators.labels.LabelsOperator",
}

OperatorFactory = Callable[..., BaseOperator]

_BASE_OPERATOR_ARGS = frozenset(inspect.signature(BaseOperator.__init__).parameters) - {
    "self",
    "kwargs",
}


class MissingOperator(BaseOperator):
    """Stands in for a task type whose operator cannot be imported yet; fails when run."""

    ui_color = "#f8b4b4"

    def __init__(
        self,
        *,
        task_type: str,
        operator_path: str,
        reason: str,
        project: str | None = None,
        workflow: str | None = None,
        project_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        base = {key: kwargs.pop(key) for key in list(kwargs) if key in _BASE_OPERATOR_ARGS}
        super().__init__(**base)
        self.mlwp_task_type = task_type
        self.operator_path = operator_path
        self.reason = reason
        self.project = project
        self.workflow = workflow
        self.project_dir = project_dir
        self.fields = kwargs

    def execute(self, context: Any) -> None:
        raise AirflowException(
            f"task type '{self.mlwp_task_type}' has no operator yet: {self.operator_path} "
            f"cannot be imported ({self.reason}). This task fails on purpose instead of "
            "pretending to succeed."
        )


@functools.cache
def operator_factory(task_type: str) -> OperatorFactory:
    """Return the operator class of ``task_type``, or a failing stand-in if it is missing."""
    try:
        dotted = OPERATORS[task_type]
    except KeyError:
        raise AirflowException(
            f"unknown task type '{task_type}'; task types are {', '.join(OPERATORS)}"
        ) from None
    module_name, _, class_name = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise  # the module exists but one of its own imports is missing: a real bug
        return functools.partial(
            MissingOperator,
            task_type=task_type,
            operator_path=dotted,
            reason=f"no module named '{exc.name}'",
        )
    operator = getattr(module, class_name, None)
    if operator is None:
        return functools.partial(
            MissingOperator,
            task_type=task_type,
            operator_path=dotted,
            reason=f"module '{module_name}' has no '{class_name}'",
        )
    if not (isinstance(operator, type) and issubclass(operator, BaseOperator)):
        raise AirflowException(f"{dotted} is not an operator class (task type '{task_type}')")
    return operator
