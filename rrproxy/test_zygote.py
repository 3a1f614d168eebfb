"""The fork server's judgement of a spawn request, before it forks: a request it
cannot serve is answered with an error, and no process is forked for it."""

from __future__ import annotations

from typing import Any

import pytest

from .zygote import _spawn_request


def test_a_good_request_gives_its_slot_and_environment() -> None:
    request = {"op": "spawn", "id": 1, "slot": 3, "env": {"A": "1", "B": 2}}
    assert _spawn_request(request, [9]) == (3, {"A": "1", "B": "2"})


@pytest.mark.parametrize(
    ("request_", "fds", "error"),
    [
        ({"op": "fork", "slot": 1, "env": {}}, [9], "unknown op"),
        ({"op": "spawn", "slot": 1, "env": {}}, [], "one fd, not 0"),
        ({"op": "spawn", "slot": 1, "env": {}}, [9, 10], "one fd, not 2"),
        ({"op": "spawn", "slot": "1", "env": {}}, [9], "bad slot"),
        ({"op": "spawn", "slot": 0, "env": {}}, [9], "bad slot"),
        ({"op": "spawn", "slot": True, "env": {}}, [9], "bad slot"),
        ({"op": "spawn", "env": {}}, [9], "bad slot"),
        ({"op": "spawn", "slot": 1, "env": [["A", "1"]]}, [9], "env must be an object"),
        ({"op": "spawn", "slot": 1}, [9], "env must be an object"),
    ],
)
def test_a_bad_request_is_refused_before_the_fork(
    request_: dict[str, Any], fds: list[int], error: str
) -> None:
    judged = _spawn_request(request_, fds)
    assert isinstance(judged, str) and error in judged
