"""rrproxy.state with the memory backend, through real workers."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from tests.helpers import RRProxy, get

pytestmark = pytest.mark.usefixtures("each_loop")

STATEFUL = "tests.apps.stateful:handler"


def _json(port: int, path: str) -> dict:
    response = get(port, path)
    assert response.status == 200, response
    return json.loads(response.body)


def test_incr_from_four_workers_under_concurrent_load_is_exact():
    with RRProxy(STATEFUL, workers=4) as server:
        workers_seen: set[int] = set()
        lock = threading.Lock()

        def client() -> None:
            for _ in range(50):
                info = _json(server.port, "/incr?key=hits")
                with lock:
                    workers_seen.add(info["worker"])

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert workers_seen == {1, 2, 3, 4}
        assert _json(server.port, "/incr?key=hits&by=0")["value"] == 400


def test_values_ttl_delete_and_errors():
    with RRProxy(STATEFUL, workers=2) as server:
        port = server.port
        _json(port, "/set?key=b&value=raw&kind=bytes")
        assert _json(port, "/get?key=b") == {"value": "raw", "type": "bytes"}
        _json(port, "/set?key=j&value=v&kind=json")
        assert _json(port, "/get?key=j")["value"] == {"nested": [1, 2, {"x": "v"}]}
        _json(port, "/set?key=t&value=soon&ttl=0.5")
        assert _json(port, "/get?key=t")["value"] == "soon"
        time.sleep(0.8)
        assert _json(port, "/get?key=t")["value"] is None
        _json(port, "/set?key=e&value=x")
        assert _json(port, "/expire?key=e&ttl=0.3")["ok"] is True
        time.sleep(0.5)
        assert _json(port, "/get?key=e")["value"] is None
        assert _json(port, "/delete?key=b")["deleted"] is True
        assert _json(port, "/get?key=b")["value"] is None
        too_big = get(port, "/too-big")
        assert too_big.status == 413 and b"exceeds the limit" in too_big.body
        not_a_number = get(port, "/not-a-number?key=s")
        assert not_a_number.status == 409 and b"not an integer" in not_a_number.body


def test_memory_state_survives_a_rolling_reload():
    with RRProxy(STATEFUL, workers=2) as server:
        for _ in range(5):
            _json(server.port, "/incr?key=kept")
        _json(server.port, "/set?key=name&value=before")
        server.signal(signal.SIGHUP)
        server.wait_for("reload complete: 2 workers replaced")
        assert _json(server.port, "/incr?key=kept")["value"] == 6
        assert _json(server.port, "/get?key=name")["value"] == "before"


def test_sessions_stick_whichever_worker_serves_them():
    with RRProxy("workers.sessions:handler", workers=4) as server:
        with httpx.Client(base_url=server.url, timeout=10, headers={"connection": "close"}) as http:
            visits = [http.get("/").json() for _ in range(8)]
        assert [v["visits"] for v in visits] == list(range(1, 9))
        assert visits[-1]["seen_by"] == [1, 2, 3, 4]
