"""What a misbehaving worker or a hostile client can do, and what it cannot."""

from __future__ import annotations

import re
import resource
import socket
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import PROBE, RawClient, RRProxy, get


def test_worker_sending_garbage_or_unknown_messages_is_replaced_front_survives():
    with RRProxy(PROBE, workers=1) as server:
        old = server.pids[1]
        assert get(server.port, "/channel-garbage").status == 200
        server.wait_for(r"worker 1 \(pid \d+\) broke the protocol: unknown message tag")
        new = int(server.wait_for(rf"worker 1 ready \(pid (?!{old}\))(\d+)\)").group(1))
        assert get(server.port).header("x-worker-pid") == str(new)
        assert get(server.port, "/channel-unknown").status == 200
        server.wait_for(r"broke the protocol: unexpected Configure")
        server.wait_for(rf"worker 1 ready \(pid (?!{old}\))(?!{new}\))\d+\)")
        assert get(server.port).status == 200
        assert server.proc.poll() is None


def test_worker_that_closes_its_channel_is_replaced():
    with RRProxy(PROBE, workers=1) as server:
        old = server.pids[1]
        get(server.port, "/channel-close")
        server.wait_for(rf"worker 1 ready \(pid (?!{old}\))\d+\)", timeout=15)
        assert get(server.port).status == 200
        assert server.proc.poll() is None


def test_slowloris_does_not_starve_a_normal_client():
    with RRProxy(PROBE, workers=2) as server:
        attackers = []
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"GET / HTTP/1.1\r\n")
            attackers.append(sock)
        stop = threading.Event()

        def drip() -> None:
            while not stop.wait(1.0):
                for sock in attackers:
                    try:
                        sock.send(b"X")
                    except OSError:
                        pass

        dripper = threading.Thread(target=drip)
        dripper.start()
        try:
            for _ in range(5):
                started = time.monotonic()
                assert get(server.port).status == 200
                assert time.monotonic() - started < 3.0
                time.sleep(0.5)
        finally:
            stop.set()
            dripper.join(5)
            for sock in attackers:
                sock.close()


def test_slowloris_gets_408_after_the_header_timeout():
    with RRProxy("--header-timeout", "1", PROBE, workers=1) as server:
        client = RawClient(server.port)
        for _ in range(3):
            client.send(b"X")
            time.sleep(0.5)
        response = client.read_response()
        assert response.status == 408


def test_out_of_file_descriptors_is_survived_and_no_connection_is_lost():
    """With a hard limit of 64 open files, 150 concurrent clients exhaust the front's
    and the worker's fds: accept pauses (EMFILE), a worker that cannot receive an fd
    gives the connection back, and every client is still answered."""

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    with RRProxy(PROBE, workers=1, preexec_fn=low_fd_limit) as server:
        results: list[object] = []
        lock = threading.Lock()

        def client() -> None:
            try:
                outcome: object = get(server.port, "/slow?s=0.3", timeout=60).status
            except OSError as exc:
                outcome = exc
            with lock:
                results.append(outcome)

        threads = [threading.Thread(target=client) for _ in range(150)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert results.count(200) == 150, [r for r in results if r != 200][:5]
        assert server.proc.poll() is None
        assert re.search(r"Too many open files|out of file descriptors", server.output())


# --- random and mutated HTTP bytes ---------------------------------------------------

VALID = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
]


def _mutate(base: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    data = bytearray(base)
    for kind, position, payload in edits:
        at = position % (len(data) + 1)
        if kind == 0:
            data[at:at] = payload  # insert
        elif kind == 1:
            del data[at : at + len(payload) + 1]  # delete
        else:
            data[at : at + len(payload)] = payload  # overwrite
    return bytes(data)


edits = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 500), st.binary(min_size=1, max_size=4)),
    max_size=4,
)
mutated = st.builds(_mutate, st.sampled_from(VALID), edits)
inputs = st.one_of(st.binary(max_size=400), mutated)

_STATUS_LINE = re.compile(rb"HTTP/1\.1 [1-5]\d\d [^\r\n]*\r\n")
FUZZ_EXAMPLES = 1000
fuzz_seen: list[bytes] = []


def test_random_and_mutated_http_never_crash_a_worker():
    with RRProxy("--header-timeout", "2", "workers.hello:handler", workers=1) as server:
        pid = server.pids[1]

        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(inputs)
        def one_connection(data: bytes) -> None:
            fuzz_seen.append(data)
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            try:
                try:
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                received = b""
                while True:
                    try:
                        chunk = sock.recv(65536)
                    except ConnectionResetError:
                        break
                    if not chunk:
                        break
                    received += chunk
            finally:
                sock.close()
            # An answer is one or more well-formed responses; silence (a close) is
            # the other allowed outcome. Never a hang: recv would time out above.
            if received:
                assert _STATUS_LINE.match(received), received[:200]
                assert b"\r\n\r\n" in received

        one_connection()
        assert len(fuzz_seen) >= FUZZ_EXAMPLES
        assert get(server.port).header("x-worker-pid") is None  # hello app: no header
        assert get(server.port).status == 200
        assert f"ready (pid {pid})" in server.output()
        assert "Traceback" not in server.output(), server.output()[-3000:]
        assert "exited" not in server.output()
