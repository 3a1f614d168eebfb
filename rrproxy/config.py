"""Configuration: one dataclass, filled by the CLI, validated here, and the subset
the workers need sent to them as JSON in the Configure message."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

POLICIES = ("rr", "none")


class ConfigError(ValueError):
    """An invalid option; the CLI prints it on one line and exits 2."""


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs: sent over the channel, so JSON-compatible fields only."""

    app: str
    app_dir: str = "."
    policy: str = "rr"
    log_level: str = "info"
    graceful_timeout: float = 30.0
    keep_alive: float = 5.0
    header_timeout: float = 10.0
    max_header_size: int = 16 * 1024
    max_body_size: int = 1024 * 1024
    stats_interval: float = 1.0
    debug: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorkerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Config:
    worker: WorkerConfig
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = dataclasses.field(default_factory=default_workers)
    backlog: int = 2048
    #: Connections the front may hold that no worker has taken yet (queued for a
    #: worker, or handed and not yet acknowledged). Above it the front stops
    #: accepting and new connections wait in the kernel backlog.
    max_pending: int = 4096

    @property
    def policy(self) -> str:
        return self.worker.policy

    def validate(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, got {self.port}")
        if self.worker.policy not in POLICIES:
            raise ConfigError(f"--policy must be one of {', '.join(POLICIES)}")
        if self.backlog < 1:
            raise ConfigError(f"--backlog must be at least 1, got {self.backlog}")
        if self.worker.graceful_timeout < 0:
            raise ConfigError("--graceful-timeout must not be negative")
