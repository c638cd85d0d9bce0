"""Workflow definitions: the YAML schema, its loading and its validation (no Airflow here).

The typed models are the contract between what a data scientist writes and what the
operators receive: an operator's keyword arguments are its task model's own fields
(``TaskBase.operator_kwargs``), plus ``task_id``, ``project``, ``workflow`` and
``project_dir``.
"""

from __future__ import annotations

from mlwp.definitions.loading import check_file, load_project, parse_definition
from mlwp.definitions.problems import DefinitionError, Problem
from mlwp.definitions.schema import (
    TASK_MODELS,
    TASK_TYPES,
    Alerts,
    ApproveTask,
    AssetSchedule,
    BatchPredictTask,
    DeployTask,
    EmailNotifierSpec,
    EvaluateTask,
    ExtractTask,
    Gate,
    MonitorTask,
    PagerDutyNotifierSpec,
    ParamSpec,
    Project,
    PythonTask,
    RegisterTask,
    SageMakerSettings,
    SlackNotifierSpec,
    SlackWebhookNotifierSpec,
    TaskBase,
    TrainTask,
    TransformStep,
    TransformTask,
    Tuning,
    TuningRange,
    ValidateTask,
    Workflow,
    WorkflowDefaults,
    asset_name,
    asset_uri,
    definition_json_schema,
    parse_duration,
)

__all__ = [
    "TASK_MODELS",
    "TASK_TYPES",
    "Alerts",
    "ApproveTask",
    "AssetSchedule",
    "BatchPredictTask",
    "DefinitionError",
    "DeployTask",
    "EmailNotifierSpec",
    "EvaluateTask",
    "ExtractTask",
    "Gate",
    "MonitorTask",
    "PagerDutyNotifierSpec",
    "ParamSpec",
    "Problem",
    "Project",
    "PythonTask",
    "RegisterTask",
    "SageMakerSettings",
    "SlackNotifierSpec",
    "SlackWebhookNotifierSpec",
    "TaskBase",
    "TrainTask",
    "TransformStep",
    "TransformTask",
    "Tuning",
    "TuningRange",
    "ValidateTask",
    "Workflow",
    "WorkflowDefaults",
    "asset_name",
    "asset_uri",
    "check_file",
    "definition_json_schema",
    "load_project",
    "parse_definition",
    "parse_duration",
]
