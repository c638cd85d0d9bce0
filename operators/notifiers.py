"""Failure and retry notifiers of generated DAGs, built from a project's ``alerts``.

Parsing must stay cheap and offline, so the notifier attached to a DAG only records what to
send; the provider's notifier (``SmtpNotifier``, ``SlackNotifier``, ``SlackWebhookNotifier``,
the PagerDuty provider's Events API hook) is imported and built when an alert actually fires.
A bare connection id is resolved the same way: its connection type is read when the alert
fires, since parsing has no database access.
"""

from __future__ import annotations

import html
from typing import Any

from airflow.sdk import BaseHook, BaseNotifier
from airflow.sdk.exceptions import AirflowException

# Every alert names the project, workflow, task and run and links the task's log (dag ids of
# generated DAGs are <project>.<workflow>); the error follows, which for a failed validation
# lists each failed expectation (mlwp.data.validation.ValidationReport.failure_message).
_WHERE = (
    "project {{ ti.dag_id.split('.', 1)[0] }}, workflow {{ ti.dag_id.split('.', 1)[-1] }}, "
    "task {{ ti.task_id }}, run {{ run_id }}, try {{ ti.try_number }}"
)
_DETAILS = "\nLog: {{ ti.log_url }}{% if exception %}\nError: {{ exception }}{% endif %}"
FAILURE_TEXT = "mlwp: task failed: " + _WHERE + _DETAILS
RETRY_TEXT = "mlwp: task up for retry: " + _WHERE + _DETAILS

# Connection types (as Airflow names them) and the notifier each one gets.
_CONN_TYPE_KINDS = {
    "slack": "slack",
    "slackwebhook": "slack_webhook",
    "slack_incoming_webhook": "slack_webhook",
    "smtp": "email",
    "email": "email",
    "pagerduty_events": "pagerduty",
}
_KINDS = ("slack", "slack_webhook", "email", "pagerduty", "connection")


class AlertNotifier(BaseNotifier):
    """Send one alert through a provider notifier chosen by ``kind``, built only when called.

    ``kind`` is ``slack``, ``slack_webhook``, ``email``, ``pagerduty`` or ``connection`` (a
    bare connection id whose type decides). Email through a bare SMTP connection needs the
    recipients in the connection's extra field ``{"to": [...]}``.
    """

    template_fields = ("text",)

    def __init__(
        self,
        *,
        kind: str,
        conn_id: str,
        text: str = FAILURE_TEXT,
        channel: str | None = None,
        to: list[str] | None = None,
        severity: str = "error",
    ) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise AirflowException(f"unknown alert kind {kind!r}; kinds are {', '.join(_KINDS)}")
        self.severity = severity
        self.kind = kind
        self.conn_id = conn_id
        self.text = text
        self.channel = channel
        self.to = to

    def _resolve_kind(self) -> tuple[str, list[str] | None]:
        if self.kind != "connection":
            return self.kind, self.to
        connection = BaseHook.get_connection(self.conn_id)
        conn_type = (connection.conn_type or "").lower()
        kind = _CONN_TYPE_KINDS.get(conn_type)
        if kind is None:
            raise AirflowException(
                f"alert connection '{self.conn_id}' has type '{conn_type}'; an alert "
                f"connection is one of: {', '.join(sorted(_CONN_TYPE_KINDS))}"
            )
        to = connection.extra_dejson.get("to") if kind == "email" else None
        if kind == "email" and not to:
            raise AirflowException(
                f"alert connection '{self.conn_id}' is SMTP but its extra has no 'to' "
                "recipients; write {email: [...], conn: ...} in the project's alerts instead"
            )
        return kind, [to] if isinstance(to, str) else to

    def build(self) -> BaseNotifier:
        """Return the provider notifier this alert delegates to."""
        kind, to = self._resolve_kind()
        if kind == "slack":
            from airflow.providers.slack.notifications.slack import SlackNotifier

            return SlackNotifier(
                slack_conn_id=self.conn_id, text=self.text, channel=self.channel or "#general"
            )
        if kind == "slack_webhook":
            from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

            return SlackWebhookNotifier(slack_webhook_conn_id=self.conn_id, text=self.text)
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        subject, _, _ = self.text.partition("\n")
        return SmtpNotifier(
            to=to or [],
            smtp_conn_id=self.conn_id,
            subject=subject,
            html_content=f"<pre>{html.escape(self.text)}</pre>",
        )

    def notify(self, context: Any) -> None:
        if self._resolve_kind()[0] == "pagerduty":
            self._page(context)
            return
        self.build()(context)

    def _page(self, context: Any) -> None:
        """Trigger a PagerDuty event through the PagerDuty provider's Events API v2 hook.

        The provider's async hook posts to its ``base_url``: events.pagerduty.com unless the
        connection has a host (the EU region's https://events.eu.pagerduty.com, or a relay),
        which the provider's own ``PagerdutyNotifier`` cannot reach (its client is fixed to
        the US endpoint and to https).
        """
        import asyncio

        from airflow.providers.pagerduty.hooks.pagerduty_events import PagerdutyEventsAsyncHook

        hook = PagerdutyEventsAsyncHook(pagerduty_events_conn_id=self.conn_id)
        host = (BaseHook.get_connection(self.conn_id).host or "").strip()
        if host:
            hook.base_url = host.rstrip("/")
        ti = context["ti"]
        project, _, workflow = ti.dag_id.partition(".")
        summary, _, _ = self.text.partition("\n")
        exception = context.get("exception")
        event = hook.send_event(
            summary=summary[:1024],
            severity=self.severity,
            source="mlwp",
            component=ti.task_id,
            group=ti.dag_id,
            dedup_key=f"{ti.dag_id}/{context['run_id']}/{ti.task_id}",
            custom_details={
                "project": project,
                "workflow": workflow,
                "task": ti.task_id,
                "run_id": context["run_id"],
                "try_number": ti.try_number,
                "log_url": ti.log_url,
                "error": str(exception) if exception else None,
            },
            links=[{"href": ti.log_url, "text": "Task log in Airflow"}],
        )
        asyncio.run(event)


def alert_notifiers(specs: list[Any], text: str) -> list[AlertNotifier]:
    """Turn the notifier entries of a project's ``alerts`` into notifiers."""
    from mlwp.definitions import (
        EmailNotifierSpec,
        PagerDutyNotifierSpec,
        SlackNotifierSpec,
        SlackWebhookNotifierSpec,
    )

    notifiers: list[AlertNotifier] = []
    for spec in specs:
        if isinstance(spec, str):
            notifiers.append(AlertNotifier(kind="connection", conn_id=spec, text=text))
        elif isinstance(spec, SlackNotifierSpec):
            notifiers.append(
                AlertNotifier(kind="slack", conn_id=spec.slack, channel=spec.channel, text=text)
            )
        elif isinstance(spec, SlackWebhookNotifierSpec):
            notifiers.append(
                AlertNotifier(kind="slack_webhook", conn_id=spec.slack_webhook, text=text)
            )
        elif isinstance(spec, PagerDutyNotifierSpec):
            notifiers.append(
                AlertNotifier(
                    kind="pagerduty", conn_id=spec.pagerduty, severity=spec.severity, text=text
                )
            )
        elif isinstance(spec, EmailNotifierSpec):
            notifiers.append(
                AlertNotifier(kind="email", conn_id=spec.conn, to=list(spec.email), text=text)
            )
    return notifiers
