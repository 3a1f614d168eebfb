"""The live dashboard in a real browser: Debian's chromium driven by selenium through
Debian's chromedriver (no browser download), against a running rrproxy under load."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ensure_installed
from tests.helpers import REPO, RRProxy, get, wait_until

TOKEN = "dashboard-test-token-5f2c"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    chromium = ensure_installed("chromium", "chromium")
    chromedriver = ensure_installed("chromedriver", "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tmp_path_factory.mktemp("chromium-profile")
    # The flags keep chromium off the network (this machine has none) and out of the
    # sandbox, which needs privileges a test run does not have as root.
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1500,560",
        f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    os.environ["SE_OFFLINE"] = "true"  # selenium manager must not look for a driver online
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _http(method: str, url: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class Load:
    """A small steady load in a thread, so the counters move."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                get(self.port, timeout=5)
            except OSError:
                pass  # a reload or scale under way: keep going
            time.sleep(0.01)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def _rows(driver) -> dict[int, dict[str, str]]:
    """The workers table as the page shows it: slot -> {pid, state}."""
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#workers tbody tr')].map("
        "r => [r.dataset.slot, r.dataset.pid, r.dataset.state,"
        " r.querySelector('.p50').textContent])"
    )
    return {int(slot): {"pid": pid, "state": state, "p50": p50} for slot, pid, state, p50 in rows}


def _total_requests(driver) -> int:
    text = driver.execute_script("return document.getElementById('total-requests').textContent")
    digits = re.sub(r"\D", "", text)
    return int(digits) if digits else -1


def _all_ready(driver, count: int) -> bool:
    rows = _rows(driver)
    return len(rows) == count and all(row["state"] == "ready" for row in rows.values())


@pytest.mark.timeout(150)
def test_dashboard_is_live_acts_and_keeps_its_token_private(browser, tmp_path: Path):
    from selenium.webdriver.common.by import By

    driver = browser
    admin = _free_port()
    args = ("--admin", f"127.0.0.1:{admin}", "--admin-token", TOKEN, "workers.hello:handler")
    with RRProxy(*args, workers=2) as server, Load(server.port):
        base = f"http://127.0.0.1:{admin}"
        # --- the token: in the fragment, then only in this tab's sessionStorage
        driver.get(f"{base}/#token={TOKEN}")
        wait_until(lambda: _all_ready(driver, 2), 20, what="two ready rows")
        assert "token" not in driver.current_url
        assert driver.execute_script("return sessionStorage.getItem('rrproxy-token')") == TOKEN
        # --- live: the request counter climbs, latency percentiles appear
        first = _total_requests(driver)
        wait_until(lambda: _total_requests(driver) > first + 20, 20, what="live counter")
        wait_until(
            lambda: all(row["p50"] != "\u2013" for row in _rows(driver).values()),
            20,
            what="p50 per worker",
        )
        jain = driver.find_element(By.ID, "jain").text
        assert 0.5 <= float(jain) <= 1.0, jain  # two workers sharing under rr
        # --- scale +1: a third row, ready
        driver.find_element(By.ID, "scale-up").click()
        wait_until(lambda: _all_ready(driver, 3), 30, what="a third worker row")
        # --- reload: every pid changes, and the page stays live through it
        before = {slot: row["pid"] for slot, row in _rows(driver).items()}
        driver.find_element(By.ID, "reload").click()

        def all_replaced() -> bool:
            rows = _rows(driver)
            return _all_ready(driver, 3) and all(
                rows[slot]["pid"] != pid for slot, pid in before.items()
            )

        wait_until(all_replaced, 60, what="every worker replaced by the reload")
        counted = _total_requests(driver)
        wait_until(lambda: _total_requests(driver) > counted, 20, what="live after the reload")
        # What the page shows is what the server says.
        status, _, body = _http("GET", f"{base}/status", TOKEN)
        assert status == 200
        pids = {str(w["pid"]) for w in json.loads(body)["workers"]}
        assert pids == {row["pid"] for row in _rows(driver).values()}
        screenshot = tmp_path / "dashboard.png"
        driver.save_screenshot(str(screenshot))
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("RRPROXY_UPDATE_SCREENSHOT"):
            shutil.copy(screenshot, REPO / "docs" / "dashboard.png")

        # --- without the token: the shell only, every data endpoint and action 401
        status, headers, page = _http("GET", f"{base}/")
        assert status == 200
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["cache-control"] == "no-store"
        assert str(server.proc.pid).encode() not in page
        for method, path in (
            ("GET", "/status"),
            ("GET", "/status?history=1"),
            ("GET", "/metrics"),
            ("POST", "/reload"),
            ("POST", "/scale?workers=1"),
            ("POST", "/shutdown"),
            ("GET", f"/status?token={TOKEN}"),  # a token in the URL is not one
        ):
            assert _http(method, base + path)[0] == 401, (method, path)
            assert _http(method, base + path, "wrong-token")[0] == 401, (method, path)
        # GET never changes anything, even with the token (no CSRF by link or <img>).
        assert _http("GET", f"{base}/reload", TOKEN)[0] == 405
        # A page opened without a token says what to do, and shows no data.
        driver.execute_script("sessionStorage.clear()")
        driver.get(f"{base}/")
        wait_until(
            lambda: "admin token" in driver.find_element(By.ID, "message").text,
            10,
            what="the no-token message",
        )
        assert _rows(driver) == {}
        # The token never reached a log line.
        assert TOKEN not in server.output()
        assert server.proc.poll() is None


@pytest.mark.timeout(120)
def test_rrproxy_dashboard_opens_the_private_unix_socket_to_a_browser(browser, tmp_path: Path):
    from selenium.webdriver.common.by import By

    driver = browser
    socket_path = tmp_path / "admin.sock"
    with RRProxy("--admin", f"unix:{socket_path}", "workers.hello:handler", workers=2) as server:
        link = subprocess.Popen(
            [sys.executable, "-m", "rrproxy", "dashboard", "--admin", f"unix:{socket_path}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        try:
            assert link.stdout is not None
            line = link.stdout.readline()
            match = re.search(r"(http://127\.0\.0\.1:(\d+))/#token=([\w-]+)", line)
            assert match, line
            base, token = match.group(1), match.group(3)
            # Refused here without the token: nothing reaches rrproxy's admin socket.
            for method, path in (("GET", "/status"), ("POST", "/shutdown"), ("GET", "/metrics")):
                assert _http(method, base + path)[0] == 401
            status, headers, _ = _http("GET", base + "/")
            assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
            # A client cannot make it buffer: the admin endpoints take no body.
            import socket

            with socket.create_connection(("127.0.0.1", int(match.group(2))), timeout=10) as raw:
                raw.sendall(
                    f"POST /reload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                    "Content-Length: 100000000\r\n\r\n".encode()
                )
                assert raw.recv(100).startswith(b"HTTP/1.1 413")
            status, _, body = _http("GET", base + "/status", token)
            assert status == 200 and len(json.loads(body)["workers"]) == 2
            driver.get(f"{base}/#token={token}")
            wait_until(lambda: _all_ready(driver, 2), 20, what="two ready rows")
            driver.find_element(By.ID, "scale-up").click()
            wait_until(lambda: _all_ready(driver, 3), 30, what="a third worker row")
            assert token not in server.output()
            link.send_signal(signal.SIGINT)
            assert link.wait(10) == 0
        finally:
            if link.poll() is None:
                link.kill()
                link.wait()
