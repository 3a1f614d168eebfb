"""Two rrproxy instances sharing one Redis behind HAProxy (PROXY protocol), and the
forwarding headers."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from rrproxy.control import AdminClient
from tests.helpers import RawClient, RRProxy, get_from

HAPROXY_CONFIG = """\
global
    maxconn 512

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend public
    bind 127.0.0.1:{public}
    default_backend rrproxies

backend rrproxies
    balance roundrobin
    server one 127.0.0.1:{one} send-proxy-v2
    server two 127.0.0.1:{two} send-proxy
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_from(port: int, source: str, path: str, headers: str = "") -> dict:
    response = get_from(port, source, path, headers)
    assert response.status == 200, response
    return json.loads(response.body)


def test_two_instances_behind_haproxy_share_state_and_see_real_clients(
    tmp_path: Path, redis, haproxy_binary: str
):
    admin_one, admin_two = tmp_path / "one.sock", tmp_path / "two.sock"
    common = ("--proxy-protocol", "--state", redis.url, "tests.apps.stateful:handler")
    with (
        RRProxy("--admin", f"unix:{admin_one}", *common, workers=2) as one,
        RRProxy("--admin", f"unix:{admin_two}", *common, workers=2) as two,
    ):
        public = _free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(public=public, one=one.port, two=two.port))
        haproxy = subprocess.Popen(
            [haproxy_binary, "-f", str(config), "-db"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", public), timeout=0.5).close()
                    break
                except OSError:
                    time.sleep(0.05)
            answers = [_get_from(public, "127.0.2.5", "/incr?key=shared") for _ in range(20)]
        finally:
            haproxy.terminate()
            haproxy.wait(10)
        requests = [
            AdminClient(f"unix:{a}").json("GET", "/status")["totals"]["requests_total"]
            for a in (admin_one, admin_two)
        ]
    # One counter for both instances (shared Redis), counted exactly once per request.
    assert [a["value"] for a in answers] == list(range(1, 21))
    # The real client's address, carried by the PROXY protocol (v2 and v1).
    assert {a["client"][0] for a in answers} == {"127.0.2.5"}
    assert requests == [10, 10]


def test_a_connection_without_a_proxy_header_is_closed():
    with RRProxy("--proxy-protocol", "tests.apps.probe:handler", workers=1) as server:
        client = RawClient(server.port)
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.at_eof()
        client.close()
        server.wait_for("does not start with a PROXY protocol header")


def test_forwarded_for_is_believed_only_from_allowed_peers():
    with RRProxy(
        "--forwarded-allow-ips", "127.0.0.1", "tests.apps.stateful:handler", workers=1
    ) as server:
        trusted = _get_from(
            server.port, "127.0.0.1", "/incr?key=f", "X-Forwarded-For: 6.6.6.6, 203.0.113.7\r\n"
        )
        assert trusted["client"][0] == "203.0.113.7"
        untrusted = _get_from(
            server.port, "127.0.2.9", "/incr?key=f", "X-Forwarded-For: 203.0.113.7\r\n"
        )
        assert untrusted["client"][0] == "127.0.2.9"
