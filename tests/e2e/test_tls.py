"""TLS terminated in the workers, with certificates made here by trustme and real
clients: httpx, curl, `openssl s_client` and the websockets library. Also what a
hostile or careless client does: plain HTTP to the TLS port, a handshake that never
finishes, no client certificate where one is required."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import trustme

from tests.conftest import ensure_installed
from tests.helpers import RRProxy

SCOPE_APP = """\
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"]
            await send({"type": kind + ".complete"})
            if kind == "lifespan.shutdown":
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": scope["scheme"]})
        await send({"type": "websocket.close"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = {"scheme": scope["scheme"], "length": len(body),
              "http_version": scope["http_version"]}
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": __import__("json").dumps(answer).encode()})
"""

WSGI_APP = """\
def app(environ, start_response):
    start_response("200 OK", [("content-type", "text/plain")])
    return [environ["wsgi.url_scheme"].encode()]
"""


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@example.test")
    paths = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "server.crt",
        "key": tmp_path / "server.key",
        "client": tmp_path / "client.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    (tmp_path / "scopeapp.py").write_text(SCOPE_APP)
    (tmp_path / "wsgiapp.py").write_text(WSGI_APP)
    return paths


def _tls_args(pki: dict[str, Path], *extra: str) -> tuple[str, ...]:
    return (
        "--ssl-certfile", str(pki["cert"]), "--ssl-keyfile", str(pki["key"]),
        "--app-dir", str(pki["ca"].parent), *extra,
    )  # fmt: skip


def _trust(pki: dict[str, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki["ca"]))


def _peer_serial(port: int, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


@pytest.mark.usefixtures("each_loop")
def test_httpx_over_tls_on_every_loop(pki: dict[str, Path]):
    with RRProxy(*_tls_args(pki), "scopeapp:app", workers=2) as server:
        url = f"https://127.0.0.1:{server.port}/"
        with httpx.Client(verify=_trust(pki), timeout=10) as client:
            # Several requests, bodies both ways, on kept-alive TLS connections.
            for size in (0, 10, 200_000):
                response = client.post(url, content=b"x" * size)
                assert response.status_code == 200
                assert response.json() == {"scheme": "https", "length": size,
                                           "http_version": "1.1"}  # fmt: skip
            assert response.http_version == "HTTP/1.1"
        # A client that does not trust the CA is refused by its own check.
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, timeout=10)


def test_curl_and_alpn(pki: dict[str, Path]):
    curl = ensure_installed("curl", "curl")
    with RRProxy(*_tls_args(pki), "scopeapp:app", workers=1) as server:
        result = subprocess.run(
            [curl, "-sv", "--http1.1", "--cacert", str(pki["ca"]),
             f"https://127.0.0.1:{server.port}/"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["scheme"] == "https"
        assert "ALPN" in result.stderr and "http/1.1" in result.stderr
        # Asking only for h2 gets no protocol, not a broken connection: the server
        # speaks http/1.1, and curl falls back to it.
        result = subprocess.run(
            [curl, "-s", "--http2", "--cacert", str(pki["ca"]),
             f"https://127.0.0.1:{server.port}/"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0 and json.loads(result.stdout)["http_version"] == "1.1"


def test_openssl_handshake_and_handshake_timeout(pki: dict[str, Path]):
    openssl = ensure_installed("openssl", "openssl")
    args = _tls_args(pki, "--ssl-handshake-timeout", "1", "--header-timeout", "30")
    with RRProxy(*args, "scopeapp:app", workers=1) as server:
        finished = subprocess.run(
            [openssl, "s_client", "-connect", f"127.0.0.1:{server.port}", "-alpn", "http/1.1",
             "-CAfile", str(pki["ca"]), "-verify_return_error", "-ign_eof"],
            input="GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert finished.returncode == 0, finished.stderr
        assert "ALPN protocol: http/1.1" in finished.stdout  # what the server chose
        assert '"scheme": "https"' in finished.stdout

        # s_client sends its ClientHello and then waits for ever if the reply never
        # comes; here the roles turn: clients that connect and never finish the
        # handshake (one silent, one stopping halfway through a ClientHello) are cut
        # off after --ssl-handshake-timeout, and others are served meanwhile.
        hello = _client_hello()
        stalled = []
        for cut in (0, len(hello) // 2):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(hello[:cut])
            stalled.append(sock)
        idle = subprocess.Popen(  # a real openssl that is stopped before it finishes
            [openssl, "s_client", "-connect", f"127.0.0.1:{server.port}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        started = time.monotonic()
        for sock in stalled:
            sock.settimeout(10)
            assert sock.recv(4096) == b""  # closed by the server
        took = time.monotonic() - started
        assert 0.5 < took < 5, took
        with httpx.Client(verify=_trust(pki), timeout=10) as client:
            assert client.get(f"https://127.0.0.1:{server.port}/").status_code == 200
        idle.kill()
        idle.wait(10)
        for sock in stalled:
            sock.close()


def _client_hello() -> bytes:
    """The first bytes a real TLS client sends."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="x")
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_plain_http_to_the_tls_port_is_closed_and_the_worker_lives(pki: dict[str, Path]):
    with RRProxy(*_tls_args(pki), "scopeapp:app", workers=1) as server:
        pid = server.pids[1]
        for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello",
                     b"\x00" * 10_000):  # fmt: skip
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(junk)
                try:
                    while sock.recv(4096):
                        pass
                except ConnectionResetError:
                    pass
        assert httpx.get(f"https://127.0.0.1:{server.port}/", verify=_trust(pki)).status_code == 200
        assert server.pids[1] == pid and "Traceback" not in server.output()


def test_client_certificates_required(pki: dict[str, Path]):
    args = _tls_args(pki, "--ssl-ca-certs", str(pki["ca"]), "--ssl-cert-reqs", "required")
    with RRProxy(*args, "scopeapp:app", workers=1) as server:
        url = f"https://127.0.0.1:{server.port}/"
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, verify=_trust(pki), timeout=10)
        context = ssl.create_default_context(cafile=str(pki["ca"]))
        context.load_cert_chain(str(pki["client"]))
        assert httpx.get(url, verify=context, timeout=10).status_code == 200


