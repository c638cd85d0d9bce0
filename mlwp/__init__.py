"""mlwp: an Apache Airflow 3 distribution for machine-learning teams.

This package is the Airflow-free core. Nothing under ``mlwp/`` imports Airflow, and heavy
libraries (xgboost, great_expectations, mlflow, sagemaker, boto3) are imported inside the
functions that need them, so the DAG processor and the serving image stay light.
"""

__version__ = "0.1.0"
