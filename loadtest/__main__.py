"""`python -m loadtest`: compare rrproxy's scheduling policies under real load.

    python -m loadtest --scenarios hello,mixed --modes keep-alive,close \\
        --policies rr,none,reuseport,least-conn,ip-hash --workers 4 --duration 10
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import os
import platform
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from rrproxy.config import POLICIES

from .scenarios import SCENARIOS

MODES = ("keep-alive", "close")


def _list(choices: tuple[str, ...] | list[str]):
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"choose from {', '.join(choices)} (got {', '.join(unknown) or 'nothing'})"
            )
        return items

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Run rrproxy with each policy and scenario under load; report "
        "throughput, latency percentiles, errors and per-worker fairness.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--scenarios",
        type=_list(list(SCENARIOS)),
        default=["hello"],
        help=f"comma-separated: {', '.join(SCENARIOS)}",
    )
    p.add_argument(
        "--modes",
        type=_list(MODES),
        default=list(MODES),
        help="keep-alive (connections reused) and/or close (one per request)",
    )
    p.add_argument(
        "--policies",
        type=_list(POLICIES),
        default=list(POLICIES),
        help="comma-separated rrproxy policies",
    )
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=32, help="clients (connections)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="open-loop: requests per second in all (default: closed-loop)",
    )
    p.add_argument(
        "--generator",
        choices=("trio", "wrk"),
        default="trio",
        help="the built-in trio client, or wrk (closed-loop only)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: loadtest/out/<timestamp>)"
    )
    p.add_argument("--no-charts", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["front"]:
        from .front import main as front_main

        return front_main(argv[1:])
    if argv[:1] == ["faults"]:
        from .faults import main as faults_main

        return faults_main(argv[1:])
    if argv[:1] == ["memory"]:
        from .memory import main as memory_main

        return memory_main(argv[1:])
    if argv[:1] == ["idle"]:
        from .idle import main as idle_main

        return idle_main(argv[1:])
    args = parser().parse_args(argv)
    missing = [m for m in ("hdrh", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"loadtest: needs {', '.join(missing)}: pip install 'rrproxy[loadtest]'",
            file=sys.stderr,
        )
        return 2
    from .harness import run_one
    from .report import table, write_charts, write_json, write_markdown

    if args.duration <= 0 or args.duration > 600 or args.concurrency < 1:
        print("loadtest: --duration must be in (0, 600] and --concurrency >= 1", file=sys.stderr)
        return 2
    if args.rate and args.generator == "wrk":
        print("loadtest: --rate needs the trio generator", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or Path(__file__).resolve().parent / "out" / stamp
    out.mkdir(parents=True, exist_ok=True)
    console = Console() if sys.stdout.isatty() else Console(width=170)
    plan = [(s, m, p) for s in args.scenarios for m in args.modes for p in args.policies]
    runs = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[rps]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        overall = progress.add_task("all runs", total=len(plan), rps="")
        for scenario, mode, policy in plan:
            task = progress.add_task(f"{scenario} {mode} {policy}", total=args.duration, rps="")
            count = [0]

            def tick(task: int = task, count: list[int] = count) -> None:
                count[0] += 1
                if count[0] % 200 == 0:
                    progress.update(task, rps=f"{count[0]} requests")

            run = run_one(
                SCENARIOS[scenario],
                policy,
                mode,
                workers=args.workers,
                concurrency=args.concurrency,
                duration=args.duration,
                warmup=args.warmup,
                rate=args.rate,
                seed=args.seed,
                generator=args.generator,
                workdir=out,
                on_progress=tick,
            )
            progress.update(
                task, completed=args.duration, rps=f"{run['load']['throughput_rps']:.0f} req/s"
            )
            progress.advance(overall)
            runs.append(run)
    results = {
        "command": "python -m loadtest " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "versions": {name: _version(name) for name in ("rrproxy", "trio", "h11")},
        "runs": runs,
    }
    write_json(out / "results.json", results)
    write_markdown(out / "report.md", results)
    if not args.no_charts:
        write_charts(out, runs)
    console.print(table(runs))
    console.print(f"results in {out}")
    return 0


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