def test_encrypted_key_with_its_password(pki: dict[str, Path], tmp_path: Path):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki["key"].read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"open sesame"),
    ))  # fmt: skip
    base = ("--ssl-certfile", str(pki["cert"]), "--ssl-keyfile", str(locked),
            "--app-dir", str(tmp_path))  # fmt: skip
    wrong = subprocess.run(
        [*RRProxy(*base, "--ssl-keyfile-password", "nope", "scopeapp:app").argv],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    assert wrong.returncode == 2 and "--ssl-certfile/--ssl-keyfile" in wrong.stderr
    assert "nope" not in wrong.stderr
    with RRProxy(*base, "--ssl-keyfile-password", "open sesame", "scopeapp:app",
                 workers=1) as server:  # fmt: skip
        assert (
            httpx.get(f"https://127.0.0.1:{server.port}/", verify=_trust(pki)).json()["scheme"]
            == "https"
        )
        assert "open sesame" not in server.output()


def test_missing_certificate_file_exits_2(tmp_path: Path):
    result = subprocess.run(
        RRProxy("--ssl-certfile", str(tmp_path / "none.pem"), "tests.apps.probe:handler").argv,
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2 and "--ssl-certfile" in result.stderr
    assert "Traceback" not in result.stderr


def test_sighup_reloads_renewed_certificates(pki: dict[str, Path]):
    with RRProxy(*_tls_args(pki), "scopeapp:app", workers=2) as server:
        first = _peer_serial(server.port, pki["ca"])
        # Renewal: a new certificate (from a new CA, so the check below can only
        # pass against the new one), written over the old files.
        ca = trustme.CA()
        new = ca.issue_cert("127.0.0.1")
        new.cert_chain_pems[0].write_to_path(str(pki["cert"]))
        new.private_key_pem.write_to_path(str(pki["key"]))
        ca.cert_pem.write_to_path(str(pki["ca"]))
        import signal

        server.signal(signal.SIGHUP)
        server.wait_for(r"reload complete: 2 workers replaced")
        second = _peer_serial(server.port, pki["ca"])  # verifies against the new CA
        assert second != first


def test_schemes_for_websocket_and_wsgi(pki: dict[str, Path]):
    import websockets.asyncio.client

    with RRProxy(*_tls_args(pki), "scopeapp:app", workers=1) as server:
        context = ssl.create_default_context(cafile=str(pki["ca"]))

        async def talk() -> str:
            async with websockets.asyncio.client.connect(
                f"wss://127.0.0.1:{server.port}/", ssl=context
            ) as ws:
                # The app sends its scheme and closes at once, so only receive:
                # a send here would race the server's close frame.
                return str(await ws.recv())

        assert asyncio.run(talk()) == "wss"
    with RRProxy(*_tls_args(pki), "wsgiapp:app", workers=1) as server:
        response = httpx.get(f"https://127.0.0.1:{server.port}/", verify=_trust(pki))
        assert response.text == "https"
