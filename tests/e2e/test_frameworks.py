"""The ASGI apps people actually have, served as they are: Django (a project made by
django-admin, migrated), Quart and FastAPI, each needing a running asyncio loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.helpers import RRProxy

ASYNC_VIEW = """
from django.contrib.auth.models import User
from django.http import JsonResponse


async def users(request):
    # The async ORM (Django 4.1+): runs on the worker's asyncio loop.
    return JsonResponse({"users": await User.objects.acount()})
"""


@pytest.fixture(scope="module")
def django_project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("django")
    run = {"cwd": root, "check": True, "capture_output": True, "timeout": 120}
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", "."], **run)
    (root / "mysite" / "views.py").write_text(ASYNC_VIEW)
    urls = root / "mysite" / "urls.py"
    urls.write_text(
        urls.read_text().replace(
            "urlpatterns = [",
            "from mysite.views import users\n\nurlpatterns = [\n    path('users/', users),",
        )
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], **run)
    return root


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_django_admin_and_an_async_orm_view(django_project: Path, loop: str):
    args = ("--loop", loop, "--app-dir", str(django_project), "mysite.asgi:application")
    with RRProxy(*args, workers=2) as server, httpx.Client(base_url=server.url) as http:
        login = http.get("/admin/login/")
        assert login.status_code == 200
        assert "csrfmiddlewaretoken" in login.text
        assert http.get("/admin/", follow_redirects=False).status_code == 302
        assert http.get("/users/").json() == {"users": 0}
        assert "Traceback" not in server.output()


def test_django_on_trio_says_to_use_asyncio(django_project: Path):
    args = ("--loop", "trio", "--app-dir", str(django_project), "mysite.asgi:application")
    with RRProxy(*args, workers=1) as server, httpx.Client(base_url=server.url) as http:
        assert http.get("/users/").status_code == 500
        server.wait_for("use --loop asyncio|--loop asyncio")


def test_quart_routes_body_and_websocket():
    with (
        RRProxy("tests.apps.quart_app:app", workers=2) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        index = http.get("/").json()
        assert index["framework"] == "quart" and index["loop"] == "Loop"  # uvloop's
        assert http.get("/items/7?q=x").json() == {"item": 7, "query": "x"}
        assert http.post("/echo", content=b"posted body").json() == {
            "length": 11,
            "text": "posted body",
        }
        with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10) as ws:
            ws.send("hello")
            assert ws.recv(timeout=10) == "quart: hello"


def test_fastapi_with_asyncio_libraries(redis):
    env = {"FASTAPI_REDIS_URL": redis.url}
    with (
        RRProxy("tests.apps.fastapi_app:app", workers=2, env=env) as server,
        httpx.Client(base_url=server.url, timeout=10) as http,
    ):
        assert http.get("/gather").json() == {"results": [0, 2, 4, 6, 8]}
        assert http.get("/queue").json() == {"items": [0, 1, 2]}
        counts = [http.post("/notes", content=f"n{i}").json()["count"] for i in range(4)]
        assert max(counts) >= 2  # each worker has its own in-memory database
        assert http.get("/call-self").json() == {"status": 200, "body": {"pong": True}}
        hits = [http.get("/redis").json()["count"] for _ in range(4)]
        assert hits == sorted(hits) and len(set(hits)) == 4  # shared through Redis
        streamed = http.get("/stream")
        assert streamed.text == "part 0\npart 1\npart 2\n"
        assert streamed.headers["transfer-encoding"] == "chunked"
        assert "Traceback" not in server.output()
