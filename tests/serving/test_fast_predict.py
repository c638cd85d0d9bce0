"""The prediction routes answered by mlwp's HTTP protocol (``serving.api.fast_predict``)
against the same requests through the ASGI app: the same bytes (status line, headers, body),
metrics and connection handling, for a success and every error the routes answer.

One real service (a real model from a real MLflow registry, keys in its database) runs
in process under ``serving.server.HttpProtocol`` fed raw requests; each request is sent once
with the fast path on and once with it off, and the two answers must match but for what is
new in each (the generated request id, the timestamp, seconds left in a rate-limit window).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
import pytest
from serving_harness import Transport, running
from telco import register_version, sample_records, set_traffic

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.anyio]

_VOLATILE = [
    (re.compile(rb'"timestamp":"[^"]+"'), b'"timestamp":"T"'),
    (re.compile(rb'("request_id":")[0-9a-f]{32}"'), rb'\1ID"'),
    (re.compile(rb"(x-request-id: )[0-9a-f]{32}"), rb"\1ID"),
    (re.compile(rb"retry in \d+ s"), b"retry in N s"),
    (re.compile(rb'"retry_after":\d+'), b'"retry_after":N'),
    (re.compile(rb"(retry-after: )\d+"), rb"\1N"),
]


def normalised(data: bytes) -> bytes:
    for pattern, replacement in _VOLATILE:
        data = pattern.sub(replacement, data)
    return data


def responses_in(data: bytes) -> int:
    count = 0
    while b"\r\n\r\n" in data:
        head, data = data.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        if len(data) < length:
            break
        data = data[length:]
        count += 1
    return count


class CountingApp:
    """uvicorn's app, counting the requests that reach it."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.calls += 1
        await self.app(scope, receive, send)


class Client:
    """Raw requests to the service under ``HttpProtocol``, fast path on or off."""

    def __init__(self, app: Any) -> None:
        from uvicorn.config import Config
        from uvicorn.server import ServerState

        self.app = app
        self.config = Config(app=app, log_config=None, proxy_headers=True)
        self.config.load()
        self.counting = CountingApp(self.config.loaded_app)
        self.config.loaded_app = self.counting
        self.state = ServerState()

    async def exchange(
        self,
        chunks: list[bytes],
        *,
        fast: bool,
        peer: str = "10.0.0.1",
        answers: int = 1,
        from_loop: bool = False,
    ) -> tuple[bytes, bool, bool]:
        """Send ``chunks`` on a new connection; what came back, whether the connection was
        closed, and whether the fast path answered every request (none reached the app).
        ``from_loop``: each chunk is handed over by the event loop's own callback, outside
        any task, as a real socket's are (else from this test's task)."""
        from serving.server import HttpProtocol

        self.app.state.fast_predict.enabled = fast
        calls = self.counting.calls
        try:
            loop = asyncio.get_running_loop()
            protocol = HttpProtocol(
                config=self.config, server_state=self.state, app_state={}, _loop=loop
            )
            transport = Transport(peer)
            protocol.connection_made(transport)  # type: ignore[arg-type]
            for chunk in chunks:
                if from_loop:
                    loop.call_soon(protocol.data_received, chunk)
                else:
                    protocol.data_received(chunk)
                await asyncio.sleep(0)
            for _ in range(500):
                if responses_in(transport.data) >= answers:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.01)  # a close after the response, a background task
            protocol.connection_lost(None)
        finally:
            self.app.state.fast_predict.enabled = True
        return transport.data, transport.closed, self.counting.calls == calls


