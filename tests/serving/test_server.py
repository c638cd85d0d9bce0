"""``python -m serving``: uvicorn with a transport that sends each response in one write."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from serving_harness import Transport

from serving.server import CoalescingTransport

pytestmark = pytest.mark.anyio


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 8000) if name == "sockname" else None


async def test_writes_of_one_loop_step_go_out_as_one() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    assert real.writes == []  # held until the step ends
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert real.writes[-1] == b"next"


async def test_close_sends_what_is_held_first() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"bye")
    transport.close()
    assert real.writes == [b"bye"]
    assert real.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing more to send
    assert real.writes == [b"bye"]


async def test_everything_else_is_the_real_transport() -> None:
    real = RecordingTransport()
    transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    assert transport.get_extra_info("sockname") == ("127.0.0.1", 8000)


async def test_keep_alive_closes_an_idle_connection_with_one_timer() -> None:
    """An idle keep-alive connection is closed ``timeout_keep_alive`` seconds after its last
    response, as uvicorn closes it, but requests in between make no timer of their own."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from serving.server import HttpProtocol

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    config = Config(app=app, log_config=None, timeout_keep_alive=1)
    config.load()
    loop = asyncio.get_running_loop()
    timers = []
    call_later = loop.call_later

    def counted(delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        if getattr(callback, "__self__", None) is not None:  # the protocol's, not sleep()'s
            timers.append(delay)
        return call_later(delay, callback, *args)

    loop.call_later = counted  # type: ignore[method-assign]
    try:
        protocol = HttpProtocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)
        connection = Transport("10.0.0.1")
        protocol.connection_made(connection)  # type: ignore[arg-type]
        timers.clear()  # the new connection's header timer
        started = loop.time()
        for sent in range(1, 6):  # a request every 0.3 s: 1.5 s in all, never idle for 1 s
            protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(50):
                await asyncio.sleep(0.01)
                if connection.data.count(b"HTTP/1.1 200") == sent:
                    break
            await asyncio.sleep(0.3)
            assert not connection.closed
        assert connection.data.count(b"HTTP/1.1 200 OK") == 5
        assert len(timers) <= 3  # one, set again once it found the connection busy
        while not connection.closed and loop.time() - started < 5:
            await asyncio.sleep(0.05)
        idle = loop.time() - started - 1.5
        assert connection.closed and 0.6 <= idle <= 1.6, idle
        protocol.connection_lost(None)
        assert protocol.timeout_keep_alive_task is None
    finally:
        loop.call_later = call_later  # type: ignore[method-assign]
