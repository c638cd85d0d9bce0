"""The Amazon provider's SageMaker job operators, with a link to the job in the AWS console.

A module of its own because importing the provider's SageMaker operators is slow: only DAGs
with a ``backend: sagemaker`` train task import it (from ``sagemaker_train_tasks``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.providers.amazon.aws.operators.sagemaker import (
    SageMakerTrainingOperator,
    SageMakerTuningOperator,
)

from operators.links import SageMakerJobLink, sagemaker_console_url

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class _SageMakerJobConsoleLink(SageMakerJobLink):
    """Read the job name from the job task's own result (a retried job gets a timestamped
    name, so the request's name may not be the job that ran)."""

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        result = XCom.get_value(ti_key=ti_key, key="return_value") or {}
        config = getattr(operator, "config", None) or {}
        tuning = "Tuning" in result or "HyperParameterTuningJobName" in config
        job = result.get("Tuning") or result.get("Training") or {}
        name = (
            job.get("HyperParameterTuningJobName")
            or job.get("TrainingJobName")
            or config.get("HyperParameterTuningJobName")
            or config.get("TrainingJobName")
        )
        region = getattr(getattr(operator, "hook", None), "conn_region_name", None)
        return sagemaker_console_url(name, region, tuning=tuning) or ""


class SageMakerTrainingJobOperator(SageMakerTrainingOperator):
    """The Amazon provider's training operator with a link to the job in the AWS console."""

    operator_extra_links = (_SageMakerJobConsoleLink(),)


class SageMakerTuningJobOperator(SageMakerTuningOperator):
    """The Amazon provider's tuning operator with a link to the job in the AWS console."""

    operator_extra_links = (_SageMakerJobConsoleLink(),)
