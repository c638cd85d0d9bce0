"""DeployOperator: point a serving alias at the approved version and set the traffic split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from operators._common import MlwpOperator, check_choice
from operators.links import MLflowModelVersionLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from mlwp.registry.serving_client import ReloadOutcome

ALIASES = ("champion", "challenger")


class DeployOperator(MlwpOperator):
    """Set ``alias`` on the version registered (and approved) upstream, then ``traffic``.

    The registry is the whole contract with serving: the alias and the ``mlwp.traffic`` tag
    are what it reads. Afterwards the serving service is asked to reload
    (``POST <serving url>/admin/reload``, answered at once) and the task waits, at most
    ``serving_timeout`` seconds (default ``MLWP_DEPLOY_SERVING_TIMEOUT_SECONDS``, 60), until
    ``GET /v1/models`` shows the version under the alias (``mlwp.registry.serving_client``). What it
    saw is logged and returned; serving being unreachable, slow or failing to load never
    fails the task, because the registry is the contract and serving also polls it.

    The change is recorded in the model's history (``mlwp models history``) with the actor
    ``workflow:<dag_id>``, the run and the approvers (``mlwp.registry.model_changes``).
    """

    template_fields: Sequence[str] = ("model", "alias", "traffic")
    template_fields_renderers = {"traffic": "json"}
    ui_color = "#aed6f1"
    operator_extra_links = (MLflowModelVersionLink(),)

    def __init__(
        self,
        *,
        model: str,
        alias: str = "champion",
        traffic: dict[str, int] | None = None,
        input: str | None = None,
        serving_url: str | None = None,
        serving_timeout: float | None = None,
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
        if serving_timeout is not None and serving_timeout < 0:
            raise ValueError(f"task {self.task_id!r}: serving_timeout must be >= 0")
        self.serving_timeout = serving_timeout

    def execute(self, context: Context) -> dict[str, Any]:
        from mlwp import registry
        from mlwp.registry import model_changes
        from operators import _registry
        from operators.links import mlflow_model_version_url

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
        MLflowModelVersionLink.persist(context, mlflow_model_version_url(self.model, version))
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
        ids = self.lineage(context)
        approved_by = registration.get("approvals") or registration.get("approved_by")
        try:
            snapshot = model_changes.deploy(
                model_changes.workflow_actor(ids["dag_id"]),
                self.model,
                version,
                alias,
                traffic,
                reason=f"deployed by {ids['dag_id']} run {ids['run_id']}",
                run={k: ids[k] for k in ("dag_id", "run_id", "task_id")},
                approved_by=approved_by,
            )
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
        serving = self._reload_serving(alias, version, snapshot["traffic"])
        self.stat("incr", f"deploy.{alias}")
        return {
            "model": self.model,
            "alias": alias,
            "version": version,
            "previous_version": current.get(alias),
            "aliases": snapshot["aliases"],
            "traffic": snapshot["traffic"],
            "serving_reloaded": serving.state in ("serving", "requested"),
            "serving": serving.as_dict(),
        }

    def _reload_serving(
        self, alias: str, version: str, traffic: dict[str, Any] | None
    ) -> ReloadOutcome:
        from mlwp.platform.serving_key import task_admin_key
        from mlwp.registry.serving_client import reload_and_wait
        from mlwp.settings import get_settings

        settings = get_settings()
        return reload_and_wait(
            self.serving_url or settings.serving_url,
            self.model,
            alias,
            version,
            traffic,
            api_key=task_admin_key(settings),
            timeout=(
                settings.deploy_serving_timeout_seconds
                if self.serving_timeout is None
                else self.serving_timeout
            ),
            log=self.log,
        )
