"""Hyperparameter tuning with Optuna, in process, each trial a nested MLflow run.

Trials train with the same code as the entry point (:func:`mlwp.training.core.train_booster`)
on the same matrices; only the final training (with the best parameters) goes through the
entry point subprocess. Samplers are seeded; with ``parallel > 1`` trials run in threads and
the order in which they finish (hence the sampler's history) may vary between runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlwp.training.core import Dataset, TrainingConfig, TrainingError, predict_raw, train_booster
from mlwp.training.metrics import LOWER_IS_BETTER, METRICS_BY_OBJECTIVE, compute_metrics

# metric -> (XGBoost validation metric reported each round, map to "higher is better" or not)
_PRUNING_SIGNAL: dict[str, tuple[str, Callable[[float], float]]] = {
    "roc_auc": ("auc", lambda v: v),
    "accuracy": ("auc", lambda v: v),
    "f1": ("auc", lambda v: v),
    "f1_macro": ("merror", lambda v: 1.0 - v),
    "logloss": ("logloss", lambda v: v),
    "rmse": ("rmse", lambda v: v),
    "mae": ("mae", lambda v: v),
    "r2": ("rmse", lambda v: -v),
}


@dataclass
class TuningResult:
    """The best trial and a summary of all of them."""

    best_params: dict[str, Any]
    best_value: float
    trials: list[dict[str, Any]] = field(default_factory=list)


def _get(tuning: Any, key: str, default: Any = None) -> Any:
    if isinstance(tuning, Mapping):
        return tuning.get(key, default)
    return getattr(tuning, key, default)


def _suggest(trial: Any, name: str, spec: Any) -> Any:
    values = _get(spec, "values")
    if values is not None:
        return trial.suggest_categorical(name, list(values))
    low, high = _get(spec, "min"), _get(spec, "max")
    if low is None or high is None:
        raise TrainingError(f"tuning.ranges.{name}: needs 'min' and 'max', or 'values'")
    if _get(spec, "integer", False):
        return trial.suggest_int(name, int(low), int(high), log=bool(_get(spec, "log", False)))
    return trial.suggest_float(name, float(low), float(high), log=bool(_get(spec, "log", False)))


def _sampler(strategy: str, seed: int, ranges: Mapping[str, Any]) -> Any:
    import optuna

    if strategy == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if strategy == "grid":
        space = {}
        for name, spec in ranges.items():
            values = _get(spec, "values")
            if values is None:
                raise TrainingError(
                    f"tuning.ranges.{name}: the grid strategy needs 'values', not min/max"
                )
            space[name] = list(values)
        return optuna.samplers.GridSampler(space, seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def tune(
    config: TrainingConfig,
    tuning: Any,
    train: Dataset,
    validation: Dataset | None,
    *,
    feature_names: list[str],
    num_class: int | None,
    experiment_id: str | None = None,
    parent_run_id: str | None = None,
) -> TuningResult:
    """Run the Optuna study described by ``tuning`` (the definition's ``tuning:`` block)."""
    import optuna

    if validation is None or not len(validation.labels):
        raise TrainingError("tuning needs a validation split (add validation_size to split)")
    metric = str(_get(tuning, "metric", "roc_auc"))
    if metric not in METRICS_BY_OBJECTIVE[config.objective]:
        raise TrainingError(
            f"tuning.metric: {metric!r} is not a {config.objective} metric (expected one of "
            f"{', '.join(METRICS_BY_OBJECTIVE[config.objective])})"
        )
    direction = str(
        _get(tuning, "direction", "minimize" if metric in LOWER_IS_BETTER else "maximize")
    )
    ranges: Mapping[str, Any] = _get(tuning, "ranges") or {}
    if not ranges:
        raise TrainingError("tuning.ranges: at least one parameter range is required")
    trials = int(_get(tuning, "trials", 10))
    parallel = max(1, int(_get(tuning, "parallel", 1)))
    pruning = bool(_get(tuning, "pruning", False))
    threads = max(1, (os.cpu_count() or 1) // parallel)

    client = None
    if parent_run_id is not None:
        import mlflow

        client = mlflow.MlflowClient()

    def objective(trial: optuna.Trial) -> float:
        params = {name: _suggest(trial, name, spec) for name, spec in ranges.items()}
        run_id = None
        if client is not None and experiment_id is not None:
            run = client.create_run(
                experiment_id,
                run_name=f"trial-{trial.number}",
                tags={"mlflow.parentRunId": str(parent_run_id), "mlwp.trial": str(trial.number)},
            )
            run_id = run.info.run_id
            client.log_batch(
                run_id,
                params=[mlflow_param(k, v) for k, v in params.items()],
            )
        callbacks = [_PruningCallback(trial, metric)] if pruning else []
        try:
            booster, best = train_booster(
                config,
                train,
                validation,
                feature_names,
                num_class,
                callbacks=callbacks,
                params={**params, "nthread": threads},
                verbose=False,
            )
        except optuna.TrialPruned:
            if client is not None and run_id is not None:
                client.set_terminated(run_id, status="KILLED")
            raise
        except BaseException:
            if client is not None and run_id is not None:
                client.set_terminated(run_id, status="FAILED")
            raise
        values = compute_metrics(
            config.objective,
            validation.labels,
            predict_raw(booster, validation.matrix),
            config.threshold,
        )
        if metric not in values:
            raise TrainingError(f"tuning.metric {metric!r} could not be computed on validation")
        if client is not None and run_id is not None:
            import mlflow

            client.log_batch(
                run_id,
                metrics=[
                    mlflow.entities.Metric(f"validation_{k}", v, 0, 0) for k, v in values.items()
                ]
                + [mlflow.entities.Metric("best_iteration", float(best), 0, 0)],
            )
            client.set_terminated(run_id)
        return values[metric]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize" if direction == "minimize" else "maximize",
        sampler=_sampler(str(_get(tuning, "strategy", "bayesian")), config.seed, ranges),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=5)
        if pruning
        else optuna.pruners.NopPruner(),
    )
    study.optimize(objective, n_trials=trials, n_jobs=parallel, catch=())
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise TrainingError("tuning: no trial completed")
    return TuningResult(
        best_params=dict(study.best_params),
        best_value=float(study.best_value),
        trials=[
            {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
            for t in study.trials
        ],
    )


def mlflow_param(key: str, value: Any) -> Any:
    import mlflow

    return mlflow.entities.Param(key, str(value))


class _PruningCallback:
    """Report the validation metric to Optuna each round; stop the trial when told to prune."""

    def __new__(cls, trial: Any, metric: str) -> Any:
        import optuna
        import xgboost

        signal, transform = _PRUNING_SIGNAL[metric]

        class Callback(xgboost.callback.TrainingCallback):
            def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
                history = evals_log.get("validation", {})
                name = signal if signal in history else next(iter(history), None)
                if name is None:
                    return False
                trial.report(transform(float(history[name][-1])), epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at round {epoch}")
                return False

        return Callback()
