"""The operator of ``python`` tasks: call ``module:function``, imported when the task runs.

Importing the callable's module at run time keeps parsing free of user code and its imports.
"""

from __future__ import annotations

import importlib
from typing import Any

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk.exceptions import AirflowException


def call_by_path(target: str, kwargs: dict[str, Any]) -> Any:
    """Import ``module:function`` and call it with ``kwargs`` (runs inside the task)."""
    module_name, _, function_name = target.partition(":")
    module = importlib.import_module(module_name)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise AirflowException(
            f"callable '{target}': module '{module_name}' has no function '{function_name}'"
        )
    return function(**kwargs)


class PythonCallableOperator(PythonOperator):
    """Run a ``python`` task: ``callable`` ('module:function') is imported when the task runs."""

    def __init__(
        self,
        *,
        callable: str,
        kwargs: dict[str, Any] | None = None,
        project: str | None = None,
        workflow: str | None = None,
        project_dir: str | None = None,
        **base: Any,
    ) -> None:
        super().__init__(
            python_callable=call_by_path,
            op_kwargs={"target": callable, "kwargs": dict(kwargs or {})},
            **base,
        )
        self.project = project
        self.workflow = workflow
        self.project_dir = project_dir
