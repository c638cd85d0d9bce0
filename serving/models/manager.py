"""Models served: loaded from the MLflow registry by alias, reloaded in the background.

The registry is the whole contract with the pipeline (DESIGN contract 4): for each served
model, the aliases ``champion``, ``challenger`` and optional ``shadow`` name versions, and the
registered-model tag ``mlwp.traffic`` holds the split (``{"champion": 90, "challenger": 10}``;
champion 100 when absent).

Syncs are requested through ``serving.models.syncs.SyncRunner`` (by the poller and
``POST /admin/reload``), which runs one at a time in the background. A sync reads the
registry, loads versions it does not have yet (download, ``mlwp.model.load``, warm-up) and
then swaps the model's whole state in one assignment, so a request sees either the old state
or the new one, never a mix. A version that fails to load leaves the previous
one serving and is reported in ``/v1/models`` and the metrics. An unreachable registry
leaves everything as it is.
"""

from __future__ import annotations

import functools
import json
import queue
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from serving.core.config import ServingSettings, configure_mlflow_client
from serving.core.errors import ModelLoadError
from serving.core.metrics import Metrics
from serving.models.routing import Router
from serving.models.spec import RecordSchema
from serving.services.capture import classes_json

log = structlog.get_logger("mlwp.serving.models")

ROUTED_ALIASES = ("champion", "challenger")
SHADOW_ALIAS = "shadow"
WARMUP_ROUNDS = 3


class PredictResult(Protocol):
    @property
    def predictions(self) -> list[Any]: ...

    @property
    def probabilities(self) -> Any: ...


class Model(Protocol):
    """What ``mlwp.model.load`` returns (docs/contracts.md)."""

    @property
    def features(self) -> Any: ...

    @property
    def objective(self) -> str: ...

    @property
    def classes(self) -> list[Any] | None: ...

    def predict(self, records: Any) -> PredictResult: ...

    @property
    def json_records(self) -> Any: ...

    def predict_decoded(self, records: list[Any]) -> PredictResult: ...

    def compile_trees(self, native_cache: Path | None = None, build: bool = True) -> str: ...

    @property
    def native_trees_pending(self) -> bool: ...

    def build_native_trees(self, native_cache: Path) -> str: ...

    def tune_encoder(self, record: Mapping[str, Any]) -> str: ...


@dataclass(frozen=True)
class Variant:
    """One loaded model version, serving under one alias."""

    alias: str
    version: str
    model: Model
    schema: RecordSchema
    run_id: str | None
    loaded_at: str
    # the model's classes as captured beside its requests (serving/services/capture.py),
    # made once per loaded version, not per request
    classes_json: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # An attribute set here, not a cached_property: that stores into the instance's
        # dict at the first capture, and an instance whose dict is made stops the
        # interpreter's specialised attribute loads (3.11) on every Variant attribute the
        # request path reads (version, model, schema): each became a lookup in the type's
        # and the instance's dicts, ~6 a one-row request, ~1 % of its CPU
        classes = self.model.classes
        object.__setattr__(self, "classes_json", None if classes is None else classes_json(classes))

    def describe(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "version": self.version,
            "run_id": self.run_id,
            "loaded_at": self.loaded_at,
            "objective": self.model.objective,
            "classes": list(self.model.classes) if self.model.classes is not None else None,
        }


@dataclass(frozen=True)
class ModelState:
    """Everything needed to answer a request for one model; replaced whole, never edited."""

    name: str
    variants: dict[str, Variant]
    traffic: dict[str, float]
    router: Router | None
    shadow: Variant | None
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def champion(self) -> Variant | None:
        return self.variants.get("champion") or next(iter(self.variants.values()), None)

    @property
    def schema(self) -> RecordSchema | None:
        champion = self.champion
        return champion.schema if champion else None

    def describe(self) -> dict[str, Any]:
        champion = self.champion
        return {
            "name": self.name,
            "variants": [v.describe() for v in self.variants.values()],
            "shadow": self.shadow.describe() if self.shadow else None,
            "traffic": dict(self.traffic),
            "effective_traffic": {
                alias: round(share * 100, 3)
                for alias, share in (self.router.shares if self.router else {}).items()
            },
            "signature": champion.schema.json_schema() if champion else None,
            "load_errors": list(self.errors.values()),
        }


