"""WSGI apps (PEP 3333) served for real, on every loop: wsgiref's validator on every
request, Flask, Django through its wsgi.py, a thread pool that runs blocking
requests side by side, and every way a WSGI app can be broken."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers import RawClient, RRProxy

pytestmark = pytest.mark.usefixtures("each_loop")

# wsgiref's validator wraps the app in `lint_app(*args)`: no signature to detect.
VALIDATED = "tests.apps.wsgi_apps:validated"
WSGI = ("--interface", "wsgi")
BROKEN = "tests.apps.wsgi_apps:broken"


def test_the_environ_and_the_body_under_wsgiref_validator(tmp_path: Path):
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(300_000))
    env = {"WSGI_TEST_FILE": str(data)}
    args = ("--root-path", "/app", "--max-body-size", "4M", *WSGI, VALIDATED)
    with (
        RRProxy(*args, workers=1, env=env) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        environ = http.get(
            "/app/environ?x=1",
            headers=[("X-Multi", "a"), ("X-Multi", "b"), ("X_Under", "dropped")],
        ).json()
        assert environ["SCRIPT_NAME"] == "/app" and environ["PATH_INFO"] == "/environ"
        assert environ["QUERY_STRING"] == "x=1"
        assert environ["REQUEST_METHOD"] == "GET" and environ["SERVER_PROTOCOL"] == "HTTP/1.1"
        assert environ["REMOTE_ADDR"] == "127.0.0.1" and environ["REMOTE_PORT"].isdigit()
        assert environ["HTTP_X_MULTI"] == "a,b" and "HTTP_X_UNDER" not in environ
        assert environ["wsgi.url_scheme"] == "http" and environ["wsgi.input_terminated"]
        body = os.urandom(2_500_000)  # more than is buffered before the app runs
        for how in ("", "lines", "iter", "small"):
            echoed = http.post(f"/app/echo?{how}", content=body)
            assert echoed.content == body, how
        chunked = http.post("/app/echo?small", content=iter([b"a" * 70_000, b"b" * 70_000]))
        assert chunked.content == b"a" * 70_000 + b"b" * 70_000
        assert http.get("/app/write").text == "written, then returned"
        streamed = http.get("/app/stream")
        assert streamed.text == "".join(f"part {i}\n" for i in range(5))
        assert http.get("/app/file").content == data.read_bytes()
        assert http.get("/app/errors").text == "logged"
        server.wait_for("a line for the log")
        assert "Traceback" not in server.output()


def test_expect_100_continue_reaches_a_wsgi_app():
    with RRProxy(*WSGI, VALIDATED, workers=1) as server:
        client = RawClient(server.port)
        client.send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert client.read_response().status == 100
        client.send(b"hello")
        response = client.read_response()
        assert (response.status, response.body) == (200, b"hello")


def test_flask(tmp_path: Path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(20 * 2**20))
    env = {"FLASK_BIG_FILE": str(big)}
    args = ("--max-body-size", "10M", "--threads", "4", "tests.apps.flask_app:app")
    with (
        RRProxy(*args, workers=2, env=env) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        assert http.get("/").json()["framework"] == "flask"
        assert http.post("/json", json={"numbers": [1, 2]}).json()["doubled"] == [2, 4]
        upload = os.urandom(5 * 2**20)
        answer = http.post(
            "/upload", data={"name": "report"}, files={"file": ("r.bin", upload)}
        ).json()
        assert answer == {
            "name": "report",
            "filename": "r.bin",
            "sha256": hashlib.sha256(upload).hexdigest(),
        }
        assert http.get("/stream").text == "line 0\nline 1\nline 2\nline 3\n"
        downloaded = http.get("/big")
        assert (
            hashlib.sha256(downloaded.content).digest() == hashlib.sha256(big.read_bytes()).digest()
        )
        assert http.get("/fail").status_code == 500
        assert http.get("/").status_code == 200  # the worker lives on
        server.wait_for("the view failed on purpose")


def test_threads_run_blocking_requests_side_by_side():
    with RRProxy("--threads", "4", *WSGI, VALIDATED, workers=1) as server:
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            statuses = list(
                pool.map(
                    lambda _: httpx.get(f"{server.url}/sleep?1", timeout=10).status_code,
                    range(4),
                )
            )
        assert statuses == [200] * 4
        assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    "path", ["/raise", "/bad-status", "/bad-headers", "/bad-header-type", "/no-start-response",
             "/str-chunk"],
)  # fmt: skip
def test_broken_wsgi_apps_get_500_and_the_worker_lives(path: str):
    with RRProxy(BROKEN, workers=1) as server, httpx.Client(base_url=server.url) as http:
        assert http.get(path).status_code == 500
        assert http.get("/").text == "fine"
        assert server.pids[1] in {int(p) for p in re.findall(r"pid (\d+)", server.output())}
        if path in ("/no-start-response", "/str-chunk"):
            server.wait_for("closed no-start" if path == "/no-start-response" else "closed str")
        assert "exited" not in server.output()


def test_a_body_that_fails_after_the_head_is_cut_short():
    with RRProxy(BROKEN, workers=1) as server:
        client = RawClient(server.port)
        client.send(b"GET /raise-after-head HTTP/1.1\r\nHost: t\r\n\r\n")
        received = b""
        while chunk := client.sock.recv(65536):
            received += chunk
        assert received.startswith(b"HTTP/1.1 200 ")
        assert b"first part" in received
        assert not received.endswith(b"0\r\n\r\n")  # no final chunk: truncated
        server.wait_for("broke after the head")


def test_start_response_with_exc_info_replaces_the_head():
    with RRProxy(BROKEN, workers=1) as server:
        response = httpx.get(f"{server.url}/exc-info")
        assert response.status_code == 500 and response.text == "recovered with exc_info"


@pytest.fixture(scope="module")
def django_wsgi_project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("djangowsgi")
    run = {"cwd": root, "check": True, "capture_output": True, "timeout": 120}
    subprocess.run([sys.executable, "-m", "django", "startproject", "site_", "."], **run)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], **run)
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c",
         "from django.contrib.auth.models import User; "
         "User.objects.create_superuser('admin', 'a@b.c', 'secret-pw')"],
        **run,
    )  # fmt: skip
    return root


def test_django_admin_login_with_its_csrf_form(django_wsgi_project: Path):
    args = ("--app-dir", str(django_wsgi_project), "site_.wsgi:application")
    with (
        RRProxy(*args, workers=2) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        page = http.get("/admin/login/")
        assert page.status_code == 200
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        logged_in = http.post(
            "/admin/login/?next=/admin/",
            data={"csrfmiddlewaretoken": token, "username": "admin", "password": "secret-pw",
                  "next": "/admin/"},
            headers={"Referer": f"{server.url}/admin/login/"},
        )  # fmt: skip
        assert logged_in.status_code == 302 and logged_in.headers["location"] == "/admin/"
        admin = http.get("/admin/")
        assert admin.status_code == 200 and "Site administration" in admin.text
        assert json.dumps({}) == "{}"


def test_one_busy_thread_is_not_a_dead_worker_but_a_whole_stuck_pool_is():
    args = ("--threads", "2", "--timeout", "3", *WSGI, VALIDATED)
    with RRProxy(*args, workers=1) as server:
        first = server.pids[1]
        with ThreadPoolExecutor(2) as pool:
            one = pool.submit(httpx.get, f"{server.url}/sleep?5", timeout=20)
            time.sleep(0.5)
            assert httpx.get(f"{server.url}/environ", timeout=5).status_code == 200
            assert one.result().status_code == 200  # 5 s > --timeout, one thread: fine
            assert "is unresponsive" not in server.output()
            stuck = [pool.submit(httpx.get, f"{server.url}/sleep?30", timeout=40) for _ in range(2)]
            server.wait_for("is unresponsive", timeout=15)
            for request in stuck:
                with pytest.raises(httpx.HTTPError):
                    request.result()
        server.wait_for(rf"worker 1 ready \(pid (?!{first})", timeout=20)
