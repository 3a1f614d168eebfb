"""What each scenario runs (the worker app) and sends (paths, bodies)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scenario:
    name: str
    app: str
    description: str
    method: str = "GET"
    body_size: int = 0
    #: Fraction of requests sent to /slow (the mixed scenario).
    slow_fraction: float = 0.0
    server_args: tuple[str, ...] = field(default_factory=tuple)

    def next_path(self, rng: random.Random) -> str:
        if self.slow_fraction and rng.random() < self.slow_fraction:
            return "/slow"
        return "/"


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("hello", "workers.hello:handler", "tiny response"),
        Scenario("cpu", "workers.cpu:handler", "about 2 ms of CPU per request"),
        Scenario(
            "mixed",
            "workers.mixed:handler",
            "0.5 ms of CPU, 1 request in 20 takes 100x longer",
            slow_fraction=1 / 20,
        ),
        Scenario("slow-io", "workers.slow_io:handler", "awaits 50 ms per request"),
        Scenario(
            "upload",
            "workers.upload:handler",
            "1 MiB request bodies",
            method="POST",
            body_size=1024 * 1024,
            server_args=("--max-body-size", "2M"),
        ),
    )
}
