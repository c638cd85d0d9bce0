"""``airflow api-server`` for the embedded SQLite database: the action log written off the loop.

Airflow's REST API records each change (a trigger, a pause, a clear, an answer) in its ``log``
table from an ``async`` FastAPI dependency,
``airflow.api_fastapi.logging.decorators.action_logging``, which commits through a synchronous
session on the event loop's thread. On PostgreSQL that insert waits for no other transaction.
On SQLite every write waits for the one write lock, and the api-server's synchronous requests
(a task's execution-API calls, another trigger) hold that lock until FastAPI closes their
session, which it does from the event loop. A change arriving while one of them holds it
therefore blocks the loop waiting for a lock only the loop can release: every request of the
api-server stalls for the busy timeout (30 s), then the change fails with 500 "database is
locked". It happened to a user's trigger while the scheduler's first tasks were starting.

``mlwp up`` starts the api-server through this module when Airflow's database is SQLite: it
wraps each action-logging dependency so that the request body, the one thing it awaits, is
read on the loop, and the unchanged dependency then runs to its end in a worker thread, where
waiting for the lock holds up nobody else. Airflow's routes bind ``action_logging`` when they
are imported, so the wrapper is installed before Airflow's command line builds the app.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Coroutine
from typing import Any


class ActionLoggingChanged(RuntimeError):
    """Airflow's action logging now awaits more than the request body: this module is stale."""


def _run_to_end(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (its awaits are all already resolved) to its end."""
    try:
        coroutine.send(None)
    except StopIteration as finished:
        return finished.value
    coroutine.close()
    raise ActionLoggingChanged(
        "Airflow's action_logging dependency awaited something other than the request body; "
        "operators/api_server.py must be updated for this Airflow version"
    )


def off_the_loop(action_logging: Callable[..., Any]) -> Callable[..., Any]:
    """``action_logging``, its dependency run in a worker thread once the body is read."""
    import anyio.to_thread

    @functools.wraps(action_logging)
    def make(*args: Any, **kwargs: Any) -> Any:
        log_action = action_logging(*args, **kwargs)

        # FastAPI reads the parameters (request, session, user) from the wrapped function.
        @functools.wraps(log_action)
        async def log_action_in_a_thread(**dependencies: Any) -> Any:
            # Starlette keeps the body once read: the dependency's own awaits of
            # request.body() and request.json() then finish without suspending.
            await dependencies["request"].body()
            return await anyio.to_thread.run_sync(_run_to_end, log_action(**dependencies))

        return log_action_in_a_thread

    return make


def install() -> None:
    """Replace Airflow's ``action_logging`` before any route module imports it."""
    from airflow.api_fastapi.logging import decorators

    if not getattr(decorators.action_logging, "__wrapped__", None):
        decorators.action_logging = off_the_loop(decorators.action_logging)


def main() -> None:
    """``python -m operators.api_server api-server ...``: Airflow's command line, wrapper on."""
    install()
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", *sys.argv[1:]]
    airflow_main()


if __name__ == "__main__":
    main()
