"""How the service runs: ``python -m serving [uvicorn options]``.

uvicorn with settings of ours:

- :class:`HttpProtocol`, uvicorn's httptools protocol sending each response in one write.
  uvicorn writes the status line and headers when the application sends
  ``http.response.start`` and the body on ``http.response.body``: two system calls and two
  TCP segments per response. On a one-row prediction the second write cost more CPU than
  routing, authentication and metrics together. :class:`CoalescingTransport` holds the
  writes of one event-loop step and sends them together at the end of it (what Node.js
  does with ``socket.cork()`` and ``process.nextTick(uncork)``).
- slow clients are timed out. uvicorn closes a keep-alive connection that stays idle, but
  a new connection that sends nothing, or a request whose headers come one byte every few
  seconds, is held for ever (a probe held 200 connections for 60 s that way). The protocol
  gives a request ``header_timeout_seconds`` from its first byte (a new connection: from its
  opening) to the end of its headers, then answers 408 and closes. The body's own deadline
  is the application's (``serving.api.middleware``: 408 in the error schema, any server);
  and a connection whose response is sent while its body is still arriving is closed rather
  than reused, so a client cannot drip a body it was already answered for.
- ``timeout_keep_alive_seconds``, ``limit_concurrency`` and TLS (``tls_*``) from the
  ``MLWP_SERVING_*`` settings, handed to uvicorn as its ``UVICORN_*`` variables (a key's
  password never shows on a command line); uvicorn options given on the command line win.
- no ``server: uvicorn`` header (it tells a scanner what to try).

Every other option is uvicorn's own: ``python -m serving --host 0.0.0.0 --port 8000``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.core.config import ServingSettings, get_settings

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
    """uvicorn's httptools protocol over a :class:`CoalescingTransport`, with a header
    timeout (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = get_settings().header_timeout_seconds
        self._header_timer: asyncio.TimerHandle | None = None
        self._request_started = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_started = True
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        self._request_started = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            # answered before its body arrived: the rest cannot be skipped, only read
            self.transport.close()
        super().on_response_complete()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self._header_timeout, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._request_started:  # a partial request is owed an answer (as Node.js does)
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()


_TIMEOUT_BODY = (
    b'{"error":{"code":"header_timeout","message":"request headers not received in time"}}'
)
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)

_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def uvicorn_environment(settings: ServingSettings) -> dict[str, str]:
    """The ``UVICORN_*`` variables that carry the service's connection and TLS settings."""
    env = {"UVICORN_TIMEOUT_KEEP_ALIVE": str(settings.timeout_keep_alive_seconds)}
    if settings.limit_concurrency is not None:
        env["UVICORN_LIMIT_CONCURRENCY"] = str(settings.limit_concurrency)
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        env["UVICORN_SSL_CERTFILE"] = str(settings.tls_cert_file)
        env["UVICORN_SSL_KEYFILE"] = str(settings.tls_key_file)
        if settings.tls_key_password is not None:
            env["UVICORN_SSL_KEYFILE_PASSWORD"] = settings.tls_key_password.get_secret_value()
        if settings.tls_ca_file is not None:
            env["UVICORN_SSL_CA_CERTS"] = str(settings.tls_ca_file)
        env["UVICORN_SSL_CERT_REQS"] = str(int(_CERT_REQS[settings.client_cert_mode]))
    return env


def main(argv: list[str] | None = None) -> None:
    """Run uvicorn on the service with mlwp's protocol; ``argv`` are uvicorn options."""
    import sys

    import uvicorn.main

    for name, value in uvicorn_environment(get_settings()).items():
        os.environ.setdefault(name, value)
    args = sys.argv[1:] if argv is None else argv
    uvicorn.main.main(
        args=[APP, "--http", PROTOCOL, "--no-server-header", *args],
        prog_name="python -m serving",
    )
