"""Failure and retry notifiers of generated DAGs, built from a project's ``alerts``.

Parsing must stay cheap and offline, so the notifier attached to a DAG only records what to
send; the provider's notifier (``SmtpNotifier``, ``SlackNotifier``, ``SlackWebhookNotifier``)
is imported and built when an alert actually fires. A bare connection id is resolved the same
way: its connection type is read when the alert fires, since parsing has no database access.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook, BaseNotifier
from airflow.sdk.exceptions import AirflowException

FAILURE_TEXT = (
    "mlwp: task {{ ti.task_id }} of {{ ti.dag_id }} failed "
    "(run {{ run_id }}, try {{ ti.try_number }})."
)
RETRY_TEXT = (
    "mlwp: task {{ ti.task_id }} of {{ ti.dag_id }} is up for retry "
    "(run {{ run_id }}, try {{ ti.try_number }})."
)

# Connection types (as Airflow names them) and the notifier each one gets.
_CONN_TYPE_KINDS = {
    "slack": "slack",
    "slackwebhook": "slack_webhook",
    "slack_incoming_webhook": "slack_webhook",
    "smtp": "email",
    "email": "email",
}


class AlertNotifier(BaseNotifier):
    """Send one alert through a provider notifier chosen by ``kind``, built only when called.

    ``kind`` is ``slack``, ``slack_webhook``, ``email`` or ``connection`` (a bare connection
    id whose type decides). Email through a bare SMTP connection needs the recipients in the
    connection's extra field ``{"to": [...]}``.
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
    ) -> None:
        super().__init__()
        if kind not in ("slack", "slack_webhook", "email", "connection"):
            raise AirflowException(
                f"unknown alert kind {kind!r}; kinds are slack, slack_webhook, email, connection"
            )
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

        return SmtpNotifier(
            to=to or [],
            smtp_conn_id=self.conn_id,
            subject=self.text,
            html_content=f"<p>{self.text}</p>",
        )

    def notify(self, context: Any) -> None:
        self.build()(context)


def alert_notifiers(specs: list[Any], text: str) -> list[AlertNotifier]:
    """Turn the notifier entries of a project's ``alerts`` into notifiers."""
    from mlwp.definitions import EmailNotifierSpec, SlackNotifierSpec, SlackWebhookNotifierSpec

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
        elif isinstance(spec, EmailNotifierSpec):
            notifiers.append(
                AlertNotifier(kind="email", conn_id=spec.conn, to=list(spec.email), text=text)
            )
    return notifiers
