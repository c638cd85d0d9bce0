"""RolloutOperator: a guarded, stepwise rollout of the challenger (issue #14).

The steps (``[10, 50, 100]``: challenger percent; 100 promotes it) advance only while the
guardrails hold (``mlwp.registry.rollout``). Between checks the task is *deferred* on a
``TimeDeltaTrigger`` (the triggerer waits, no worker slot is held); the rollout's state
travels in the deferral's keyword arguments. A breach sends all traffic back to the champion
at once (recorded as ``model.rollback`` by ``guardrail:<dag_id>``), asks serving to reload,
and fails the task with the breach, so the project's ``alerts.on_failure`` notifiers fire.

With ``approve`` in the definition the compiler builds three tasks (:func:`rollout_tasks_for`):
``<id>_steps`` (the steps below 100), ``<id>_approval`` (the human approval; its request
carries the evidence) and ``<id>`` (one last guardrail check on the traffic since the
approval was asked, then the promotion).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowSkipException,
    DownstreamTasksSkipped,
)

from operators._common import MlwpOperator, check_choice
from operators.approve import ApproveOperator, fmt

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context

    from mlwp.registry.rollout import RolloutPolicy, VariantWindow, Verdict

PHASES = ("all", "steps", "promote")
KEEP_CHECKS = 30
STATE_XCOM_KEY = "rollout_state"


class RolloutOperator(MlwpOperator):
    """Move traffic to the challenger in ``steps``, advancing while ``guardrails`` hold."""

    template_fields: Sequence[str] = ("model",)
    ui_color = "#f5cba7"

    def __init__(
        self,
        *,
        model: str,
        steps: Sequence[int] = (10, 50, 100),
        step_duration: float = 3600.0,
        check_every: float = 300.0,
        guardrails: dict[str, Any] | None = None,
        phase: str = "all",
        input: str | None = None,
        serving_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("approve", None)  # the compiler's business (rollout_tasks_for)
        super().__init__(**kwargs)
        from mlwp.registry.rollout import RolloutError, policy_from

        if not model:
            raise ValueError(f"task {self.task_id!r}: 'model' is required")
        check_choice(self.task_id, "phase", phase, PHASES)
        self.model = model
        self.steps = [int(s) for s in steps]
        self.step_duration = float(step_duration)
        self.check_every = float(check_every)
        self.guardrails = dict(guardrails or {})
        self.phase = phase
        self.input = input
        self.serving_url = serving_url
        try:
            policy_from(self.steps, self.step_duration, self.check_every, self.guardrails)
        except RolloutError as exc:
            raise ValueError(f"task {self.task_id!r}: {exc.message}") from exc

    # ------------------------------------------------------------------ the state machine

    @property
    def policy(self) -> RolloutPolicy:
        from mlwp.registry.rollout import policy_from

        steps = self.steps
        if self.phase == "steps" and steps[-1] == 100:
            steps = steps[:-1]
        elif self.phase == "promote":
            steps = [100]
        return policy_from(steps, self.step_duration, self.check_every, self.guardrails)

    def execute(self, context: Context) -> Any:
        from mlwp import registry
        from operators import _registry

        _registry.use_tracking_server()
        if self.phase == "promote":
            decision = self.upstream_document(context, "version", self.input)
            if decision.get("approved") is False:
                raise AirflowSkipException("the promotion was rejected; traffic is unchanged")
            handed = dict(decision.get("rollout") or {})
            if not handed:
                raise AirflowFailException(f"task {self.task_id!r}: upstream has no rollout state")
            self._check_aliases(handed)
            return self._final_check(context, handed)
        aliases = (
            registry.aliases(self.model) if registry.registered_model_exists(self.model) else {}
        )
        if "challenger" not in aliases or "champion" not in aliases:
            raise AirflowSkipException(
                f"{self.model} has no champion and challenger to roll out between "
                f"(aliases: {aliases or 'none'})"
            )
        state: dict[str, Any] = {
            "champion": aliases["champion"],
            "challenger": aliases["challenger"],
            "steps": list(self.policy.steps),
            "checks": [],
        }
        if not state["steps"]:
            return self._finish(context, state)
        return self._begin(context, state, 0)

    def resume(
        self, context: Context, event: Any = None, state: dict[str, Any] | None = None
    ) -> Any:
        """Called by Airflow when the wait between two checks is over."""
        from mlwp.registry import rollout
        from operators import _registry

        _registry.use_tracking_server()
        state = dict(
            state or context["ti"].xcom_pull(task_ids=self.task_id, key=STATE_XCOM_KEY) or {}
        )
        if "champion" not in state:
            raise AirflowFailException(f"task {self.task_id!r}: the rollout's state is lost")
        self._check_aliases(state, expected_traffic=state.get("traffic"))
        now = datetime.now(UTC)
        elapsed = rollout.elapsed_seconds(state["started"], now)
        policy = self.policy
        observed, verdict = self._observe(state, elapsed)
        if observed is None:
            action = "rollback" if elapsed >= 2 * policy.step_seconds else "wait"
            if action == "rollback":
                verdict.breaches.append(
                    f"no serving metrics for {elapsed:.0f} s: the challenger cannot be judged"
                )
        else:
            action = rollout.next_action(policy, verdict, elapsed, observed)
        self._remember(state, verdict, action, elapsed)
        self.log.info(
            "%s step %d (challenger %d%%) after %.0f s: %s; breaches %s; pending %s",
            self.model,
            state["step"] + 1,
            state["steps"][state["step"]],
            elapsed,
            action,
            verdict.breaches or "none",
            verdict.pending or "none",
        )
        if action == "rollback":
            self._rollback(context, state, verdict)
        if action == "advance":
            if state["step"] + 1 < len(state["steps"]):
                return self._begin(context, state, state["step"] + 1)
            return self._finish(context, state)
        self._wait(context, state)
        return None

    def _begin(self, context: Context, state: dict[str, Any], index: int) -> Any:
        policy = self.policy
        if policy.steps[index] == 100:
            return self._promote(context, state)
        split = policy.split(index)
        self._change(
            context,
            "traffic",
            f"rollout step {index + 1}/{len(self.steps)}: challenger v{state['challenger']} "
            f"{split['challenger']}%",
            traffic=split,
        )
        state.update(
            step=index,
            traffic=split,
            started=datetime.now(UTC).isoformat(),
            baseline=self._baseline(),
        )
        self._wait(context, state)
        return None

    def _wait(self, context: Context, state: dict[str, Any]) -> None:
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        # Also an XCom: the triggerer hands the kwargs back, but dag.test() replaces them with
        # the trigger's event, and the XCom shows the rollout's progress in the UI.
        context["ti"].xcom_push(key=STATE_XCOM_KEY, value=state)
        self.defer(
            trigger=TimeDeltaTrigger(timedelta(seconds=self.check_every)),
            method_name="resume",
            kwargs={"state": state},
        )

    def _finish(self, context: Context, state: dict[str, Any]) -> dict[str, Any]:
        """The steps are done below 100 %: hand the evidence on (to the approval)."""
        state.update(
            started=datetime.now(UTC).isoformat(), baseline=self._baseline(), finished=True
        )
        document = self._document(state, "held")
        self.log.info(
            "%s: guardrails held at every step; challenger v%s keeps %s%%",
            self.model,
            state["challenger"],
            (state.get("traffic") or {}).get("challenger"),
        )
        return document

    def _final_check(self, context: Context, state: dict[str, Any]) -> dict[str, Any]:
        from mlwp.registry import rollout

        elapsed = rollout.elapsed_seconds(state["started"], datetime.now(UTC))
        _observed, verdict = self._observe(state, elapsed)
        self._remember(state, verdict, "promote" if verdict.holds else "rollback", elapsed)
        if not verdict.holds:
            self._rollback(context, state, verdict)
        return self._promote(context, state)

    def _promote(self, context: Context, state: dict[str, Any]) -> dict[str, Any]:
        last = (state.get("checks") or [{}])[-1]
        self._change(
            context,
            "promote",
            f"rollout complete: guardrails held at every step; v{state['challenger']} "
            f"becomes the champion",
            evidence=last,
        )
        self.stat("incr", "rollout.promoted")
        state["traffic"] = {"champion": 100}
        return self._document(state, "promoted")

    def _rollback(self, context: Context, state: dict[str, Any], verdict: Verdict) -> None:
        reason = "; ".join(verdict.breaches)
        self._change(context, "rollback", reason, evidence=verdict.to_dict())
        self.stat("incr", "rollout.rolled_back")
        state["traffic"] = {"champion": 100}
        context["ti"].xcom_push(key="rollout", value=self._document(state, "rolled_back"))
        raise AirflowFailException(
            f"guardrail breach at step {state.get('step', 0) + 1} of {self.model}'s rollout "
            f"(challenger v{state['challenger']}): {reason}. All traffic is back on the "
            f"champion v{state['champion']}."
        )

    # ------------------------------------------------------------------ helpers

    def _check_aliases(
        self, state: dict[str, Any], expected_traffic: dict[str, int] | None = None
    ) -> None:
        """Stop if a person (or another run) changed what serves meanwhile: never fight them."""
        from mlwp import registry

        now = registry.snapshot(self.model)
        aliases = now["aliases"]
        if (
            aliases.get("champion") != state["champion"]
            or aliases.get("challenger") != state["challenger"]
        ):
            raise AirflowFailException(
                f"{self.model}'s aliases changed during the rollout (now {aliases}; the rollout "
                f"was champion v{state['champion']}, challenger v{state['challenger']}); "
                "stopping without touching them"
            )
        if expected_traffic is not None and now["traffic"] != expected_traffic:
            raise AirflowFailException(
                f"{self.model}'s traffic changed during the rollout (now {now['traffic']}, "
                f"expected {expected_traffic}); stopping without touching it"
            )

    def _change(self, context: Context, what: str, reason: str, **details: Any) -> None:
        from mlwp import registry
        from mlwp.registry import model_changes

        ti = context["ti"]
        run = {"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id}
        try:
            if what == "traffic":
                model_changes.set_traffic(
                    model_changes.workflow_actor(ti.dag_id),
                    self.model,
                    details["traffic"],
                    reason,
                    kind="workflow",
                    run=run,
                )
                alias, version = "challenger", None
            elif what == "promote":
                model_changes.promote(
                    model_changes.workflow_actor(ti.dag_id),
                    self.model,
                    None,
                    reason,
                    kind="workflow",
                    run=run,
                    evidence=details.get("evidence"),
                )
                alias, version = "champion", None
            else:
                model_changes.to_champion(
                    model_changes.guardrail_actor(ti.dag_id),
                    self.model,
                    reason,
                    run=run,
                    evidence=details.get("evidence"),
                )
                alias, version = "champion", None
        except registry.RegistryError as exc:
            raise AirflowFailException(f"task {self.task_id!r}: {exc.message}") from exc
        reload_serving(self.model, alias, version, self.serving_url, self.log)

    def _baseline(self) -> dict[str, Any] | None:
        """Serving's counters now (the start of a window); None with Prometheus or on error."""
        from mlwp.registry import rollout
        from mlwp.settings import get_settings

        settings = get_settings()
        if settings.prometheus_url:
            return None
        try:
            return rollout.scrape_serving(self.serving_url or settings.serving_url, self.model)
        except rollout.RolloutError as exc:
            self.log.warning("%s", exc.message)
            return None

    def _observe(
        self, state: dict[str, Any], elapsed: float
    ) -> tuple[dict[str, VariantWindow] | None, Verdict]:
        from mlwp.registry import rollout
        from mlwp.settings import get_settings

        settings = get_settings()
        policy = self.policy
        observed: dict[str, VariantWindow] | None = None
        problem = None
        try:
            if settings.prometheus_url:
                observed = rollout.query_prometheus(settings.prometheus_url, self.model, elapsed)
            else:
                now = rollout.scrape_serving(self.serving_url or settings.serving_url, self.model)
                if state.get("baseline") is None:
                    state["baseline"] = now  # the first readable scrape starts the window
                observed = rollout.window(now, state["baseline"])
        except rollout.RolloutError as exc:
            problem = exc.message
        monitor = None
        if policy.guardrails.drift or policy.guardrails.labels:
            monitor = rollout.read_monitor_result(
                self.model, state["champion"], state["challenger"]
            )
        if monitor is not None:
            state["monitor"] = monitor  # the latest analysis: the approval request shows it
        verdict = rollout.evaluate(policy.guardrails, observed or {}, monitor)
        if problem:
            verdict.pending.append(problem)
        return observed, verdict

    def _remember(
        self, state: dict[str, Any], verdict: Verdict, action: str, elapsed: float
    ) -> None:
        checks = list(state.get("checks") or [])
        checks.append(
            {
                "time": datetime.now(UTC).isoformat(),
                "step": state.get("step", 0) + 1,
                "traffic": state.get("traffic"),
                "elapsed_s": round(elapsed, 1),
                "action": action,
                **verdict.to_dict(),
            }
        )
        state["checks"] = checks[-KEEP_CHECKS:]

    def _document(self, state: dict[str, Any], outcome: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": state["challenger"],
            "champion": {"version": state["champion"]},
            "outcome": outcome,
            "traffic": state.get("traffic"),
            "rollout": state,
        }


