"""The transports' addresses on real sockets, both loops: an internet socket gives
(host, port), a unix socket gives None (as uvicorn's get_local_addr does), never the
first two characters of its path."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

from .asyncio import make_backend
from .backend import Backend, inet_address
from .trio import BACKEND as TRIO

BACKENDS = [TRIO, make_backend("asyncio")]


def test_inet_address_takes_only_internet_names() -> None:
    assert inet_address(("127.0.0.1", 80)) == ("127.0.0.1", 80)
    assert inet_address(("::1", 80, 0, 0)) == ("::1", 80)
    assert inet_address("/tmp/sock") is None
    assert inet_address("") is None
    assert inet_address(b"\0abstract") is None
    assert inet_address(None) is None


def _addresses(backend: Backend, server_side: socket.socket) -> tuple[object, object]:
    async def main() -> tuple[object, object]:
        transport = await backend.open_transport(server_side, 1.0)
        try:
            return transport.client, transport.server_address()
        finally:
            transport.close()

    return backend.run(main)


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_a_tcp_connection_has_both_addresses(backend: Backend) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        client_address, server_address = _addresses(backend, accepted)
        assert client_address == client.getsockname()
        assert server_address == listener.getsockname()
        client.close()


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_a_unix_socket_connection_has_no_internet_addresses(backend: Backend) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "s")
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path)
            listener.listen()
            client = socket.socket(socket.AF_UNIX)
            client.connect(path)
            accepted, _ = listener.accept()
            assert _addresses(backend, accepted) == (None, None)
            client.close()
