"""DeployOperator: point a serving alias at the approved version and set the traffic split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from operators._common import MlwpOperator, check_choice

if TYPE_CHECKING:
    from airflow.sdk import Context

ALIASES = ("champion", "challenger")


class DeployOperator(MlwpOperator):
    """Set ``alias`` on the version registered (and approved) upstream, then ``traffic``.

    The registry is the whole contract with serving: the alias and the ``mlwp.traffic`` tag
    are what it reads. Afterwards the serving service is asked to reload
    (``POST <serving url>/admin/reload``); when it is not reachable that is logged and
    ignored, because serving also polls the registry.
    """

    template_fields: Sequence[str] = ("model", "alias", "traffic")
    template_fields_renderers = {"traffic": "json"}
    ui_color = "#aed6f1"

    def __init__(
        self,
        *,
        model: str,
        alias: str = "champion",
        traffic: dict[str, int] | None = None,
        input: str | None = None,
        serving_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not model:
            raise ValueError(f"task {self.task_id!r}: 'model' is required")
        check_choice(self.task_id, "alias", alias, ALIASES)
        if traffic is not None:
            for name in traffic:
                check_choice(self.task_id, "traffic alias", name, ALIASES)
            if sum(traffic.values()) != 100:
                shares = " + ".join(f"{k} {v}" for k, v in traffic.items())
                raise ValueError(
                    f"task {self.task_id!r}: traffic must sum to 100, got {shares} = "
                    f"{sum(traffic.values())}"
                )
        self.model = model
        self.alias = alias
        self.traffic = traffic
        self.input = input
        self.serving_url = serving_url

    def execute(self, context: Context) -> dict[str, Any]:
        from mlwp import registry
        from operators import _registry

        registration = self.upstream_document(context, "version", self.input)
        if registration.get("approved") is False:
            raise AirflowSkipException("the promotion was rejected; aliases are untouched")
        if registration.get("model") not in (None, self.model):
            self.log.warning(
                "Upstream registered model %r, this task deploys %r",
                registration.get("model"),
                self.model,
            )
        version = str(registration["version"])
        alias, traffic = self.alias, self.traffic
        _registry.use_tracking_server()
        current = (
            registry.aliases(self.model) if registry.registered_model_exists(self.model) else {}
        )
        if alias == "challenger" and "champion" not in current:
            # Serving needs a champion: the first version deployed becomes it, with all traffic.
            self.log.info(
                "%s has no champion yet: version %s becomes the champion (not the challenger)",
                self.model,
                version,
            )
            alias, traffic = "champion", {"champion": 100}
        try:
            snapshot = registry.deploy(self.model, version, alias, traffic)
        except registry.RegistryError as exc:
            raise AirflowFailException(f"task {self.task_id!r}: {exc.message}") from exc
        self.log.info(
            "%s@%s -> version %s (was %s); aliases now %s, traffic %s",
            self.model,
            alias,
            version,
            current.get(alias, "unset"),
            snapshot["aliases"],
            snapshot["traffic"],
        )
        reloaded = self._reload_serving()
        self.stat("incr", f"deploy.{alias}")
        return {
            "model": self.model,
            "alias": alias,
            "version": version,
            "previous_version": current.get(alias),
            "aliases": snapshot["aliases"],
            "traffic": snapshot["traffic"],
            "serving_reloaded": reloaded,
        }

    def _reload_serving(self) -> bool:
        import os

        import httpx

        from mlwp.settings import get_settings

        url = (self.serving_url or get_settings().serving_url).rstrip("/") + "/admin/reload"
        headers = {}
        key = os.environ.get("MLWP_SERVING_ADMIN_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            response = httpx.post(url, headers=headers, timeout=10.0)
        except httpx.HTTPError as exc:
            self.log.info("Serving not reachable at %s (%s); it will pick up the change", url, exc)
            return False
        if response.status_code >= 400:
            self.log.warning(
                "Serving answered %s to %s: %s", response.status_code, url, response.text[:300]
            )
            return False
        self.log.info("Serving reloaded: %s", response.text[:300])
        return True
