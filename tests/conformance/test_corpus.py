"""The conformance corpus (cases/*.toml, see README.md) through a real rrproxy.

Each case's request goes out on its own connection, followed by a sentinel request.
A rejected request must be answered with its status and the connection closed, and
the sentinel never answered: whatever followed the bad request (a smuggled request)
is never served. A valid one must reach the app exactly as the case says, and the
sentinel is then answered too.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from tests.helpers import RawClient, RRProxy

CASES_DIR = Path(__file__).with_name("cases")
SENTINEL = b"GET /__sentinel HTTP/1.1\r\nHost: x\r\n\r\n"


def _load() -> list[dict]:
    cases = []
    for path in sorted(CASES_DIR.glob("*.toml")):
        with path.open("rb") as file:
            cases += tomllib.load(file)["case"]
    return cases


CASES = _load()
_servers: dict[tuple[str, ...], RRProxy] = {}


@pytest.fixture(scope="module")
def servers():
    yield _servers
    for server in _servers.values():
        server.__exit__(None, None, None)
    _servers.clear()


def _server(servers: dict, options: tuple[str, ...]) -> RRProxy:
    if options not in servers:
        args = (*options, "--header-timeout", "3", "tests.apps.echo:handler")
        servers[options] = RRProxy(*args, workers=1).start()
    return servers[options]


def _exchange(port: int, data: bytes, head_request: bool, closed: bool) -> list:
    client = RawClient(port, timeout=5)
    responses = []
    try:
        client.send(data)
        try:
            responses.append(client.read_response(head_request))
            responses.append(client.read_response())
        except ConnectionError:
            return responses  # closed after fewer responses
        # Anything more (a third, smuggled request) would arrive right behind these.
        client.sock.settimeout(0.05 if not closed else 1.0)
        try:
            extra = client.buffer or client.sock.recv(65536)
        except TimeoutError:
            extra = b""
        if extra:
            responses.append(extra)
        return responses
    finally:
        client.close()


@pytest.mark.parametrize("loop", ["trio", "asyncio", "uvloop"])
@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_case(servers, case: dict, loop: str):
    server = _server(servers, ("--loop", loop, *case.get("options", ())))
    request = case["request"].encode("latin-1")
    data = request + (SENTINEL if case.get("sentinel", True) else b"")
    responses = _exchange(server.port, data, request.startswith(b"HEAD "), case["closed"])
    where = f"{case['id']} ({case['source']})"
    if case["status"] == 0:
        assert responses == [], where
        return
    assert responses, f"{where}: no response"
    first = responses[0]
    assert first.status == case["status"], f"{where}: {first!r}"
    if case["closed"]:
        assert len(responses) == 1, f"{where}: more than one response: {responses[1:]!r}"
    else:
        assert len(responses) == 2, f"{where}: {responses!r}"
        assert json.loads(responses[1].body)["target"] == "/__sentinel", where
    if case["status"] == 200:
        seen = json.loads(first.body)
        expected = {key: case[key] for key in ("method", "target", "headers", "body")}
        assert seen == expected, where