def request(
    path: str, body: bytes, headers: dict[str, str] | None = None, *, version: str = "1.1"
) -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: serving", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_fast_path_answers_exactly_as_the_asgi_app(
    make_settings: Any, mlflow_server: str, model_dirs: Any, model_name: str
) -> None:
    register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    set_traffic(mlflow_server, model_name, {"champion": 100})
    settings = make_settings(
        models=[model_name, "registered-nowhere"],
        default_model=model_name,
        inline_rows=2,  # 3 rows and more are scored in the thread pool: the fast path waits
        max_rows=50,
        failed_auth_limit="2/hour",
    )
    records = sample_records(5)
    async with running(settings, wait_ready=False) as svc:  # one of the models never loads
        for _ in range(600):
            state = svc.services.models.get(model_name)
            if state is not None and state.router is not None:
                break
            await asyncio.sleep(0.1)
        client = Client(svc.app)
        key = svc.key(f"model:{model_name}")
        other = svc.key("model:another")
        auth = {"Authorization": f"Bearer {key}", "X-Request-ID": "req-1"}
        predict = f"/v1/models/{model_name}/predict"
        one = orjson.dumps({"data": records[:1]})
        five = orjson.dumps({"data": records, "routing_key": 7})
        cases: dict[str, tuple[list[bytes], bool]] = {
            # name: (chunks, answered by the fast path)
            "one row": ([request(predict, one, auth)], True),
            "five rows, thread pool": ([request(predict, five, auth)], True),
            "default model": ([request("/predict", one, auth)], True),
            "routing header": ([request(predict, one, {**auth, "X-Routing-Key": "u1"})], True),
            "new request id": ([request(predict, one, {"Authorization": f"Bearer {key}"})], True),
            "malformed request id": (
                [request(predict, one, {**auth, "X-Request-ID": "a b"})],
                True,
            ),
            "HTTP/1.0": ([request(predict, one, auth, version="1.0")], True),
            "Connection: close": ([request(predict, one, {**auth, "Connection": "close"})], True),
            "missing key": ([request(predict, one, {"X-Request-ID": "r"})], True),
            "not bearer": ([request(predict, one, {"Authorization": f"Basic {key}"})], True),
            "model scope": ([request(predict, one, {"Authorization": f"Bearer {other}"})], True),
            "unknown model": ([request("/v1/models/nope/predict", one, auth)], True),
            "not loaded": ([request("/v1/models/registered-nowhere/predict", one, auth)], True),
            "empty body": ([request(predict, b"", auth)], True),
            "invalid JSON": ([request(predict, b"{nope", auth)], True),
            "not an object": ([request(predict, b"[1]", auth)], True),
            "no data": ([request(predict, b'{"rows": []}', auth)], True),
            "empty data": ([request(predict, b'{"data": []}', auth)], True),
            "too many rows": ([request(predict, orjson.dumps({"data": records * 11}), auth)], True),
            "bad routing key": (
                [request(predict, b'{"data": [{}], "routing_key": [1]}', auth)],
                True,
            ),
            "invalid record": (
                [request(predict, orjson.dumps({"data": [{"tenure": "x"}]}), auth)],
                True,
            ),
            # left to the ASGI app: a body still arriving, one over the size limit, a GET
            "body in two chunks": (
                [request(predict, one, auth)[:-10], request(predict, one, auth)[-10:]],
                False,
            ),
            "too large": (
                [
                    f"POST {predict} HTTP/1.1\r\nHost: serving\r\nAuthorization: Bearer {key}\r\n"
                    "Content-Length: 99999999\r\n\r\n".encode()
                ],
                False,
            ),
            "wrong method": ([request(predict, one, auth).replace(b"POST", b"GET", 1)], False),
            "trailing slash": ([request(predict + "/", one, auth)], False),
        }
        for name, (chunks, by_fast_path) in cases.items():
            fast, fast_closed, used = await client.exchange(chunks, fast=True)
            slow, slow_closed, _ = await client.exchange(chunks, fast=False)
            assert used == by_fast_path, name
            assert normalised(fast) == normalised(slow), name
            assert fast_closed == slow_closed, name
            assert fast.startswith(b"HTTP/1.1 "), name

        one_status = await client.exchange([request(predict, one, auth)], fast=True)
        assert b'"model_version":"1"' in one_status[0]
        assert b"x-content-type-options: nosniff" in one_status[0]

        # pipelined: two requests in one chunk, answered in order, the second by the app
        both = request(predict, one, auth) + request(predict, five, auth)
        fast, _, _ = await client.exchange([both], fast=True, answers=2)
        slow, _, _ = await client.exchange([both], fast=False, answers=2)
        assert responses_in(fast) == 2 and normalised(fast) == normalised(slow)

        # metrics: the same series counted by both paths
        metrics = svc.services.metrics

        def counted() -> float:
            return sum(
                sample.value
                for family in metrics.requests.collect()
                for sample in family.samples
                if sample.name.endswith("_total")
                and sample.labels.get("route") == "/v1/models/{model}/predict"
                and sample.labels.get("status") == "200"
            )

        before = counted()
        await client.exchange([request(predict, one, auth)], fast=True)
        await client.exchange([request(predict, one, auth)], fast=False)
        assert counted() == before + 2

        # rate limits: a key over its limit, an address over its failed authentications
        for fast_on in (True, False):
            limited = svc.key(f"model:{model_name}", rate_limit="1/hour")
            headers = {"Authorization": f"Bearer {limited}", "X-Request-ID": "r"}
            answers = [
                normalised(
                    (await client.exchange([request(predict, one, headers)], fast=fast_on))[0]
                )
                for _ in range(2)
            ]
            assert b" 429 " in answers[1].split(b"\r\n")[0]
            if fast_on:
                limited_fast = answers
            else:
                assert answers == limited_fast
        for fast_on, peer in ((True, "10.0.0.8"), (False, "10.0.0.9")):
            bad = {"Authorization": "Bearer wrong", "X-Request-ID": "r"}
            answers = [
                normalised(
                    (await client.exchange([request(predict, one, bad)], fast=fast_on, peer=peer))[
                        0
                    ]
                )
                for _ in range(4)
            ]
            assert b"failed_auth_limited" in answers[-1]
            if fast_on:
                refused_fast = answers
            else:
                assert answers == refused_fast

        # an unexpected error: 500 in the schema, the connection closed, both ways
        state = svc.services.models.get(model_name)
        variant = state.variants["champion"]
        original = variant.model.predict

        def broken(data: Any) -> Any:
            raise RuntimeError("boom")

        variant.model.predict = broken
        try:
            for rows in (one, five):
                fast, fast_closed, used = await client.exchange(
                    [request(predict, rows, auth)], fast=True
                )
                slow, slow_closed, _ = await client.exchange(
                    [request(predict, rows, auth)], fast=False
                )
                assert used and b" 500 " in fast.split(b"\r\n")[0]
                assert normalised(fast) == normalised(slow)
                assert fast_closed and slow_closed
                assert b"boom" not in fast
        finally:
            variant.model.predict = original


