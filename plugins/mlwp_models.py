"""Airflow plugin: the "Models" view, and the storage pages the extra links open.

Shipped as ``fastapi_apps`` (a FastAPI app mounted at ``/mlwp`` inside the api-server) plus
an ``external_views`` entry (a "Models" item in the navigation whose page the Airflow UI
embeds). Why not ``react_apps``: a React app must be built with npm against the exact React
and Chakra versions the Airflow UI bundles, and Airflow 3.3 still documents React apps as
experimental; an external view is a plain page served from the same origin, so it needs no
build step and still shares the Airflow session (docs/ui.md).

Who the user is comes from the Airflow session (the JWT in the ``_token`` cookie, or a Bearer
token), exactly as Airflow's own API reads it; what they may do comes from Airflow's auth
manager. Reading needs read access to DAGs; promote, roll back and traffic need edit access
to a DAG of the model's project (``change_model`` in mlwp.security.roles: Admins and the
project's DataScientist members). The changes themselves go through
``mlwp.registry.model_changes``, the code path of ``mlwp models``, which writes the audit trail.
"""

from __future__ import annotations

import html
import mimetypes
from pathlib import Path
from typing import Annotated, Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

URL_PREFIX = "/mlwp"
STATIC = Path(__file__).with_name("mlwp_models_static")
# Serving's answer may take a moment on a loaded machine; the page must not hang on it.
SERVING_TIMEOUT_SECONDS = 3.0
RELOAD_WAIT_SECONDS = 20.0

app = FastAPI(title="mlwp models", docs_url=None, redoc_url=None, openapi_url=None)


# ------------------------------------------------------------------------ who may do what


# Airflow's user (auth manager's user object). Typed loosely: importing Airflow's API
# modules here would load the whole api-server wherever plugins are loaded (task processes).
BaseUser = Any


async def current_user(request: Request) -> BaseUser:
    """The Airflow user of the request, read by Airflow's own ``get_user`` (Bearer token
    first, then the UI's session cookie); 401 without one."""
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.security import HTTPAuthorizationCredentials

    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    bearer = HTTPAuthorizationCredentials(scheme=scheme, credentials=token) if token else None
    return await get_user(request, None, bearer)


UserDep = Annotated[BaseUser, Depends(current_user)]


def _auth_manager() -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


def require_read(user: UserDep) -> BaseUser:
    """Reading the view needs read access to the DAGs (Viewer and up)."""
    if not _auth_manager().is_authorized_dag(method="GET", user=user):
        raise HTTPException(403, f"user {user.get_name()!r} may not read DAGs")
    return user


ReaderDep = Annotated[BaseUser, Depends(require_read)]


