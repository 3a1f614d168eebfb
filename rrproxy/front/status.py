"""The front's picture of the cluster as plain data: what /status returns and what
/metrics and `rrproxy status` are built from."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import trio

from .. import __version__
from ..ipc.messages import LATENCY_BUCKETS

if TYPE_CHECKING:
    from .main import Front

STARTED_AT = time.time()


def snapshot(front: Front, with_history: bool = False) -> dict[str, Any]:
    """The cluster now: each slot's counters (its past processes' included), the
    totals, the front's own figures and the recent rates; with `with_history`, the
    sparklines' series too."""
    supervisor = front.supervisor
    dispatcher = front.dispatcher
    now = trio.current_time()
    recent = front.history.now()
    workers: list[dict[str, Any]] = []
    statuses: dict[int, int] = {}
    latency = [0] * (len(LATENCY_BUCKETS) + 1)
    latency_sum = 0.0
    for slot_id in sorted(supervisor.slots):
        slot = supervisor.slots[slot_id]
        processes = list(slot.processes)
        current = slot.current
        slot_latency_sum = slot.past_latency_sum
        rss = 0.0
        cpu = slot.past_cpu_seconds
        slot_statuses = dict(slot.past_statuses)
        slot_latency = list(slot.past_latency_counts) or [0] * len(latency)
        for process in processes:
            for code, count in process.statuses.items():
                slot_statuses[code] = slot_statuses.get(code, 0) + count
            for i, count in enumerate(process.latency_counts):
                slot_latency[i] += count
            slot_latency_sum += process.latency_sum
            rss += process.rss_bytes() or 0
            read = process.cpu_seconds()
            cpu += process.last_cpu_seconds if read is None else read
        for code, count in slot_statuses.items():
            statuses[code] = statuses.get(code, 0) + count
        for i, count in enumerate(slot_latency):
            latency[i] += count
        latency_sum += slot_latency_sum
        live = recent["workers"].get(slot.id, {})
        if current is not None:
            state = current.state.value
        else:
            state = "backoff" if slot.restart_at else "stopped"
        workers.append(
            {
                "id": slot.id,
                "pid": current.pid if current else None,
                "state": "draining" if slot.removed and current else state,
                "started_at": current.started_at if current else None,
                "connections_total": slot.past_connections
                + sum(p.connections_total for p in processes),
                "connections_active": sum(p.connections_active for p in processes),
                "requests_total": slot.past_requests + sum(p.requests_total for p in processes),
                "requests_per_s": round(sum(p.request_rate for p in processes), 1),
                "restarts": slot.restarts,
                "crash_looping": supervisor.crash_looping(slot),
                "restart_in_s": round(max(0.0, slot.restart_at - now), 3)
                if slot.restart_at and current is None
                else None,
                "rss_bytes": int(rss),
                "cpu_seconds": round(cpu, 3),
                "cpu_percent": live.get("cpu_percent"),
                "latency_p50_ms": live.get("latency_p50_ms"),
                "latency_p99_ms": live.get("latency_p99_ms"),
                "responses": status_classes(slot_statuses),
                "latency_counts": slot_latency,
                "latency_sum": round(slot_latency_sum, 6),
                "last_exit": slot.last_exit,
                "processes": len(processes),
            }
        )
    totals = {
        "workers": len(workers),
        "ready": sum(1 for w in workers if w["state"] == "ready"),
        **{
            key: sum(w[key] for w in workers)
            for key in (
                "connections_total",
                "connections_active",
                "requests_total",
                "restarts",
                "rss_bytes",
            )
        },
        "requests_per_s": round(sum(w["requests_per_s"] for w in workers), 1),
    }
    times = os.times()
    out = {
        "version": __version__,
        "policy": front.config.policy,
        "loop": front.config.worker.loop,
        "pid": os.getpid(),
        "uptime_s": round(time.time() - STARTED_AT, 3),
        "listening": front.url,
        "reloading": supervisor.reloading,
        "workers": workers,
        "totals": totals,
        "front": {
            "cpu_seconds": round(times.user + times.system, 3),
            "cpu_percent": recent["front"].get("cpu_percent"),
            "handoffs_per_s": recent["front"].get("handoffs_per_s"),
            "handed_total": dispatcher.handed_total if dispatcher else 0,
            "rehanded_total": dispatcher.rehanded_total if dispatcher else 0,
            "queued": len(dispatcher.queue) if dispatcher else 0,
            "held": dispatcher.held if dispatcher else 0,
            "messages_dropped": supervisor.router.dropped_total,
            "state_bytes": supervisor.state_store.used_bytes,
            "state_keys": len(supervisor.state_store),
        },
        "fairness": recent["fairness"],
        "responses": {str(code): count for code, count in sorted(statuses.items())},
        "latency": {
            "buckets": list(LATENCY_BUCKETS),
            "counts": latency,
            "sum": latency_sum,
        },
    }
    if with_history:
        out["history"] = front.history.series()
    return out


def status_classes(statuses: dict[int, int]) -> dict[str, int]:
    """Responses by class: {"1xx": n, "2xx": n, ... "5xx": n}."""
    classes = {f"{digit}xx": 0 for digit in "12345"}
    for code, count in statuses.items():
        key = f"{code // 100}xx"
        if key in classes:
            classes[key] += count
    return classes
