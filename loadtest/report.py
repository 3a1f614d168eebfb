"""Fairness, tables, results.json, report.md and charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table


def jain(values: list[float]) -> float:
    """Jain's fairness index: 1 when even, 1/n when one takes everything."""
    total = sum(values)
    squares = sum(v * v for v in values)
    if not values or squares == 0:
        return 1.0
    return total * total / (len(values) * squares)


def max_over_mean(values: list[float]) -> float:
    mean = sum(values) / len(values) if values else 0
    return max(values) / mean if mean else 1.0


def run_label(run: dict[str, Any]) -> str:
    return f"{run['scenario']} {run['mode']}"


def table(runs: list[dict[str, Any]]) -> Table:
    out = Table(title="rrproxy policies compared", title_justify="left")
    for column in (
        "scenario",
        "mode",
        "policy",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "per-worker requests",
        "Jain",
        "max/mean",
        "front cpu s",
    ):
        out.add_column(
            column, justify="left" if column in ("scenario", "mode", "policy") else "right"
        )
    for run in runs:
        latency = run["load"]["latency_ms"]
        out.add_row(
            run["scenario"],
            run["mode"],
            run["policy"],
            f"{run['load']['throughput_rps']:.0f}",
            f"{latency['p50']:.2f}",
            f"{latency['p99']:.2f}",
            f"{latency['p99.9']:.2f}",
            f"{latency['max']:.1f}",
            str(sum(run["load"]["errors"].values())),
            "/".join(str(x) for x in run["server"]["requests_per_worker"]),
            f"{run['server']['jain_requests']:.3f}",
            f"{run['server']['max_over_mean']:.2f}",
            f"{run['server']['front_cpu_s']:.2f}",
        )
    return out


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    lines = [
        "# rrproxy load test",
        "",
        f"Machine: {results['machine']['cpus']} CPUs, {results['machine']['platform']}, "
        f"Python {results['machine']['python']}. rrproxy {results['versions']['rrproxy']}.",
        f"Options: `{results['command']}`",
        "",
        "| scenario | mode | policy | req/s | p50 ms | p99 ms | p99.9 ms | max ms | errors "
        "| per-worker requests | Jain | max/mean | front CPU s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in results["runs"]:
        latency = run["load"]["latency_ms"]
        lines.append(
            f"| {run['scenario']} | {run['mode']} | {run['policy']} "
            f"| {run['load']['throughput_rps']:.0f} | {latency['p50']:.2f} "
            f"| {latency['p99']:.2f} | {latency['p99.9']:.2f} | {latency['max']:.1f} "
            f"| {sum(run['load']['errors'].values())} "
            f"| {' / '.join(str(x) for x in run['server']['requests_per_worker'])} "
            f"| {run['server']['jain_requests']:.3f} | {run['server']['max_over_mean']:.2f} "
            f"| {run['server']['front_cpu_s']:.2f} |"
        )
    lines += [
        "",
        "![throughput and p99](throughput_p99.png)",
        "",
        "![per-worker share](worker_share.png)",
        "",
    ]
    path.write_text("\n".join(lines))


def write_charts(out: Path, runs: list[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(run_label(r) for r in runs))
    policies = list(dict.fromkeys(r["policy"] for r in runs))
    by_key = {(run_label(r), r["policy"]): r for r in runs}
    width = 0.8 / max(1, len(policies))
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(max(7, 2.2 * len(groups)), 7))
    for i, policy in enumerate(policies):
        xs = [g + (i - (len(policies) - 1) / 2) * width for g in range(len(groups))]
        rps = [
            by_key[(g, policy)]["load"]["throughput_rps"] if (g, policy) in by_key else 0
            for g in groups
        ]
        p99 = [
            by_key[(g, policy)]["load"]["latency_ms"]["p99"] if (g, policy) in by_key else 0
            for g in groups
        ]
        top.bar(xs, rps, width, label=policy)
        bottom.bar(xs, p99, width, label=policy)
    for axis, title in (
        (top, "throughput (req/s, higher is better)"),
        (bottom, "p99 latency (ms, lower is better)"),
    ):
        axis.set_xticks(range(len(groups)), groups)
        axis.set_title(title)
        axis.grid(axis="y", alpha=0.3)
    top.legend(ncols=min(5, len(policies)), fontsize="small")
    figure.tight_layout()
    first = out / "throughput_p99.png"
    figure.savefig(first, dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(
        1, len(groups), figsize=(max(7, 3.2 * len(groups)), 4), squeeze=False
    )
    for axis, group in zip(axes[0], groups, strict=True):
        bottoms = [0.0] * len(policies)
        workers = max(
            len(by_key[(group, p)]["server"]["requests_per_worker"])
            for p in policies
            if (group, p) in by_key
        )
        for w in range(workers):
            shares = []
            for policy in policies:
                run = by_key.get((group, policy))
                counts = run["server"]["requests_per_worker"] if run else []
                total = sum(counts) or 1
                shares.append(100 * counts[w] / total if w < len(counts) else 0)
            axis.bar(policies, shares, bottom=bottoms, label=f"worker {w + 1}")
            bottoms = [b + s for b, s in zip(bottoms, shares, strict=True)]
        axis.set_title(f"{group}: request share (%)")
        axis.set_ylim(0, 100)
        axis.tick_params(axis="x", rotation=30)
    axes[0][0].legend(fontsize="small")
    figure.tight_layout()
    second = out / "worker_share.png"
    figure.savefig(second, dpi=110)
    plt.close(figure)
    return [first, second]


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=1))
