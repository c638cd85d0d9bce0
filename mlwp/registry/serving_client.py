"""Ask the serving service to reload after a deploy, and wait until it serves the version.

The registry is the contract (DESIGN contract 4); this only shortens the time until serving
notices a deploy. ``POST /admin/reload`` answers 202 at once with the sync it started or
joined; the deploy then reads ``GET /v1/models`` until the deployed alias shows the deployed
version with the deployed traffic split, bounded by a timeout. It stops early when the sync
that covers the request finished and shows why the version cannot serve (a load error, the
model not served); when that sync finished without the change (a registry error, a race with
another deploy) it asks for one more reload. Nothing here raises: the caller gets a
``ReloadOutcome`` saying what was seen, and serving's own poller remains the fallback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

DEFAULT_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 1.0
REQUEST_TIMEOUT_SECONDS = 10.0

_log = logging.getLogger("mlwp.registry.serving_client")


@dataclass
class ReloadOutcome:
    """What the deploy saw of serving.

    ``state``: ``serving`` (the version serves under the alias), ``requested`` (reload
    accepted, not waited for), ``unreachable``, ``refused`` (an error status),
    ``load_failed``, ``not_served`` (serving does not serve this model) or ``timeout``.
    """

    state: str
    message: str
    seconds: float
    sync: dict[str, Any] | None = None
    seen: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def confirmed(self) -> bool:
        return self.state == "serving"

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "message": self.message,
            "seconds": round(self.seconds, 3),
            "sync": self.sync,
            "seen": self.seen,
        }


def reload_and_wait(
    base_url: str,
    model: str,
    alias: str,
    version: str,
    traffic: Mapping[str, Any] | None,
    *,
    api_key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    poll_seconds: float = POLL_SECONDS,
    request_timeout: float = REQUEST_TIMEOUT_SECONDS,
    log: Any = None,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ReloadOutcome:
    """Ask ``base_url`` to reload, then wait (at most ``timeout`` s, 0: do not wait) until
    ``GET /v1/models`` shows ``model``'s ``alias`` at ``version`` with ``traffic``."""
    logger = log or _log
    base = base_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    own = client is None
    http = client or httpx.Client(timeout=request_timeout)
    started = time.monotonic()
    deadline = started + timeout
    try:
        sync, failure = _request_reload(
            http, base, headers, request_timeout=request_timeout, logger=logger, started=started
        )
        if failure is not None:
            return failure
        if timeout <= 0:
            message = f"reload requested (sync {_sync_id(sync)}); not waiting for it"
            logger.info("Serving at %s: %s", base, message)
            return ReloadOutcome("requested", message, time.monotonic() - started, sync)
        logger.info(
            "Waiting up to %.0f s for serving to show %s@%s = version %s",
            timeout,
            model,
            alias,
            version,
        )
        seen: dict[str, Any] | None = None
        while True:
            seen, problem = _read_models(http, base, headers, request_timeout)
            entry = _entry(seen, model)
            elapsed = time.monotonic() - started
            if entry is not None and _matches(entry, alias, version, traffic):
                message = (
                    f"serving shows {model}@{alias} = version {version} after {elapsed:.1f} s "
                    f"(variants {_variants(entry)}, traffic {entry.get('traffic')})"
                )
                logger.info("%s", message)
                return ReloadOutcome("serving", message, elapsed, sync, _brief(entry))
            if seen is not None and _covered(seen, sync):
                stop = _why_not(seen, entry, model, alias, version)
                if stop is not None:
                    state, message = stop
                    logger.warning("Serving at %s: %s", base, message)
                    return ReloadOutcome(state, message, elapsed, sync, _brief(entry, seen))
                # the covering sync ended without the change (registry error, race): ask again
                logger.info(
                    "Sync %s finished without %s@%s = %s (saw %s, registry error %s); "
                    "asking for another reload",
                    _sync_id(sync),
                    model,
                    alias,
                    version,
                    _variants(entry) if entry else "no such model",
                    seen.get("registry_error"),
                )
                again, failure = _request_reload(
                    http,
                    base,
                    headers,
                    request_timeout=request_timeout,
                    logger=logger,
                    started=started,
                )
                sync = again if failure is None else sync
            if time.monotonic() + poll_seconds > deadline:
                what = (
                    f"variants {_variants(entry)}, traffic {entry.get('traffic')}, "
                    f"load errors {entry.get('load_errors')}"
                    if entry is not None
                    else (problem or "the model is not listed")
                )
                message = (
                    f"serving did not show {model}@{alias} = version {version} within "
                    f"{timeout:.0f} s; last seen: {what}; its poller will pick the change up"
                )
                logger.warning("Serving at %s: %s", base, message)
                return ReloadOutcome("timeout", message, elapsed, sync, _brief(entry, seen))
            sleep(poll_seconds)
    finally:
        if own:
            http.close()


def reload_after_change(
    base_url: str,
    model: str,
    state: Mapping[str, Any],
    *,
    api_key: str | None,
    timeout: float = 20.0,
) -> ReloadOutcome:
    """After a person's change of aliases or traffic (``mlwp models promote|rollback|traffic``,
    the Models view): ask serving to load ``state`` now and wait until its champion and split
    show (``skipped`` when the state has no champion to serve)."""
    champion = (state.get("aliases") or {}).get("champion")
    if champion is None:
        return ReloadOutcome("skipped", "no champion to serve", 0.0)
    return reload_and_wait(
        base_url,
        model,
        "champion",
        str(champion),
        state.get("traffic"),
        api_key=api_key,
        timeout=timeout,
    )


