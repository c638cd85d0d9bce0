"""XGBoost training: the SageMaker script-mode entry point and request builders (``sagemaker``),
the local backend, MLflow tracking and Optuna tuning. Submodules import xgboost, pandas and
mlflow inside their functions, so importing this package is cheap.
"""
