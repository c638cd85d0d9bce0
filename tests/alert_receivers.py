"""Local receivers for the alerts a failing run sends: an SMTP server (aiosmtpd) and an HTTP
receiver standing in for Slack's incoming webhook and PagerDuty's Events API v2, plus the
Airflow connections (environment variables) that point the project's notifiers at them.

The notifiers are the real ones: the SMTP provider's SmtpNotifier speaking SMTP, the Slack
provider's SlackWebhookNotifier posting JSON, the PagerDuty provider's hook and event payload
through the PagerDuty client. Only the far ends are local.
"""

from __future__ import annotations

import email
import email.policy
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from server_process import free_port

SMTP_CONN, SLACK_CONN, PAGERDUTY_CONN = "mlwp_test_smtp", "mlwp_test_slack", "mlwp_test_pagerduty"
RECIPIENT = "ml-team@example.com"


@dataclass
class Received:
    mails: list[EmailMessage] = field(default_factory=list)
    slack: list[dict[str, Any]] = field(default_factory=list)
    pagerduty: list[dict[str, Any]] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)


class _Mailbox:
    def __init__(self, mails: list[EmailMessage]) -> None:
        self.mails = mails

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.mails.append(message)  # type: ignore[arg-type]
        return "250 Message accepted for delivery"


@contextmanager
def alert_receivers() -> Iterator[Received]:
    """Start the receivers; yield what they receive and the AIRFLOW_CONN_* variables."""
    from aiosmtpd.controller import Controller

    received = Received()
    smtp = Controller(_Mailbox(received.mails), hostname="127.0.0.1", port=free_port())
    smtp.start()

    class Hooks(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/v2/enqueue":  # PagerDuty Events API v2
                received.pagerduty.append(body)
                answer = {"status": "success", "message": "Event processed"}
                answer["dedup_key"] = body.get("dedup_key", "")
                self._answer(202, json.dumps(answer).encode(), "application/json")
            else:  # a Slack incoming webhook
                received.slack.append({"path": self.path, **body})
                self._answer(200, b"ok", "text/plain")

        def _answer(self, status: int, payload: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", free_port()), Hooks)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{http.server_address[1]}"
    received.environment = {
        f"AIRFLOW_CONN_{SMTP_CONN.upper()}": json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": smtp.port,
                "extra": {
                    "disable_ssl": True,
                    "disable_tls": True,
                    "from_email": "mlwp@example.com",
                },
            }
        ),
        f"AIRFLOW_CONN_{SLACK_CONN.upper()}": json.dumps(
            {"conn_type": "slackwebhook", "host": base, "password": "/services/T000/B000/XXXX"}
        ),
        f"AIRFLOW_CONN_{PAGERDUTY_CONN.upper()}": json.dumps(
            {"conn_type": "pagerduty_events", "host": base, "password": "integration-key-0"}
        ),
    }
    try:
        yield received
    finally:
        http.shutdown()
        http.server_close()
        smtp.stop()


def alerts_to_receivers() -> Any:
    """A project's ``alerts`` sending each failure to the three receivers."""
    from mlwp.definitions import Alerts

    return Alerts.model_validate(
        {
            "on_failure": [
                {"email": [RECIPIENT], "conn": SMTP_CONN},
                {"slack_webhook": SLACK_CONN},
                {"pagerduty": PAGERDUTY_CONN, "severity": "critical"},
            ]
        }
    )
