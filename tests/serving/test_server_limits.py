"""``python -m serving`` under slow and vanishing clients, and serving HTTPS itself: a real
uvicorn process, raw sockets, a self-signed CA made in the test (issue #19 items 1 and 6,
issue #20 item 7)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_process import free_port
from serving_harness import stop_process
from telco import register_version

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEADER_TIMEOUT = 2
BODY_TIMEOUT = 3
KEEP_ALIVE = 2


@contextmanager
def _serve(
    home: Path, env: dict[str, str], *, verify: Any = None, ready_path: str = "/health/ready"
) -> Iterator[str]:
    """``python -m serving`` on a free port with ``env``; yields its base URL."""
    from serving.keys.store import migrate

    migrate(f"sqlite:///{home / 'serving.db'}")
    port = free_port()
    scheme = "https" if "MLWP_SERVING_TLS_CERT_FILE" in env else "http"
    log = (home / "uvicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "MLWP_SERVING_HOME": str(home),
            "MLWP_SERVING_POLL_INTERVAL_SECONDS": "0",
            "MLWP_SERVING_LOG_LEVEL": "INFO",
            **env,
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"{scheme}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (home / "uvicorn.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}{ready_path}", verify=verify or True).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (home / "uvicorn.log").read_text()[-3000:]
            time.sleep(0.2)
        yield base
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="module")
def slow_client_service(
    mlflow_server: str, model_dirs: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    from serving.keys.store import KeyStore

    home = tmp_path_factory.mktemp("limits-home")
    name = f"churn-limits-{os.getpid()}"
    register_version(mlflow_server, name, model_dirs["v1"], aliases=("champion",))
    env = {
        "MLWP_SERVING_MLFLOW_TRACKING_URI": mlflow_server,
        "MLWP_SERVING_MODELS": f'["{name}"]',
        "MLWP_SERVING_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "MLWP_SERVING_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "MLWP_SERVING_TIMEOUT_KEEP_ALIVE_SECONDS": str(KEEP_ALIVE),
        "MLWP_SERVING_LIMIT_CONCURRENCY": "60",
    }
    with _serve(home, env) as base:
        store = KeyStore(f"sqlite:///{home / 'serving.db'}")
        _, token = store.create("limits", ["admin"], rate_limit="100000/second")
        store.close()
        port = int(base.rsplit(":", 1)[1])
        yield {"base": base, "port": port, "token": token, "model": name, "home": home}


async def _closed_after(reader: asyncio.StreamReader, limit: float) -> tuple[float, bytes]:
    """Read until the server closes; how long it took and what it sent."""
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), limit)
    return time.monotonic() - started, data


@pytest.mark.anyio
async def test_slow_and_idle_connections_are_closed(slow_client_service: dict[str, Any]) -> None:
    port, token = slow_client_service["port"], slow_client_service["token"]
    predict = f"/v1/models/{slow_client_service['model']}/predict"
    stop = asyncio.Event()

    async def silent() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await _closed_after(reader, 20)
        finally:
            writer.close()

    async def slow_headers() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")

        async def drip() -> None:
            while not stop.is_set() and not writer.is_closing():
                await asyncio.sleep(0.5)
                writer.write(b"X")  # never a complete header line
                await writer.drain()

        dripping = asyncio.create_task(drip())
        try:
            return await _closed_after(reader, 20)
        finally:
            dripping.cancel()
            writer.close()

    async def slow_body() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST {predict} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode()
        )

        async def drip() -> None:
            while not stop.is_set() and not writer.is_closing():
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.5)

        dripping = asyncio.create_task(drip())
        try:
            return await _closed_after(reader, 20)
        finally:
            dripping.cancel()
            writer.close()

    async def idle_after_a_request() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b'{"status":"ok"}')
        try:
            return await _closed_after(reader, 20)
        finally:
            writer.close()

    async def normal_client() -> list[int]:
        statuses = []
        async with httpx.AsyncClient(base_url=slow_client_service["base"]) as client:
            while not stop.is_set():
                statuses.append((await client.get("/health/live")).status_code)
                await asyncio.sleep(0.2)
        return statuses

    normal = asyncio.create_task(normal_client())
    results = await asyncio.gather(
        *(silent() for _ in range(10)),
        *(slow_headers() for _ in range(10)),
        *(slow_body() for _ in range(10)),
        *(idle_after_a_request() for _ in range(5)),
    )
    stop.set()
    statuses = await normal
    slack = 3.0  # a loaded two-core machine
    for took, data in results[:10]:
        assert took <= HEADER_TIMEOUT + slack and data == b"", (took, data)
    for took, data in results[10:20]:
        assert took <= HEADER_TIMEOUT + slack, took
        assert data.startswith(b"HTTP/1.1 408 ") and b"header_timeout" in data, data
    for took, data in results[20:30]:
        assert took <= BODY_TIMEOUT + slack, took
        assert data.startswith(b"HTTP/1.1 408 ") and b'"code":"body_timeout"' in data, data
    for took, data in results[30:]:
        assert took <= KEEP_ALIVE + slack and data == b"", (took, data)
    assert statuses and set(statuses) == {200}  # the service kept answering meanwhile


@pytest.mark.anyio
async def test_connections_over_the_limit_get_503(slow_client_service: dict[str, Any]) -> None:
    port = slow_client_service["port"]
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(60)]
    try:
        async with httpx.AsyncClient(base_url=slow_client_service["base"]) as client:
            refused = await client.get("/health/live")
            assert refused.status_code == 503
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.5)
    async with httpx.AsyncClient(base_url=slow_client_service["base"]) as client:
        assert (await client.get("/health/live")).status_code == 200


@pytest.mark.anyio
async def test_a_client_still_sending_gets_its_408_and_a_clean_close(
    slow_client_service: dict[str, Any],
) -> None:
    """A body that keeps coming, too slowly, after its deadline: the client reads the 408
    and then the end of the stream, not a reset (closing with its bytes unread made the
    kernel reset the connection, and the client lost the answer)."""
    port, token = slow_client_service["port"], slow_client_service["token"]
    predict = f"/v1/models/{slow_client_service['model']}/predict"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST {predict} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n".encode()
    )

    async def stream() -> None:
        with contextlib.suppress(OSError):
            while not writer.is_closing():
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.001)  # bytes in flight whenever the server closes

    streaming = asyncio.create_task(stream())
    try:
        took, data = await _closed_after(reader, BODY_TIMEOUT + 10)
    finally:
        streaming.cancel()
        writer.close()
    assert data.startswith(b"HTTP/1.1 408 ") and b'"code":"body_timeout"' in data, data
    assert took <= BODY_TIMEOUT + 3.0, took


@pytest.mark.anyio
async def test_a_client_gone_mid_body_is_logged_as_499_without_a_traceback(
    slow_client_service: dict[str, Any],
) -> None:
    port, token = slow_client_service["port"], slow_client_service["token"]
    predict = f"/v1/models/{slow_client_service['model']}/predict"
    for _ in range(5):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST {predict} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            'Content-Length: 1000\r\n\r\n{"data": [{"tenure": 1'.encode()
        )
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.close()
    await asyncio.sleep(1)
    metrics = httpx.get(f"{slow_client_service['base']}/metrics").text
    assert 'route="/v1/models/{model}/predict",status="499"} 5.0' in metrics, metrics[-2000:]
    logged = (slow_client_service["home"] / "uvicorn.log").read_text()
    assert '"status":499' in logged
    assert "Traceback" not in logged and "ClientDisconnect" not in logged


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write(stem: str, key: Any, cert: x509.Certificate) -> None:
        (directory / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("mlwp test CA"))
        .issuer_name(name("mlwp test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write("ca", ca_key, ca)
    for stem, usage, extra in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH, True),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, False),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(f"mlwp test {stem}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if extra:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        write(stem, key, builder.sign(ca_key, hashes.SHA256()))
    return {stem: directory / f"{stem}.pem" for stem in ("ca", "server", "client")}


def _client_context(certs: dict[str, Path], *, with_client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    if with_client_cert:
        context.load_cert_chain(str(certs["client"]), str(certs["client"].with_suffix(".key")))
    return context


def test_serves_https_with_its_own_certificate(tmp_path: Path) -> None:
    certs = _certificates(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "MLWP_SERVING_MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLWP_SERVING_TLS_CERT_FILE": str(certs["server"]),
        "MLWP_SERVING_TLS_KEY_FILE": str(certs["server"].with_suffix(".key")),
    }
    trusting = _client_context(certs, with_client_cert=False)
    with _serve(home, env, verify=trusting, ready_path="/health/live") as base:
        assert base.startswith("https://")
        assert httpx.get(f"{base}/health/live", verify=trusting).status_code == 200
        with pytest.raises(httpx.ConnectError):  # not trusted without the CA
            httpx.get(f"{base}/health/live")


def test_https_and_client_certificates(tmp_path: Path) -> None:
    certs = _certificates(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "MLWP_SERVING_MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLWP_SERVING_TLS_CERT_FILE": str(certs["server"]),
        "MLWP_SERVING_TLS_KEY_FILE": str(certs["server"].with_suffix(".key")),
        "MLWP_SERVING_TLS_CA_FILE": str(certs["ca"]),
    }
    with_cert = _client_context(certs, with_client_cert=True)
    with _serve(home, env, verify=with_cert, ready_path="/health/live") as base:
        response = httpx.get(f"{base}/health/live", verify=with_cert)
        assert response.status_code == 200
        assert response.headers["strict-transport-security"].startswith("max-age=")
        # no client certificate: the handshake is refused (TLS 1.3 reports it on first read)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{base}/health/live", verify=_client_context(certs, with_client_cert=False))
        # a client that does not trust the CA refuses the server
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health/live")
        # plain HTTP on the HTTPS port gets no HTTP answer
        with pytest.raises(httpx.HTTPError):
            httpx.get(base.replace("https://", "http://") + "/health/live")