def parse_traffic(raw: str | None, model: str) -> dict[str, float]:
    """Parse the traffic tag; champion 100 when absent. Raises ValueError naming the problem."""
    if raw is None or not raw.strip():
        return {"champion": 100.0}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"model {model!r}: traffic tag is not JSON ({exc.msg}): {raw!r}") from exc
    if not isinstance(value, dict) or not value:
        raise ValueError(
            f"model {model!r}: traffic tag must be an object alias -> percent: {raw!r}"
        )
    traffic: dict[str, float] = {}
    for alias, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise ValueError(
                f"model {model!r}: traffic for {alias!r} must be a number >= 0, got {weight!r}"
            )
        traffic[str(alias)] = float(weight)
    return traffic


def _load_mlwp_model(path: Path, threads: int) -> Model:
    from mlwp import model as mlwp_model

    loaded = mlwp_model.load(path)
    # XGBoost's default (every core) makes a one-row prediction ~50x slower under load;
    # requests are already concurrent, so each prediction gets few threads.
    loaded.booster.set_param({"nthread": threads})
    return loaded


class TreeBuilds:
    """The C trees of loaded versions, built after their load on one thread of their own
    (``mlwp-trees``), one build at a time, in the order loaded: a version serves from its
    load with the Python trees and XGBoost's predictor, and the build never holds
    readiness or a sync (near the 200,000-node limit it takes ~25 s of compiler CPU).
    A build that succeeds and passes its check attaches the C trees to the version (one
    assignment, see ``BoosterPredictor.build_native``); one that fails keeps what serves.
    Each build is logged (``trees_built``). A queued build holds its version only weakly:
    one unloaded before its turn is skipped; one unloaded while building is freed after.
    The thread is a daemon: shutting down does not wait for a compiler."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[str, str, Callable[[], Any], Path] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.pending = 0  # builds queued or running

    def submit(self, name: str, version: str, model: Model, cache: Path) -> None:
        try:
            ref: Callable[[], Any] = weakref.ref(model)
        except TypeError:  # a model type without weak references: held until built
            ref = functools.partial(lambda m: m, model)
        with self._lock:
            if self._closed:
                return
            self.pending += 1
            self._queue.put((name, version, ref, cache))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mlwp-trees", daemon=True)
                self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._thread is not None:
                self._queue.put(None)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            name, version, ref, cache = job
            started = time.perf_counter()
            try:
                model = ref()
                if model is None:
                    outcome = "skipped: the version was unloaded before its build"
                else:
                    outcome = model.build_native_trees(cache)
            except Exception as exc:  # never ends the thread: the next version still builds
                outcome = f"failed: {type(exc).__name__}: {_first_line(exc)}"
            finally:
                model = None  # an unloaded version is freed now, not at the next build
                with self._lock:
                    self.pending -= 1
            log.info(
                "trees_built",
                model=name,
                version=version,
                seconds=round(time.perf_counter() - started, 3),
                outcome=outcome,
            )


class ModelManager:
    """Holds the served models and keeps them in step with the registry."""

    def __init__(self, settings: ServingSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.states: dict[str, ModelState] = {}
        self.registry_error: str | None = None
        self.last_sync: str | None = None
        self.synced_once = False
        self.missing: dict[str, str] = {}
        self.versions_loaded = 0  # versions loaded so far (the poller freezes the heap after)
        self._sync_lock = threading.Lock()
        self._client: Any = None
        self.tree_builds = TreeBuilds()
        configure_mlflow_client(settings)

    def close(self) -> None:
        """Stop the background C tree builds (one in progress ends with its thread)."""
        self.tree_builds.close()

    # -- reading (hot path) -------------------------------------------------------------
    def get(self, name: str) -> ModelState | None:
        return self.states.get(name)

    @property
    def default_model(self) -> str | None:
        if self.settings.default_model:
            return self.settings.default_model
        if self.settings.models:
            return self.settings.models[0]
        return min(self.states) if self.states else None

    @property
    def ready(self) -> bool:
        """Ready once every named model (or, when discovering, at least one) is loaded."""
        if not self.synced_once:
            return False
        if self.settings.models:
            return all(
                (s := self.states.get(name)) is not None and s.router is not None
                for name in self.settings.models
            )
        return any(s.router is not None for s in self.states.values())

    # -- syncing (background thread) ------------------------------------------------------
    def _mlflow(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.settings.mlflow_tracking_uri)
        return self._client

    def _targets(self) -> dict[str, Any]:
        client = self._mlflow()
        if self.settings.models:
            from mlflow.exceptions import MlflowException

            found: dict[str, Any] = {}
            for name in self.settings.models:
                try:
                    found[name] = client.get_registered_model(name)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                        raise
                    self.missing[name] = f"no registered model named {name!r} in the registry"
                    log.warning("model_not_registered", model=name)
                else:
                    self.missing.pop(name, None)
            return found
        found = {}
        for registered in client.search_registered_models(max_results=1000):
            if self.settings.traffic_tag in (registered.tags or {}):
                found[registered.name] = registered
        return found

    def sync(self) -> dict[str, Any]:
        """Bring every served model in step with the registry; returns a summary."""
        with self._sync_lock:
            try:
                targets = self._targets()
            except Exception as exc:  # the registry is remote: any failure means "keep serving"
                self.registry_error = f"{type(exc).__name__}: {_first_line(exc)}"
                self.metrics.registry_errors.inc()
                log.warning("registry_unreachable", error=self.registry_error)
                self.synced_once = True
                return {"registry_error": self.registry_error, "models": self._summary()}
            self.registry_error = None
            for name, registered in targets.items():
                self._sync_model(name, registered)
            self.last_sync = _now()
            self.synced_once = True
            return {"registry_error": None, "models": self._summary()}

    def summary(self) -> dict[str, Any]:
        """What serves now, in the shape ``sync`` returns."""
        return {"registry_error": self.registry_error, "models": self._summary()}

    def _summary(self) -> dict[str, Any]:
        return {
            name: {
                "variants": {a: v.version for a, v in s.variants.items()},
                "shadow": s.shadow.version if s.shadow else None,
                "load_errors": list(s.errors.values()),
            }
            for name, s in self.states.items()
        }

    def _sync_model(self, name: str, registered: Any) -> None:
        previous = self.states.get(name)
        aliases: dict[str, str] = {str(a): str(v) for a, v in (registered.aliases or {}).items()}
        errors: dict[str, dict[str, Any]] = {}
        try:
            traffic = parse_traffic((registered.tags or {}).get(self.settings.traffic_tag), name)
        except ValueError as exc:
            errors["traffic"] = {"alias": None, "version": None, "error": str(exc), "at": _now()}
            traffic = previous.traffic if previous else {"champion": 100.0}
        wanted = [a for a in (*ROUTED_ALIASES, *sorted(traffic)) if a in aliases]
        wanted = list(dict.fromkeys(a for a in wanted if a != SHADOW_ALIAS))
        if SHADOW_ALIAS in aliases:
            wanted.append(SHADOW_ALIAS)

        loaded_by_version: dict[str, Variant] = {}
        if previous is not None:
            for variant in (*previous.variants.values(), previous.shadow):
                if variant is not None:
                    loaded_by_version[variant.version] = variant

        variants: dict[str, Variant] = {}
        for alias in wanted:
            version = aliases[alias]
            have = loaded_by_version.get(version)
            if have is not None:
                variants[alias] = Variant(
                    alias, version, have.model, have.schema, have.run_id, have.loaded_at
                )
                self.metrics.load_failed.labels(name, alias).set(0)
                continue
            try:
                variant = self._load_version(name, alias, version)
            except ModelLoadError as exc:
                self.metrics.load_failures.labels(name, alias).inc()
                self.metrics.load_failed.labels(name, alias).set(1)
                kept = previous.variants.get(alias) if previous else None
                if alias == SHADOW_ALIAS and previous is not None:
                    kept = previous.shadow
                errors[alias] = {
                    "alias": alias,
                    "version": version,
                    "error": exc.message,
                    "at": _now(),
                    "serving_version": kept.version if kept else None,
                }
                log.error(
                    "model_load_failed",
                    model=name,
                    alias=alias,
                    version=version,
                    error=exc.message,
                    kept=kept.version if kept else None,
                )
                if kept is not None:
                    variants[alias] = kept
                continue
            self.metrics.load_failed.labels(name, alias).set(0)
            variants[alias] = variant
            loaded_by_version[version] = variant

        shadow = variants.pop(SHADOW_ALIAS, None)
        weights = {a: w for a, w in traffic.items() if a in variants}
        if not any(w > 0 for w in weights.values()) and "champion" in variants:
            weights = {"champion": 100.0}
        router = Router(name, weights) if any(w > 0 for w in weights.values()) else None
        state = ModelState(name, variants, traffic, router, shadow, errors)
        for alias, variant in (*variants.items(), *((("shadow", shadow),) if shadow else ())):
            old = None
            if previous is not None:
                old = previous.shadow if alias == SHADOW_ALIAS else previous.variants.get(alias)
            if old is not None and old.version != variant.version:
                self.metrics.model_info.remove(name, alias, old.version)
            self.metrics.model_info.labels(name, alias, variant.version).set(1)
        # the swap: one assignment of a new dict; readers hold either the old or the new one
        self.states = {**self.states, name: state}
        if previous is None or _versions(previous) != _versions(state):
            log.info(
                "model_state",
                model=name,
                variants={a: v.version for a, v in variants.items()},
                shadow=shadow.version if shadow else None,
                traffic=traffic,
            )

    def _load_version(self, name: str, alias: str, version: str) -> Variant:
        started = time.perf_counter()
        try:
            client = self._mlflow()
            model_version = client.get_model_version(name, version)
            path = self._download(name, version)
            model = _load_mlwp_model(path, self.settings.predict_threads)
            schema = RecordSchema.from_features(list(model.features))
            example = [schema.example_record()]
            native = self.settings.models_dir / "native-trees"
            # the C trees only from the cache here (0.02 s); building them (0.6 s for the
            # churn model, ~25 s near 200,000 nodes) runs after the load, in the background
            predictor = model.compile_trees(
                native if self.settings.native_trees else None, build=False
            )
            chooser = getattr(getattr(model, "predictor", None), "chooser", None)
            if chooser is not None:  # C trees or XGBoost per batch size: logged when decided
                chooser.report = functools.partial(_log_trees_choice, name, version)
            encoder = model.tune_encoder(example[0])
            for _ in range(WARMUP_ROUNDS):
                result = model.predict(example)
                if len(result.predictions) != 1:
                    raise ModelLoadError(
                        f"warm-up returned {len(result.predictions)} predictions for 1 record"
                    )
        except ModelLoadError as exc:
            raise ModelLoadError(f"{name} version {version}: {exc.message}") from exc
        except Exception as exc:  # a broken artifact can fail in any library; report, keep old
            raise ModelLoadError(
                f"{name} version {version}: {type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        self.metrics.load_seconds.labels(name).observe(time.perf_counter() - started)
        self.versions_loaded += 1
        log.info(
            "model_loaded",
            model=name,
            alias=alias,
            version=version,
            seconds=round(time.perf_counter() - started, 3),
            predictor=predictor,
            encoder=encoder,
        )
        if self.settings.native_trees and model.native_trees_pending:
            self.tree_builds.submit(name, version, model, native)
        return Variant(
            alias, version, model, schema, getattr(model_version, "run_id", None), _now()
        )

    def _download(self, name: str, version: str) -> Path:
        import mlflow.artifacts

        target = self.settings.models_dir / _safe(name) / _safe(version)
        done = target / ".complete"
        if done.exists():
            return target / "model"
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        source = self._mlflow().get_model_version_download_uri(name, version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source,
            dst_path=str(target),
            tracking_uri=self.settings.mlflow_tracking_uri,
        )
        local_path = Path(local)
        final = target / "model"
        if local_path != final:
            local_path.rename(final)
        done.touch()
        return final


def _versions(state: ModelState) -> dict[str, str]:
    found = {a: v.version for a, v in state.variants.items()}
    if state.shadow:
        found[SHADOW_ALIAS] = state.shadow.version
    return found


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part)


def _log_trees_choice(
    name: str, version: str, rows: int, native: bool, medians: tuple[float, float]
) -> None:
    """The C trees or XGBoost's predictor for a band of batch sizes, once it is decided."""
    log.info(
        "trees_choice",
        model=name,
        version=version,
        rows=f"{rows}-{max(rows, 2 * rows - 1)}",
        predictor="C trees" if native else "XGBoost",
        c_us=round(medians[0] * 1e6, 1),
        xgboost_us=round(medians[1] * 1e6, 1),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def _now() -> str:
    return datetime.now(UTC).isoformat()
