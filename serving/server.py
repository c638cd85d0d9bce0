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
  than reused, so a client cannot drip a body it was already answered for. Such a close
  lingers (the answer, then a FIN, then what still arrives dropped for up to
  ``LINGER_SECONDS``): closed at once, the kernel reset the connection and the client could
  lose its 408.
- ``timeout_keep_alive_seconds``, ``limit_concurrency`` and TLS (``tls_*``) from the
  ``MLWP_SERVING_*`` settings, handed to uvicorn as its ``UVICORN_*`` variables (a key's
  password never shows on a command line); uvicorn options given on the command line win.
- no ``server: uvicorn`` header (it tells a scanner what to try).

Every other option is uvicorn's own: ``python -m serving --host 0.0.0.0 --port 8000``.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import ssl
from collections.abc import Callable
from typing import Any

from starlette.types import Scope
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from serving.api.fast_predict import fast_predict_of
from serving.core.config import ServingSettings, get_settings

APP = "serving.main:app"
PROTOCOL = "serving.server:HttpProtocol"


class CoalescingTransport:
    """A transport whose writes within one event-loop step go out as one write."""

    __slots__ = ("_close", "_loop", "_pending", "_transport")

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        close: Callable[[], None] | None = None,
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None
        self._close = close or transport.close  # how the protocol closes (see HttpProtocol)

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
        self._close()

    def is_closing(self) -> bool:
        # asked three times per request: here, not through __getattr__'s failed lookup
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        # everything else (flow control, extra info, abort) is the real transport's
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a :class:`CoalescingTransport`, with a header
    timeout (see the module)."""

    _socket: asyncio.Transport  # the connection's own transport, under the coalescing one

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = get_settings().header_timeout_seconds
        self._header_timer: asyncio.TimerHandle | None = None
        self._request_started = False
        # the prediction routes answered here (serving.api.fast_predict), when the app has them
        self._fast = fast_predict_of(self.app)
        if self.config.reset_contextvars:
            self._fast = None  # each request's own empty context is the ASGI task's
        self._proxy = _proxy_headers_of(self.app)
        self._trusted_proxy = False
        self._feeding = False
        # a prediction request held while its chunk is parsed: (cycle, route scope)
        self._held: tuple[RequestResponseCycle, Scope] | None = None
        self._lingering: asyncio.TimerHandle | None = None  # see _close_lingering
        # when the connection last became idle (its response sent, nothing more arrived);
        # None while a request is in progress (see _arm_keep_alive)
        self._idle_since: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._socket = transport
        coalescing = CoalescingTransport(transport, self.loop, close=self._close)
        super().connection_made(coalescing)  # type: ignore[arg-type]
        self._arm_header_timer()
        client = self.client[0] if self.client else None
        self._trusted_proxy = self._proxy is not None and client in self._proxy.trusted_hosts

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        if self._lingering is not None:
            self._lingering.cancel()
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:
            return  # answered and closing: the rest of what the client sends is dropped
        self._feeding = True
        try:
            super().data_received(data)
        finally:
            self._feeding = False
        if self._held is not None:
            self._answer_held()
        # A request whose headers came whole in this chunk (nearly all of them) is parsed
        # by now and needs no timer; one that stopped halfway gets it here, a few
        # microseconds after its first byte, not a timer set and cancelled per request.
        if self._request_started and self._header_timer is None:
            self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_started = True

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        self._request_started = False
        super().on_headers_complete()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # A prediction request is held until the chunk that brought its headers is parsed:
        # with its whole body it is answered here, else it goes to the app like any other.
        if self._feeding and self._fast is not None and self._held is None and app is self.app:
            scope: Any = cycle.scope
            route_scope = self._fast.match(scope, trusted_proxy=self._trusted_proxy)
            if route_scope is not None and not cycle.waiting_for_100_continue:
                self._held = (cycle, route_scope)
                return
        super()._start_asgi_task(cycle, app)

    def _answer_held(self) -> None:
        assert self._held is not None and self._fast is not None
        (cycle, route_scope), self._held = self._held, None
        if cycle.more_body or self.transport.is_closing():
            super()._start_asgi_task(cycle, self.app)
            return
        context = contextvars.copy_context()  # the request's log context stays its own

        def respond(
            status: int,
            headers: list[tuple[bytes, bytes]],
            body: bytes | memoryview,
            rendered: bytes,
        ) -> None:
            self._write_response(cycle, status, headers, body, rendered)

        def close() -> None:
            self.transport.close()

        scope: Any = cycle.scope
        answer = self._fast(scope, bytes(cycle.body), route_scope, respond, close)
        # A task of its own from the first step: the loop calls this protocol outside any
        # task, and what a request may await needs one (asyncio.timeout in redis-py's
        # commands, anyio's thread pool for batches above inline_rows). Run by hand, its
        # first step made every Redis call fail ("Timeout should be used inside a task",
        # raised by redis-py as ConnectionError: the shared rate limit and the cache were
        # bypassed for good) and every thread-pool batch answer 500.
        task = self.loop.create_task(answer, context=context)
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def _write_response(
        self,
        cycle: RequestResponseCycle,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes | memoryview,
        rendered: bytes = b"",
    ) -> None:
        """What uvicorn's ``RequestResponseCycle.send`` writes for a response with a
        Content-Length, sent whole (the headers are the service's own: valid, lower case;
        ``rendered``: header lines after them, other than ``connection``)."""
        if cycle.disconnected:
            return
        content: list[bytes | memoryview] = [STATUS_LINE[status]]
        has_connection_close = False
        for name, value in (*cycle.default_headers, *headers):
            if name == b"connection" and b"close" in [
                token.lower().strip() for token in value.split(b",")
            ]:
                cycle.keep_alive = False
                has_connection_close = True
            content.extend((name, b": ", value, b"\r\n"))
        content.append(rendered)
        if not cycle.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        content.append(b"\r\n")
        content.append(body)
        cycle.response_started = cycle.response_complete = True
        if cycle.access_log:
            cycle.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(cycle.scope),
                cycle.scope["method"],
                get_path_with_query_string(cycle.scope),
                cycle.scope["http_version"],
                status,
            )
        self.transport.write(b"".join(content))
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            # answered before its body arrived: the rest cannot be skipped, only read
            self.transport.close()
        # uvicorn's, with the keep-alive timer of _arm_keep_alive
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._idle_since = None
        self.flow.resume_reading()
        if self.pipeline:  # pipelined requests: the next one starts
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._arm_keep_alive()

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn cancels its keep-alive timer whenever data arrives; here the connection
        # is only marked busy, and the timer stays (see _arm_keep_alive)
        self._idle_since = None

    def _arm_keep_alive(self) -> None:
        """Close the connection if it stays idle for ``timeout_keep_alive`` seconds. uvicorn
        sets a timer when each response is sent and cancels it when the next request
        arrives (a timer made and cancelled per request: 8,000 instructions, ~2 % of a
        one-row prediction); this connection keeps one timer, which on firing closes the
        connection if it has been idle that long, and otherwise sets itself again for
        the time left (a request in progress: its response sets it)."""
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._keep_alive_expired
            )

    def _keep_alive_expired(self) -> None:
        self.timeout_keep_alive_task = None
        if self._idle_since is None:
            return  # a request in progress
        left = self._idle_since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self.timeout_keep_alive_task = self.loop.call_later(left, self._keep_alive_expired)
        else:
            self.timeout_keep_alive_handler()

    def _close(self) -> None:
        """Every close of the connection (the transport's ``close``). One whose client may
        still be sending (a request answered before its body or headers were whole, as a
        408 is) is closed lingering, so that the client gets the answer: closing a socket
        with unread data makes the kernel reset the connection, and a client that receives
        the reset may lose the answer. The answer goes out with a FIN (the write side shut),
        what arrives after it is dropped, and the socket closes when the client closes its
        side or after ``LINGER_SECONDS`` (nginx's lingering close). TLS has no half-close."""
        socket = self._socket
        cycle = self.cycle
        sending = self._request_started or (cycle is not None and cycle.more_body)
        if self._lingering is not None:
            return  # closing already: the timer or the client ends it
        if not sending or not socket.can_write_eof():
            socket.close()
            return
        if socket.is_closing():
            return
        socket.write_eof()
        self._lingering = self.loop.call_later(LINGER_SECONDS, socket.close)

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


def _proxy_headers_of(app: Any) -> ProxyHeadersMiddleware | None:
    """uvicorn's X-Forwarded-* middleware around the app, when it is on."""
    while app is not None:
        if isinstance(app, ProxyHeadersMiddleware):
            return app
        app = getattr(app, "app", None)
    return None


# how long a connection answered while its client was still sending is kept to drop what
# arrives (nginx's lingering_timeout)
LINGER_SECONDS = 5.0

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