def rollout_markdown(registration: dict[str, Any]) -> str:
    """The evidence of a guarded rollout for its approval request, as Markdown: the last
    guardrail check of every step, then the monitor's latest analysis of the two versions."""
    state = registration.get("rollout") or {}
    checks = state.get("checks") or []
    last_of_step = {check.get("step"): check for check in checks}  # checks are in time order
    lines = [
        "",
        f"#### Rollout of version {state.get('challenger', '?')} against champion "
        f"version {state.get('champion', '?')}: guardrails held at every step",
        "",
        "| step | challenger % | requests | error rate | p99 ms | monitor decision | drift |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for check in last_of_step.values():
        evidence = check.get("evidence") or {}
        mine = (evidence.get("serving") or {}).get("challenger") or {}
        monitor = evidence.get("monitor") or {}
        lines.append(
            f"| {check.get('step', '?')} | {(check.get('traffic') or {}).get('challenger', '?')} "
            f"| {fmt(mine.get('requests'))} | {fmt(mine.get('error_rate'))} "
            f"| {fmt(mine.get('p99_ms'))} | {monitor.get('decision', '-')} "
            f"| {fmt(monitor.get('prediction_drifted'))} |"
        )
    pending = (checks[-1] if checks else {}).get("pending") or []
    if pending:
        lines += ["", "Not judged yet: " + "; ".join(pending)]
    return "\n".join(lines) + monitor_markdown(state.get("monitor"))


def monitor_markdown(monitor: dict[str, Any] | None) -> str:
    """The monitor's analysis (its ``MonitorResult``) as Markdown: per variant traffic, label
    coverage and metrics with their intervals, then SRM, the comparison, drift, and the link
    to the MLflow monitoring run."""
    from operators.links import mlflow_run_url

    if not monitor:
        return (
            "\n\n#### The monitor's analysis\n\nNone for these two versions yet: the labelled "
            "comparison and prediction drift are not judged (schedule the monitor workflow "
            "more often than a step lasts)."
        )
    versions = monitor.get("versions") or {}
    variants = [v for v in ("champion", "challenger", "shadow") if v in versions]
    traffic = monitor.get("traffic") or {}
    coverage = monitor.get("label_coverage") or {}
    metrics = monitor.get("metrics") or {}
    run_id = monitor.get("mlflow_run_id")
    lines = [
        "",
        "",
        f"#### The monitor's analysis ({monitor.get('time', '?')})",
        "",
        f"MLflow monitoring run: [{run_id}]({mlflow_run_url(run_id, None)})" if run_id else "",
        "",
        "| | " + " | ".join(f"{v} v{versions[v]}" for v in variants) + " |",
        "| --- |" + " --- |" * len(variants),
        "| traffic share (expected) | "
        + " | ".join(
            f"{fmt((traffic.get(v) or {}).get('share'))} "
            f"({fmt((traffic.get(v) or {}).get('expected_share'))})"
            for v in variants
        )
        + " |",
        "| labelled rows (coverage) | "
        + " | ".join(
            f"{fmt((coverage.get(v) or {}).get('labelled'))} "
            f"({fmt((coverage.get(v) or {}).get('coverage'))})"
            for v in variants
        )
        + " |",
    ]
    names = sorted({name for v in variants for name in metrics.get(v) or {}})
    for name in names:
        cells = []
        for v in variants:
            m = (metrics.get(v) or {}).get(name) or {}
            cells.append(
                f"{fmt(m.get('value'))} [{fmt(m.get('low'))}, {fmt(m.get('high'))}] "
                f"n={fmt(m.get('n'))}"
                if m
                else "-"
            )
        confidence = next(
            ((metrics.get(v) or {}).get(name, {}).get("confidence") for v in variants), None
        )
        level = f" ({confidence:.0%} interval)" if isinstance(confidence, float) else ""
        lines.append(f"| {name}{level} | " + " | ".join(cells) + " |")
    srm = monitor.get("srm") or {}
    comparison = monitor.get("comparison") or {}
    lines += [
        "",
        f"- Sample-ratio mismatch: {'**yes**' if srm.get('mismatch') else 'no'} "
        f"(chi-square p = {fmt(srm.get('p_value'))}, alarm below {fmt(srm.get('alpha'))})",
        f"- Challenger against champion on {comparison.get('metric', '?')} "
        f"({comparison.get('method', 'always-valid test')}): difference "
        f"{fmt(comparison.get('difference'))} [{fmt(comparison.get('low'))}, "
        f"{fmt(comparison.get('high'))}], p = {fmt(comparison.get('p_value'))}: "
        f"**{comparison.get('decision', '?')}**",
    ]
    drift = monitor.get("drift") or {}
    for variant, found in (drift.get("variants") or {}).items():
        columns = [n for n, c in (found.get("columns") or {}).items() if c.get("drifted")]
        what = found.get("skipped") or (", ".join(columns) if columns else "none")
        predictions = "drifted" if found.get("prediction_drifted") else "not drifted"
        lines.append(
            f"- Drift of {variant} v{found.get('version', '?')}: {what} (predictions {predictions})"
        )
    return "\n".join(lines)


def reload_serving(
    model: str, alias: str, version: str | None, serving_url: str | None, log: Any
) -> None:
    """Ask serving to load what the registry now says (a failed reload is logged)."""
    from mlwp import registry
    from mlwp.registry.serving_client import reload_and_wait
    from mlwp.settings import get_settings

    settings = get_settings()
    key = settings.serving_admin_key
    now = registry.snapshot(model)
    reload_and_wait(
        serving_url or settings.serving_url,
        model,
        alias,
        version or now["aliases"].get(alias, ""),
        now["traffic"],
        api_key=key.get_secret_value() if key else None,
        timeout=min(settings.deploy_serving_timeout_seconds, 30.0),
        log=log,
    )


class RolloutApprovalOperator(ApproveOperator):
    """The person's answer to a rollout's promotion, with the rollout's evidence in the request.

    The request shows the guardrail checks of every step and the monitor's latest analysis of
    the two versions (:func:`rollout_markdown`). A rejection sends all traffic back to the
    champion at once, recorded as ``model.rollback`` by the person who rejected: the
    challenger must not keep the last step's share with no rollout watching it any more.
    """

    def __init__(self, *, model: str, serving_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.serving_url = serving_url

    def request_body(self, registration: dict[str, Any]) -> str:
        state = registration.get("rollout") or {}
        traffic = registration.get("traffic") or {}
        head = (
            f"### Promote `{self.model}` version {state.get('challenger', '?')} to champion?\n\n"
            f"It serves {traffic.get('challenger', '?')} % of the traffic now, beside the "
            f"champion version {state.get('champion', '?')}. Approve: it gets all the traffic. "
            "Reject: all the traffic goes back to the champion.\n"
        )
        return head + rollout_markdown(registration)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        try:
            return super().execute_complete(context, event)
        except DownstreamTasksSkipped:
            self._back_to_champion(context, event)
            raise

    def _back_to_champion(self, context: Context, event: dict[str, Any]) -> None:
        from mlwp import registry
        from mlwp.registry import model_changes

        ti = context["ti"]
        registration = ti.xcom_pull(task_ids=self.task_id, key="registration") or {}
        state = registration.get("rollout") or {}
        who = ((event or {}).get("responded_by_user") or {}).get("name") or "unknown"
        aliases = registry.aliases(self.model)
        if (aliases.get("champion"), aliases.get("challenger")) != (
            state.get("champion"),
            state.get("challenger"),
        ):
            # Someone changed what serves while the request waited: people win, leave it.
            self.log.warning(
                "%s's aliases changed while the promotion waited (now %s): left as they are",
                self.model,
                aliases,
            )
            return
        model_changes.to_champion(
            who,
            self.model,
            f"{who} rejected the promotion of v{state.get('challenger')} after its rollout",
            kind="person",
            run={"dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id},
        )
        reload_serving(self.model, "champion", None, self.serving_url, self.log)
        self.log.info("promotion rejected by %s: all traffic is back on the champion", who)


def rollout_tasks_for(
    task: Any, *, task_id: str, context: dict[str, Any], base: dict[str, Any]
) -> tuple[BaseOperator, BaseOperator]:
    """The compiler's entry: one task, or three with a human approval of the promotion.

    Returns (head, tail): upstream edges land on the head, downstream ones leave the tail,
    which keeps the definition's task id.
    """
    kwargs = task.operator_kwargs()
    approve = kwargs.pop("approve", None)
    given = {key: value for key, value in base.items() if key != "task_id"}
    # A rollout lasts hours: the workflow's compute timeout does not bound it (its own does).
    # A retry would start again from the first step: not unless the definition asks for it.
    base = {**given, "execution_timeout": task.timeout, "retries": task.retries or 0}
    if not approve:
        single = RolloutOperator(task_id=task_id, phase="all", **kwargs, **context, **base)
        return single, single
    steps = RolloutOperator(task_id=f"{task_id}_steps", phase="steps", **kwargs, **context, **base)
    # The approval is an approve task: no compute deadline on people (an inherited one would
    # also make HITLOperator warn at every parse), and the workflow's retries (Airflow 3.3 can
    # fail an approval answered very early, mlwp/cli/run.py; its retry asks again).
    approval_base = {**given, "execution_timeout": None}
    approval = RolloutApprovalOperator(
        task_id=f"{task_id}_approval",
        model=task.model,
        serving_url=kwargs.get("serving_url"),
        input=steps.task_id,
        subject=f"Promote the challenger of {task.model} after its rollout?",
        **approve,
        **context,
        **approval_base,
    )
    promote = RolloutOperator(
        task_id=task_id, phase="promote", input=approval.task_id, **kwargs, **context, **base
    )
    steps >> approval >> promote
    return steps, promote
