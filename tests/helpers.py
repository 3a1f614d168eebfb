"""Start rrproxy as a real subprocess on a free loopback port and talk HTTP to it."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from loadtest.processes import stop_process_group

REPO = Path(__file__).resolve().parent.parent
PROBE = "tests.apps.probe:handler"

# Text, or the message of a JSON line (--log-format json).
_LISTENING = re.compile(
    r"(?:rrproxy: |\"message\": \")listening on http://(?P<host>[^ ]+):(?P<port>\d+) "
)
_LISTENING_ANY = re.compile(r"(?:rrproxy: |\"message\": \")listening on .+ \(policy")
_READY = re.compile(r"(?:rrproxy: |\"message\": \")worker (?P<slot>\d+) ready \(pid (?P<pid>\d+)\)")


class RRProxy:
    """One rrproxy process. Output is collected by threads (no pipe can fill up)."""

    def __init__(
        self,
        *args: str,
        workers: int = 2,
        cwd: Path = REPO,
        preexec_fn=None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.preexec_fn = preexec_fn
        self.extra_env = env or {}
        self.argv = [
            sys.executable,
            "-m",
            "rrproxy",
            "--port",
            "0",
            "--workers",
            str(workers),
            *args,
        ]
        self.cwd = cwd
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.host = "127.0.0.1"
        self.pids: dict[int, int] = {}

    def start(self, timeout: float = 30.0) -> RRProxy:
        self.start_without_waiting()
        self.wait_for(_LISTENING_ANY, timeout)
        match = _LISTENING.search(self.output())
        if match:  # else only unix sockets
            self.host = match["host"].strip("[]")
            self.port = int(match["port"])
        for line in self.output().splitlines():
            ready = _READY.search(line)
            if ready:
                self.pids[int(ready["slot"])] = int(ready["pid"])
        return self

    def start_without_waiting(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=self.preexec_fn,
            start_new_session=True,
        )
        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 20.0) -> re.Match[str]:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                match = regex.search("".join(self.lines))
                if match:
                    return match
                remaining = deadline - time.monotonic()
                assert self.proc is not None
                if remaining <= 0 or (self.proc.poll() is not None and not match):
                    if self.proc.poll() is not None:
                        self._cond.wait(0.2)  # let the pumps finish
                        match = regex.search("".join(self.lines))
                        if match:
                            return match
                    raise AssertionError(
                        f"{regex.pattern!r} not seen in rrproxy output:\n{''.join(self.lines)}"
                    )
                self._cond.wait(min(remaining, 0.2))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Stop at test end, whatever state the server is in: SIGTERM to the front
        (as an operator does), then SIGKILL to its whole group after 15 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_process_group(self.proc, 15, term_group=False, own_group=True)

    def __enter__(self) -> RRProxy:
        try:
            return self.start()
        except BaseException:
            self.__exit__()  # `with` does not call __exit__ when __enter__ raises
            raise

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            # Also when the front has exited: never leave workers behind.
            stop_process_group(self.proc, 15, term_group=False, own_group=True)


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run rrproxy to completion (for the error cases)."""
    return subprocess.run(
        [sys.executable, "-m", "rrproxy", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- a tiny blocking HTTP/1.1 client over a raw socket, for exact control -------------


class RawClient:
    def __init__(
        self, port: int, host: str = "127.0.0.1", timeout: float = 10.0, source: str | None = None
    ) -> None:
        # `source`: a loopback address to connect from (127.0.0.0/8 is all ours), so
        # one test can look like many clients.
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def read_response(self, head_request: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before a full head: {self.buffer!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        hmap = dict(headers)
        body = b""
        if head_request or status in (204, 304) or 100 <= status < 200:
            pass
        elif hmap.get("transfer-encoding") == "chunked":
            while True:
                while b"\r\n" not in self.buffer:
                    if not self._fill():
                        raise ConnectionError("closed inside a chunked body")
                size_line, self.buffer = self.buffer.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(self.buffer) < size + 2:
                    if not self._fill():
                        raise ConnectionError("closed inside a chunk")
                body += self.buffer[:size]
                self.buffer = self.buffer[size + 2 :]
                if size == 0:
                    break
        elif "content-length" in hmap:
            length = int(hmap["content-length"])
            while len(self.buffer) < length:
                if not self._fill():
                    raise ConnectionError("closed inside a body")
            body, self.buffer = self.buffer[:length], self.buffer[length:]
        else:
            while self._fill():
                pass
            body, self.buffer = self.buffer, b""
        return Response(status, headers, body)

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True if the server closed the connection (nothing more arrives)."""
        self.sock.settimeout(timeout)
        try:
            return not self.buffer and self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return False

    def close(self) -> None:
        self.sock.close()


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.headers} {self.body[:80]!r}>"


def get(
    port: int,
    path: str = "/",
    headers: str = "",
    host: str = "127.0.0.1",
    timeout: float = 10,
    source: str | None = None,
) -> Response:
    """One request on a new connection (Connection: close)."""
    client = RawClient(port, host, timeout, source)
    try:
        client.send(
            f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}\r\n".encode()
        )
        return client.read_response()
    finally:
        client.close()


def get_from(port: int, source: str, path: str = "/", headers: str = "") -> Response:
    """One request from a given loopback source address."""
    return get(port, path, headers, source=source)


# --- looking at the processes of a running rrproxy -------------------------------------


def worker_pids(front_pid: int) -> set[int]:
    """Live worker processes of a front: its children running rrproxy.worker, or under
    --fork-server the children of its fork server."""
    processes: dict[int, tuple[int, str, bytes]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read()
        except OSError:
            continue
        processes[int(entry)] = (int(fields[1]), fields[0], argv)

    def is_zygote(argv: bytes) -> bool:
        return b"rrproxy.zygote" in argv or argv.startswith(b"rrproxy: fork server")

    zygotes = {
        pid for pid, (ppid, _, argv) in processes.items() if ppid == front_pid and is_zygote(argv)
    }
    pids = set()
    for pid, (ppid, state, argv) in processes.items():
        # "python -m rrproxy.worker", or "rrproxy: worker N app" once setproctitle ran;
        # every child of the fork server is a worker.
        is_worker = b"rrproxy.worker" in argv or argv.startswith(b"rrproxy: worker")
        if state != "Z" and ((ppid == front_pid and is_worker) or ppid in zygotes):
            pids.add(pid)
    return pids


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.1, what: str = "") -> None:
    """Poll until predicate() is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what or predicate}")


def client_per_worker(port: int, workers: int, attempts: int = 200) -> dict[int, RawClient]:
    """One keep-alive connection to each worker (a connection sticks to its worker),
    keyed by worker id; the probe-style apps say who served them in x-worker-id."""
    clients: dict[int, RawClient] = {}
    for _ in range(attempts):
        client = RawClient(port)
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        worker_id = int(client.read_response().header("x-worker-id") or 0)
        if worker_id in clients:
            client.close()
        else:
            clients[worker_id] = client
        if len(clients) == workers:
            return clients
    raise AssertionError(f"reached only workers {sorted(clients)}")