async def test_fast_path_awaits_redis_and_the_thread_pool_from_the_loops_callbacks(
    make_settings: Any, mlflow_server: str, model_dirs: Any, model_name: str, redis_url: str
) -> None:
    """A socket's data reaches the protocol from the event loop, outside any task; what a
    request awaits there must work: Redis (the shared rate limit, the cache: redis-py's
    timeouts need a current task) and the thread pool (anyio needs one too). Run by hand
    outside a task, the first made Redis look down for good and the second answered 500."""
    register_version(mlflow_server, model_name, model_dirs["v1"], aliases=("champion",))
    settings = make_settings(models=[model_name], redis_url=redis_url, inline_rows=2)
    records = sample_records(5)
    async with running(settings) as svc:
        client = Client(svc.app)
        auth = {"Authorization": f"Bearer {svc.key(f'model:{model_name}')}"}
        predict = f"/v1/models/{model_name}/predict"
        # the model's name is new: the first answer is scored, the second a cache hit
        one = orjson.dumps({"data": records[:1]})
        five = orjson.dumps({"data": records})
        answers = []
        for body in (one, one, five):
            data, _, fast = await client.exchange(
                [request(predict, body, auth)], fast=True, from_loop=True
            )
            assert fast
            assert data.startswith(b"HTTP/1.1 200 "), data[:300]
            answers.append(orjson.loads(data.split(b"\r\n\r\n", 1)[1]))
        assert [a["cached"] for a in answers[:2]] == [False, True]
        assert len(answers[2]["predictions"]) == 5
        samples = svc.services.metrics.redis_errors.collect()[0].samples
        errors = [s for s in samples if s.name.endswith("_total") and s.value]
        assert not errors, errors
