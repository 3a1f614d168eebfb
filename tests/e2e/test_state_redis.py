"""rrproxy.state on a real redis-server (installed and started by the tests)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.helpers import RRProxy, get, run_cli

pytestmark = pytest.mark.usefixtures("each_loop")

STATEFUL = "tests.apps.stateful:handler"


def _json(port: int, path: str) -> dict:
    response = get(port, path)
    assert response.status == 200, response
    return json.loads(response.body)


def test_incr_is_exact_across_workers_and_values_round_trip(redis):
    with RRProxy("--state", redis.url, STATEFUL, workers=4) as server:
        errors: list[BaseException] = []

        def client() -> None:
            try:
                for _ in range(50):
                    _json(server.port, "/incr?key=hits")
            except BaseException as exc:  # reported below, with the server's log
                errors.append(exc)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, (errors, server.output()[-4000:])
        assert _json(server.port, "/incr?key=hits&by=0")["value"] == 400
        _json(server.port, "/set?key=b&value=raw&kind=bytes")
        assert _json(server.port, "/get?key=b") == {"value": "raw", "type": "bytes"}
        _json(server.port, "/set?key=j&value=v&kind=json")
        assert _json(server.port, "/get?key=j")["value"] == {"nested": [1, 2, {"x": "v"}]}
        _json(server.port, "/set?key=t&value=soon&ttl=0.3")
        time.sleep(0.5)
        assert _json(server.port, "/get?key=t")["value"] is None
        assert get(server.port, "/not-a-number?key=s").status == 409


def test_redis_outage_gives_503_then_recovers(redis):
    with RRProxy("--state", redis.url, STATEFUL, workers=2) as server:
        assert _json(server.port, "/incr?key=n")["value"] == 1
        redis.stop()
        statuses = {get(server.port, "/incr?key=n").status for _ in range(6)}
        assert statuses == {503}
        server.wait_for("redis is unreachable")
        redis.start()  # a new, empty redis on the same port
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if get(server.port, "/incr?key=n").status == 200:
                break
            time.sleep(0.2)
        assert _json(server.port, "/incr?key=n")["value"] >= 2
        assert "exited" not in server.output()  # the workers lived through it


def test_sessions_stick_with_redis(redis):
    with (
        RRProxy("--state", redis.url, "workers.sessions:handler", workers=4) as server,
        httpx.Client(base_url=server.url, timeout=10, headers={"connection": "close"}) as http,
    ):
        visits = [http.get("/").json() for _ in range(8)]
    assert [v["visits"] for v in visits] == list(range(1, 9))
    assert visits[-1]["seen_by"] == [1, 2, 3, 4]


def test_bad_state_url_is_a_clear_error():
    result = run_cli("--port", "0", "--state", "mysql://x", "workers.hello:handler")
    assert result.returncode == 2
    assert "--state must be memory or redis://host:port/db" in result.stderr