def project_dag_ids(project: str) -> list[str]:
    """The DAGs of ``project`` (dag_id ``<project>.<workflow>``) Airflow knows."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return list(
            session.scalars(select(DagModel.dag_id).where(DagModel.dag_id.like(f"{project}.%")))
        )


def may_change(user: BaseUser, project: str | None) -> bool:
    """``change_model``: edit access to a DAG of the project (Admins, the project's members)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    manager = _auth_manager()
    if project is None:  # no project: only who may edit every DAG (Admins)
        return bool(manager.is_authorized_dag(method="PUT", user=user))
    return any(
        manager.is_authorized_dag(method="PUT", details=DagDetails(id=dag_id), user=user)
        for dag_id in project_dag_ids(project)
    )


def refusal(user: BaseUser, project: str) -> str:
    return (
        f"user {user.get_name()!r} may not change models of project {project!r}: only Admins "
        f"and DataScientist members of the project (role project:{project}) may promote, roll "
        "back or change traffic"
    )


def require_change(project: str, user: UserDep) -> BaseUser:
    """Checked before the body or MLflow is read: a refusal costs nothing and reveals nothing."""
    if not may_change(user, project):
        raise HTTPException(403, refusal(user, project))
    return user


ChangerDep = Annotated[BaseUser, Depends(require_change)]


# ------------------------------------------------------------------------ registry, serving


def _tracking() -> None:
    import mlflow

    from operators._common import mlflow_tracking_uri

    mlflow.set_tracking_uri(mlflow_tracking_uri())


def _registry_call(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a registry function, turning its errors into clear HTTP answers."""
    from mlflow.exceptions import MlflowException

    from mlwp.errors import MlwpError

    _tracking()
    try:
        return function(*args, **kwargs)
    except MlwpError as exc:
        raise HTTPException(409, exc.message) from exc
    except MlflowException as exc:
        status = 404 if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) else 502
        raise HTTPException(status, f"MLflow: {exc.message}") from exc


def serving_models() -> dict[str, Any]:
    """What serving has loaded (``GET /v1/models``), or why it could not be asked."""
    import httpx

    from mlwp.platform.serving_key import missing_key_hint, task_admin_key
    from mlwp.settings import get_settings

    settings = get_settings()
    key = task_admin_key(settings)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(
            f"{settings.serving_url}/v1/models", headers=headers, timeout=SERVING_TIMEOUT_SECONDS
        )
    except httpx.HTTPError as exc:
        return {"error": f"serving at {settings.serving_url} is unreachable: {exc}"}
    if response.status_code != 200:
        error = f"serving answered {response.status_code}: {response.text[:200]}"
        if key is None and response.status_code == 401:
            error += missing_key_hint(settings)
        return {"error": error}
    return dict(response.json())


def _reload_serving(model: str, after: dict[str, Any]) -> dict[str, Any]:
    """Ask serving to load the new state now (it would also notice on its next poll)."""
    from mlwp.platform.serving_key import reload_serving
    from mlwp.settings import get_settings

    return reload_serving(get_settings(), model, after, RELOAD_WAIT_SECONDS)


def _model_in_project(project: str, model: str) -> None:
    from mlwp import registry

    owner = _registry_call(registry.model_project, model)
    if owner != project:
        where = f"project {owner!r}" if owner else "no project"
        raise HTTPException(404, f"model {model!r} belongs to {where}, not to {project!r}")


# ------------------------------------------------------------------------ JSON API


class PromoteBody(BaseModel):
    version: str | None = Field(default=None, description="Default: the challenger.")
    reason: str | None = Field(default=None, max_length=500)


class RollbackBody(BaseModel):
    reason: str | None = Field(default=None, max_length=500)
    to: str | None = Field(
        default=None,
        max_length=64,
        description="An event id of the history or an ISO time (default: before the last "
        "promotion), as `mlwp models rollback --to`.",
    )


class TrafficBody(BaseModel):
    traffic: dict[str, Annotated[int, Field(ge=0, le=100)]]
    reason: str | None = Field(default=None, max_length=500)


@app.get("/api/models")
def list_models(user: ReaderDep) -> dict[str, Any]:
    """Projects and their models, with what this user may change."""
    from mlwp import registry

    models = _registry_call(registry.list_models)
    projects: dict[str, dict[str, Any]] = {}
    for model in models:
        project = _registry_call(registry.model_project, model["name"])
        entry = projects.setdefault(
            project or "", {"project": project, "models": [], "can_change": None}
        )
        entry["models"].append(model)
    for entry in projects.values():
        entry["can_change"] = may_change(user, entry["project"])
    return {"user": user.get_name(), "projects": sorted(projects.values(), key=_by_project)}


def _by_project(entry: dict[str, Any]) -> str:
    return entry["project"] or "~"


@app.get("/api/models/{model}")
def describe_model(model: str, user: ReaderDep) -> dict[str, Any]:
    """A model's versions (metrics, lineage), aliases, traffic, serving state and history."""
    from mlwp import registry
    from mlwp.registry import model_changes

    described = _registry_call(registry.describe, model)
    if not described["versions"] and not _registry_call(registry.registered_model_exists, model):
        raise HTTPException(404, f"no registered model named {model!r}")
    project = _registry_call(registry.model_project, model)
    served = serving_models()
    entry = next((m for m in served.get("models", []) if m.get("name") == model), None)
    return {
        **described,
        "project": project,
        "can_change": may_change(user, project),
        "refusal": None if project is None else refusal(user, project),
        "serving": {
            "error": served.get("error") or served.get("registry_error"),
            "missing": (served.get("missing_models") or {}).get(model),
            "model": entry,
            "last_sync": served.get("last_sync"),
        },
        "history": model_changes.history(model),
        "monitoring": latest_monitoring(described),
        "links": _links(described),
    }


def latest_monitoring(described: dict[str, Any]) -> dict[str, Any] | None:
    """The newest monitor look at the versions behind the aliases, or None before any.

    The monitor task (``mlwp.monitoring.monitor``) logs each look as an MLflow run tagged
    with the model, the versions analysed and the challenger decision, with the result's
    numbers as metrics, and tags each analysed version ``mlwp.monitoring_run`` with it.
    """
    from mlflow.exceptions import MlflowException

    from mlwp import registry
    from operators.links import mlflow_run_url

    aliased = {v["version"] for v in described["versions"] if v.get("aliases")}
    run_ids = {
        v["monitoring_run"]
        for v in described["versions"]
        if v["version"] in aliased and v.get("monitoring_run")
    }
    if not run_ids:
        return None
    runs = []
    for run_id in run_ids:
        try:
            runs.append(registry.client().get_run(run_id))
        except MlflowException as exc:
            return {"run_id": run_id, "error": f"MLflow: {exc.message}"}
    run = max(runs, key=lambda r: r.info.start_time or 0)
    tags = run.data.tags
    return {
        "run_id": run.info.run_id,
        "url": mlflow_run_url(run.info.run_id, run.info.experiment_id),
        "time": run.info.start_time,
        "status": run.info.status,
        "decision": tags.get("mlwp.decision"),
        "versions": {
            key.removeprefix("mlwp.").removesuffix("_version"): value
            for key, value in tags.items()
            if key.startswith("mlwp.") and key.endswith("_version")
        },
        "metrics": dict(sorted(run.data.metrics.items())),
    }


def _links(described: dict[str, Any]) -> dict[str, Any]:
    from operators.links import mlflow_model_version_url, mlflow_public_url

    name = described["name"]
    return {
        "mlflow": mlflow_public_url(),
        "versions": {
            v["version"]: mlflow_model_version_url(name, v["version"])
            for v in described["versions"]
        },
    }


@app.post("/api/projects/{project}/models/{model}/promote")
def promote(project: str, model: str, body: PromoteBody, user: ChangerDep) -> dict[str, Any]:
    """Make a version (default: the challenger) the champion with all the traffic."""
    from mlwp.registry import model_changes

    _model_in_project(project, model)
    after = _registry_call(model_changes.promote, user.get_name(), model, body.version, body.reason)
    if model_changes.unchanged(after):
        return _unchanged(after)
    return {**after, "unchanged": False, "serving": _reload_serving(model, after)}


@app.post("/api/projects/{project}/models/{model}/rollback")
def rollback(project: str, model: str, body: RollbackBody, user: ChangerDep) -> dict[str, Any]:
    """Restore the aliases and traffic from before the last promotion, or of a history event."""
    from mlwp.registry import model_changes

    _model_in_project(project, model)
    after = _registry_call(
        model_changes.rollback, user.get_name(), model, body.reason, to=body.to or None
    )
    if model_changes.unchanged(after):
        return _unchanged(after)
    return {**after, "unchanged": False, "serving": _reload_serving(model, after)}


@app.post("/api/projects/{project}/models/{model}/traffic")
def traffic(project: str, model: str, body: TrafficBody, user: ChangerDep) -> dict[str, Any]:
    """Set the traffic split between champion and challenger (percent, summing to 100)."""
    from mlwp import registry
    from mlwp.registry import model_changes

    _model_in_project(project, model)
    split = _registry_call(
        model_changes.set_traffic, user.get_name(), model, body.traffic, body.reason
    )
    after = {"aliases": _registry_call(registry.aliases, model), "traffic": split}
    if model_changes.unchanged(split):
        return _unchanged(after)
    return {**after, "unchanged": False, "serving": _reload_serving(model, after)}


def _unchanged(state: dict[str, Any]) -> dict[str, Any]:
    """The answer to a change that changed nothing: 200, nothing recorded, serving not asked
    (it already serves this state), as `mlwp models` says "unchanged: ..."."""
    return {
        **state,
        "unchanged": True,
        "serving": {"state": "skipped", "message": "unchanged: nothing to reload"},
    }


@app.exception_handler(HTTPException)
async def _error(request: Request, exc: HTTPException) -> JSONResponse:
    # The shape of Airflow's own API errors, so the page shows both the same way.
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)


# ------------------------------------------------------------------------ pages


@app.get("/models", response_class=HTMLResponse)
def models_page() -> Response:
    """The Models view (the page reads the JSON API with the session of the Airflow UI)."""
    return FileResponse(STATIC / "models.html", media_type="text/html")


@app.get("/static/{name}")
def static(name: str) -> Response:
    path = STATIC / name
    if "/" in name or not path.is_file():
        raise HTTPException(404, f"no static file {name!r}")
    return FileResponse(path)


def _storage() -> Any:
    from mlwp.data.storage import Storage
    from mlwp.settings import get_settings

    return Storage(get_settings().storage_uri)


def _under_root(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise HTTPException(400, f"invalid storage path {path!r}: give a path under the root")
    return path


@app.get("/storage/{path:path}")
def storage_file(path: str, user: ReaderDep) -> Response:
    """A file under the platform's storage root (GX data docs, results, sidecars)."""
    from mlwp.data.storage import StorageError

    storage = _storage()
    uri = f"{storage.root}/{_under_root(path)}"
    try:
        data = storage.read_bytes(uri)
    except StorageError as exc:
        raise HTTPException(404, exc.message) from exc
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if path.endswith(".parquet"):
        return Response(
            data,
            media_type=media_type,
            headers={"Content-Disposition": f'attachment; filename="{Path(path).name}"'},
        )
    return Response(data, media_type=media_type)


@app.get("/datasets", response_class=HTMLResponse)
def datasets_page(user: ReaderDep, path: Annotated[list[str], Query()]) -> str:
    """Stored datasets (an extract's, a transform's splits): their sidecar metadata."""
    from mlwp.data.storage import StorageError

    storage = _storage()
    sections = []
    for item in path:
        relative = _under_root(item)
        try:
            sidecar = storage.read_sidecar(f"{storage.root}/{relative}")
        except StorageError as exc:
            raise HTTPException(404, exc.message) from exc
        sections.append(_dataset_section(relative, sidecar))
    return _page("Stored datasets", "".join(sections))


def _dataset_section(relative: str, sidecar: dict[str, Any]) -> str:
    from operators.links import storage_file_url

    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(str(k))}</td><td><code>{esc(str(v))}</code></td></tr>"
        for k, v in (sidecar.get("schema") or {}).items()
    )
    validation = "".join(
        f"<li>{esc(suite)}: {'passed' if v.get('success') else 'FAILED'}"
        + (
            f' · <a href="{esc(storage_file_url(v["docs_uri"]) or "")}">data docs</a>'
            if v.get("docs_uri")
            else ""
        )
        + "</li>"
        for suite, v in (sidecar.get("validation") or {}).items()
    )
    produced = sidecar.get("produced_by") or {}
    return f"""
<section class="card">
  <h2>{esc(relative.rsplit("/", 2)[-2] if "/" in relative else relative)}</h2>
  <dl>
    <dt>URI</dt><dd><code>{esc(str(sidecar.get("uri", relative)))}</code></dd>
    <dt>sha256</dt><dd><code>{esc(str(sidecar.get("sha256", "")))}</code></dd>
    <dt>rows</dt><dd>{esc(str(sidecar.get("rows", "")))}</dd>
    <dt>source</dt><dd><code>{esc(str(sidecar.get("source", "")))}</code></dd>
    <dt>produced by</dt><dd>{esc(str(produced.get("dag_id", "")))}
      {esc(str(produced.get("run_id", "")))} {esc(str(produced.get("task_id", "")))}</dd>
    <dt>download</dt><dd><a href="{URL_PREFIX}/storage/{esc(relative)}">Parquet</a></dd>
  </dl>
  <h3>Validation</h3><ul>{validation or "<li>not validated</li>"}</ul>
  <h3>Schema</h3><table><tr><th>column</th><th>type</th></tr>{rows}</table>
</section>"""


def _page(title: str, body: str) -> str:
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<link rel="stylesheet" href="{URL_PREFIX}/static/models.css">
<script src="{URL_PREFIX}/static/theme.js"></script></head>
<body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>"""


class MlwpModelsPlugin(AirflowPlugin):
    """The Models view and the storage pages, inside the Airflow UI."""

    name = "mlwp_models"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "mlwp models"}]
    external_views = [
        {
            "name": "Models",
            "href": f"{URL_PREFIX}/models",
            "url_route": "models",
            "destination": "nav",
            "category": None,
        }
    ]
