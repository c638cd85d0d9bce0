"""Registry syncs run one at a time in the background; callers start one or join one.

``POST /admin/reload`` and the poller never run ``ModelManager.sync`` themselves: they ask
the ``SyncRunner`` for a sync that *covers* their request, i.e. one that reads the registry
after the request arrived, and get its ``SyncRun`` back at once:

- nothing running: a new sync starts (``started``);
- a sync is running and has already read the registry (it may have missed the caller's
  change): one follow-up sync is queued to start as soon as it ends (``queued``);
- a sync that has not started yet (queued, or started but not yet picked up) exists: the
  caller joins it (``joined``).

So however many requests arrive and however slow a load is, at most one sync runs and at
most one waits, no request is lost, and a caller can wait for its run (``SyncRun.wait``)
without holding anything but an ``asyncio.Event``. The sync itself runs in a thread (it
downloads and loads models) and keeps running if its callers go away.

That thread is always the same one, not any thread of the pool. glibc gives each thread
that allocates its own malloc arena and keeps what is freed there for that arena's reuse;
a load run on whichever pool thread was free left each old version's memory behind in a
different arena, so resident memory grew with every swap until every arena held a copy
(363 -> 611 MB over 15 swaps in a probe, then flat). On one thread, a version loaded
again reuses what the previous one freed.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from serving.models.manager import ModelManager

log = structlog.get_logger("mlwp.serving.syncs")


@dataclass
class SyncRun:
    """One registry sync: who asked first, when it ran, and what it reported."""

    id: int
    trigger: str
    requested_at: str
    started_at: str | None = None
    finished_at: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    joined: int = 0
    _done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until the sync finished (at most ``timeout`` seconds); True when it did."""
        if timeout is None:
            await self._done.wait()
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout)
        return self.done

    def describe(self) -> dict[str, Any]:
        state = "finished" if self.done else ("running" if self.started_at else "queued")
        return {
            "id": self.id,
            "state": state,
            "trigger": self.trigger,
            "requested_at": self.requested_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "joined": self.joined,
            "error": self.error,
        }


class SyncRunner:
    """Serialises registry syncs and coalesces the requests for them (see the module)."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        self.running: SyncRun | None = None
        self.queued: SyncRun | None = None
        self.last: SyncRun | None = None
        self._ids = 0
        self._task: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlwp-sync")
        # An OpenTelemetry tracer when tracing is on (serving.core.tracing): each sync is a
        # span, a child of the request that started it (this task copies its context).
        self.tracer: Any | None = None

    def request(self, trigger: str) -> tuple[SyncRun, str]:
        """A sync that will read the registry after this call, and how it was obtained
        (``started``, ``queued`` or ``joined``). Call on the event loop; never blocks."""
        if self.queued is not None:
            self.queued.joined += 1
            return self.queued, "joined"
        if self.running is not None and self.running.started_at is None:
            self.running.joined += 1
            return self.running, "joined"
        self._ids += 1
        run = SyncRun(self._ids, trigger, _now())
        if self.running is not None:
            self.queued = run
            log.info("sync_queued", sync=run.id, trigger=trigger, behind=self.running.id)
            return run, "queued"
        self.running = run
        self._task = asyncio.get_running_loop().create_task(self._drive())
        return run, "started"

    async def sync(self, trigger: str) -> SyncRun:
        """Request a sync and wait until it finished."""
        run, _ = self.request(trigger)
        await run.wait()
        return run

    def describe(self) -> dict[str, Any]:
        return {
            "running": self.running.describe() if self.running else None,
            "queued": self.queued.describe() if self.queued else None,
            "last": self.last.describe() if self.last else None,
        }

    async def _drive(self) -> None:
        """Run the current sync, then the queued one, until none is left."""
        while (run := self.running) is not None:
            run.started_at = _now()
            span = contextlib.nullcontext() if self.tracer is None else self._span(run)
            try:
                with span:
                    loop = asyncio.get_running_loop()
                    run.result = await loop.run_in_executor(self._thread, self.manager.sync)
            except asyncio.CancelledError:
                run.error = "cancelled: the service is shutting down"
                raise
            except Exception as exc:  # sync reports registry and load errors itself
                run.error = f"{type(exc).__name__}: {exc}"
                log.error("sync_failed", sync=run.id, trigger=run.trigger, error=run.error)
            finally:
                run.finished_at = _now()
                run._done.set()
                self.last = run
                self.running, self.queued = self.queued, None
                if run.trigger != "poll" or run.error is not None:
                    log.info(
                        "sync_finished",
                        sync=run.id,
                        trigger=run.trigger,
                        joined=run.joined,
                        registry_error=(run.result or {}).get("registry_error"),
                        error=run.error,
                    )

    def _span(self, run: SyncRun) -> Any:
        assert self.tracer is not None
        attributes = {"mlwp.sync.id": run.id, "mlwp.sync.trigger": run.trigger}
        return self.tracer.start_as_current_span("serving.registry_sync", attributes=attributes)

    async def close(self) -> None:
        """Stop driving syncs (a sync already in a thread finishes there); wake waiters."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for run in (self.running, self.queued):
            if run is not None and not run.done:
                run.error = run.error or "cancelled: the service is shutting down"
                run._done.set()
        self.running = self.queued = None
        self._thread.shutdown(wait=False, cancel_futures=True)


def _now() -> str:
    return datetime.now(UTC).isoformat()