def _request_reload(
    http: httpx.Client,
    base: str,
    headers: dict[str, str],
    *,
    request_timeout: float,
    logger: Any,
    started: float,
) -> tuple[dict[str, Any] | None, ReloadOutcome | None]:
    url = f"{base}/admin/reload"
    try:
        response = http.post(url, headers=_with_trace_context(headers), timeout=request_timeout)
    except httpx.HTTPError as exc:
        message = f"not reachable at {url} ({type(exc).__name__}: {exc}); it will poll the change"
        logger.info("Serving %s", message)
        return None, ReloadOutcome("unreachable", message, time.monotonic() - started)
    if response.status_code >= 400:
        message = f"answered {response.status_code} to POST {url}: {response.text[:300]}"
        logger.warning("Serving %s", message)
        return None, ReloadOutcome("refused", message, time.monotonic() - started)
    body = _json(response)
    sync = body.get("sync") if isinstance(body.get("sync"), dict) else None
    logger.info(
        "Serving answered %s to POST %s: %s sync %s (%s)",
        response.status_code,
        url,
        body.get("status", "finished"),
        _sync_id(sync),
        (sync or {}).get("state", "done"),
    )
    return sync, None


def _with_trace_context(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` plus the current OpenTelemetry context (W3C ``traceparent``), when there is
    one: in a task run with Airflow's traces on, the task's span, so serving's reload span
    joins the deploy's trace. Nothing is added without an active span or OpenTelemetry."""
    try:
        from opentelemetry import propagate
    except ImportError:  # pragma: no cover - OpenTelemetry comes with Airflow
        return headers
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {**headers, **carrier}


def _read_models(
    http: httpx.Client, base: str, headers: dict[str, str], request_timeout: float
) -> tuple[dict[str, Any] | None, str | None]:
    try:
        response = http.get(f"{base}/v1/models", headers=headers, timeout=request_timeout)
    except httpx.HTTPError as exc:
        return None, f"GET /v1/models failed ({type(exc).__name__}: {exc})"
    if response.status_code >= 400:
        return None, f"GET /v1/models answered {response.status_code}: {response.text[:200]}"
    return _json(response), None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _entry(seen: dict[str, Any] | None, model: str) -> dict[str, Any] | None:
    for entry in (seen or {}).get("models") or []:
        if isinstance(entry, dict) and entry.get("name") == model:
            return entry
    return None


def _brief(
    entry: dict[str, Any] | None, seen: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The part of ``GET /v1/models`` worth keeping in the task's result (no signature)."""
    if entry is not None:
        return {
            "variants": _variants(entry),
            "traffic": entry.get("traffic"),
            "load_errors": entry.get("load_errors") or [],
        }
    if seen is None:
        return None
    return {
        "models": [e.get("name") for e in seen.get("models") or [] if isinstance(e, dict)],
        "registry_error": seen.get("registry_error"),
        "missing_models": seen.get("missing_models") or {},
    }


def _variants(entry: dict[str, Any] | None) -> dict[str, str]:
    return {
        str(v.get("alias")): str(v.get("version"))
        for v in (entry or {}).get("variants") or []
        if isinstance(v, dict)
    }


def _matches(
    entry: dict[str, Any], alias: str, version: str, traffic: Mapping[str, Any] | None
) -> bool:
    if _variants(entry).get(alias) != str(version):
        return False
    if traffic is None:
        return True
    served = entry.get("traffic") or {}
    try:
        return {k: float(v) for k, v in served.items()} == {k: float(v) for k, v in traffic.items()}
    except (TypeError, ValueError, AttributeError):
        return False


def _sync_id(sync: dict[str, Any] | None) -> int | None:
    value = (sync or {}).get("id")
    return value if isinstance(value, int) else None


def _covered(seen: dict[str, Any], sync: dict[str, Any] | None) -> bool:
    """Has the sync that serves our request (or a later one) finished?"""
    wanted = _sync_id(sync)
    if wanted is None:
        # an answer without a sync id (a service that synced before answering): done already
        return sync is None
    last = ((seen.get("syncs") or {}).get("last")) or {}
    return isinstance(last.get("id"), int) and last["id"] >= wanted


def _why_not(
    seen: dict[str, Any], entry: dict[str, Any] | None, model: str, alias: str, version: str
) -> tuple[str, str] | None:
    """After the covering sync: a reason that waiting longer cannot help, or None."""
    if entry is None:
        missing = (seen.get("missing_models") or {}).get(model)
        if missing:
            return "not_served", f"serving reports {missing}"
        if seen.get("registry_error"):
            return None
        return "not_served", (
            f"serving does not serve {model!r} (it serves "
            f"{[e.get('name') for e in seen.get('models') or []]}; check MLWP_SERVING_MODELS)"
        )
    for error in entry.get("load_errors") or []:
        if error.get("alias") == alias and str(error.get("version")) == str(version):
            return "load_failed", (
                f"serving could not load {model} version {version} for {alias}: "
                f"{error.get('error')}; still serving {error.get('serving_version')}"
            )
    return None
