"""/metrics: the status snapshot in Prometheus's text exposition format, written by
prometheus_client (not by hand)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _SnapshotCollector(Collector):
    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        status = self.status
        workers = status["workers"]
        yield InfoMetricFamily(
            "rrproxy",
            "rrproxy front process",
            value={
                "policy": status["policy"],
                "pid": str(status["pid"]),
            },
        )
        yield InfoMetricFamily(
            "rrproxy_build",
            "rrproxy's version, scheduling policy and the workers' event loop setting",
            value={
                "version": status["version"],
                "policy": status["policy"],
                "loop": status["loop"],
            },
        )
        up = GaugeMetricFamily(
            "rrproxy_worker_up", "1 if the worker slot is ready", labels=["worker"]
        )
        conns = CounterMetricFamily(
            "rrproxy_worker_connections", "connections served by the slot", labels=["worker"]
        )
        active = GaugeMetricFamily(
            "rrproxy_worker_connections_active", "open connections", labels=["worker"]
        )
        requests = CounterMetricFamily(
            "rrproxy_worker_requests", "requests served", labels=["worker"]
        )
        restarts = CounterMetricFamily(
            "rrproxy_worker_restarts", "restarts of the slot", labels=["worker"]
        )
        rss = GaugeMetricFamily(
            "rrproxy_worker_resident_memory_bytes", "resident memory", labels=["worker"]
        )
        looping = GaugeMetricFamily(
            "rrproxy_worker_crash_looping",
            "1 if the slot's workers keep dying before they serve anyone",
            labels=["worker"],
        )
        cpu = CounterMetricFamily(
            "rrproxy_worker_cpu_seconds", "CPU time of the slot's live processes", labels=["worker"]
        )
        classes = CounterMetricFamily(
            "rrproxy_worker_responses",
            "responses by status class (2xx, 4xx, 5xx...)",
            labels=["worker", "class"],
        )
        durations = HistogramMetricFamily(
            "rrproxy_worker_request_duration_seconds",
            "per worker: time from a request's head to the end of its response",
            labels=["worker"],
        )
        for worker in workers:
            label = [str(worker["id"])]
            for name, count in worker["responses"].items():
                classes.add_metric([*label, name], count)
            durations.add_metric(
                label,
                _buckets(status["latency"]["buckets"], worker["latency_counts"]),
                sum_value=worker["latency_sum"],
            )
            up.add_metric(label, 1.0 if worker["state"] == "ready" else 0.0)
            conns.add_metric(label, worker["connections_total"])
            active.add_metric(label, worker["connections_active"])
            requests.add_metric(label, worker["requests_total"])
            restarts.add_metric(label, worker["restarts"])
            rss.add_metric(label, worker["rss_bytes"])
            cpu.add_metric(label, worker["cpu_seconds"])
            looping.add_metric(label, 1.0 if worker["crash_looping"] else 0.0)
        yield from (up, conns, active, requests, restarts, rss, cpu, looping, classes, durations)
        yield GaugeMetricFamily("rrproxy_workers", "worker slots", value=len(workers))
        responses = CounterMetricFamily(
            "rrproxy_responses", "responses by status code", labels=["status"]
        )
        for code, count in status["responses"].items():
            responses.add_metric([code], count)
        yield responses
        latency = status["latency"]
        yield HistogramMetricFamily(
            "rrproxy_request_duration_seconds",
            "time from a request's head to the end of its response",
            buckets=_buckets(latency["buckets"], latency["counts"]),
            sum_value=latency["sum"],
        )
        front = status["front"]
        yield CounterMetricFamily(
            "rrproxy_front_connections_handed",
            "connections the front handed to workers (rr)",
            value=front["handed_total"],
        )
        yield CounterMetricFamily(
            "rrproxy_front_connections_rehanded",
            "connections handed again after a worker died or returned them",
            value=front["rehanded_total"],
        )
        yield CounterMetricFamily(
            "rrproxy_front_cpu_seconds", "CPU time of the front", value=front["cpu_seconds"]
        )
        yield GaugeMetricFamily(
            "rrproxy_front_queued_connections",
            "connections accepted and waiting for a worker to take them",
            value=front["queued"],
        )
        yield GaugeMetricFamily(
            "rrproxy_front_held_connections",
            "connections handed to a worker that has not yet read them (the front keeps "
            "its copy until then)",
            value=front["held"],
        )
        yield CounterMetricFamily(
            "rrproxy_front_messages_dropped",
            "messages not delivered to a worker that left its channel unread",
            value=front["messages_dropped"],
        )
        yield GaugeMetricFamily(
            "rrproxy_state_memory_bytes",
            "bytes held by the memory state store (--state-max-memory)",
            value=front["state_bytes"],
        )


def _buckets(bounds: list[float], counts: list[int]) -> list[tuple[str, int]]:
    """Per-bucket counts as Prometheus's cumulative `le` buckets."""
    cumulative, out = 0, []
    for bound, count in zip([*bounds, float("inf")], counts, strict=True):
        cumulative += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return out


def render(status: dict[str, Any]) -> bytes:
    """The /metrics body for a status snapshot (front/status.py), served with
    CONTENT_TYPE."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(status))
    return generate_latest(registry)
