"""How the service runs: ``python -m serving [uvicorn options]``.

uvicorn with two settings of ours:

- :class:`HttpProtocol`, uvicorn's httptools protocol sending each response in one write.
  uvicorn writes the status line and headers when the application sends
  ``http.response.start`` and the body on ``http.response.body``: two system calls and two
  TCP segments per response. On a one-row prediction the second write cost more CPU than
  routing, authentication and metrics together. :class:`CoalescingTransport` holds the
  writes of one event-loop step and sends them together at the end of it (what Node.js
  does with ``socket.cork()`` and ``process.nextTick(uncork)``).
- no ``server: uvicorn`` header (it tells a scanner what to try).

Every other option is uvicorn's own: ``python -m serving --host 0.0.0.0 --port 8000``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

APP = "serving.main:app"
PROTOCOL = "serving.server:HttpProtocol"


class CoalescingTransport:
    """A transport whose writes within one event-loop step go out as one write."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        # everything else (flow control, extra info, abort) is the real transport's
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    """Run uvicorn on the service with mlwp's protocol; ``argv`` are uvicorn options."""
    import sys

    import uvicorn.main

    args = sys.argv[1:] if argv is None else argv
    uvicorn.main.main(
        args=[APP, "--http", PROTOCOL, "--no-server-header", *args],
        prog_name="python -m serving",
    )
