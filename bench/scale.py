"""Scaling benchmark: throughput as notification worker processes are added, and what limits each step.

One real redis-server; for each count of ``conveyor worker --queues notifications`` processes in ``WORKERS`` a fresh
Conveyor stack (one ``conveyor api``, the workers, ``conveyor flower``, SQLite job store) takes ``JOBS`` ``log``
notifications from ``throughput.CLIENTS`` concurrent clients in batches of ``throughput.BATCH`` and is done when
every ``job.succeeded`` has arrived on an open ``/ws`` (the same burst as ``throughput``'s ``conveyor-unbundled``:
``CONVEYOR_BUNDLE_MAX=1``, every job its own task message, so that what is measured is what each worker process
adds; with bundles, one worker keeps up with what the api accepts on this machine).

Each row gives jobs/s (and its ratio to one worker), CPU per 1,000 jobs, the machine's idle share, each part's CPU
in cores (CPU seconds over the run's seconds) and the **limiting resource** read off those: the machine's cores when
it has (almost) no idle time left, else a part near one full core (the api's event loop, Redis, Flower, or each
worker process: its threads share one interpreter lock), else none saturated (waits and hand-offs). The curve is
drawn to ``scale.svg`` in the results directory, next to an ideal line (one worker's rate times the count).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvloop

from bench import jobstack, procs
from bench.report import Metric, Report
from bench.throughput import BATCH, CLIENTS, conveyor_burst

NAME = "scale"
DESCRIPTION = "throughput with 1 to 4 notification worker processes, each step's limiting resource"
WORKERS, QUICK_WORKERS = (1, 2, 3, 4), (1, 2)
JOBS, QUICK_JOBS = 3000, 200
#: Below this idle share the machine's cores are the limit (on 2 cores, 20 % idle is 0.4 of a core: less than any
#: part needs to take one more step, and the parts wait for a core more than they run).
IDLE_LIMIT = 0.20
#: A single-threaded part using at least this share of one core is the limit.
CORE_LIMIT = 0.85
BASELINE = "1 worker"

METRICS = [
    Metric("jobs_per_s", "throughput", "jobs/s", True),
    Metric("cpu_s_per_1000", "CPU per 1,000 jobs", "s", False, compare=False),
    Metric("idle", "machine idle", "%", True, compare=False),
    Metric("api_cores", "api", "cores", False, compare=False),
    Metric("workers_cores", "workers", "cores", False, compare=False),
    Metric("redis_cores", "Redis", "cores", False, compare=False),
    Metric("flower_cores", "Flower", "cores", False, compare=False),
]


def subject(workers: int) -> str:
    return f"{workers} worker{'s' if workers > 1 else ''}"


def cores(meter: jobstack.Meter) -> dict[str, float]:
    """Each part's CPU in cores over the measurement: api, workers (all of them), Redis, Flower, the client."""
    seconds = meter.seconds or 1.0
    parts = {"api": 0.0, "workers": 0.0, "redis": 0.0, "flower": 0.0, "client": 0.0}
    for name, used in meter.used.items():
        part = "workers" if name.startswith("worker") else name
        if part in parts:
            parts[part] += used / seconds
    return parts


def limit(meter: jobstack.Meter, parts: dict[str, float], workers: int) -> str:
    """The limiting resource of one step, read off the machine's idle share and each part's cores (a worker process
    runs its jobs on threads under one interpreter lock, so one near a full core is its own limit)."""
    busiest = max((part for part in parts if part != "client"), key=lambda part: parts[part])
    if meter.idle < IDLE_LIMIT:
        return (
            f"the machine's {os.cpu_count()} cores (idle {meter.idle:.0%}; busiest: {busiest} "
            f"{parts[busiest]:.2f} cores, load generator {parts['client']:.2f}, other work on the machine "
            f"{meter.others / (meter.seconds or 1.0):.2f})"
        )
    for part in ("api", "redis", "flower"):
        if parts[part] >= CORE_LIMIT:
            return f"the {part} process, single-threaded: {parts[part]:.2f} of a core (machine idle {meter.idle:.0%})"
    each = parts["workers"] / workers
    if each >= CORE_LIMIT:
        return f"each worker process near a full core ({each:.2f}; one interpreter lock), machine idle {meter.idle:.0%}"
    return f"no part saturated (workers {each:.2f} cores each, machine idle {meter.idle:.0%}): waits and hand-offs"


def svg(points: list[tuple[int, float]], title: str) -> str:
    """A line chart of jobs/s by worker count, with the ideal (linear) line, as a standalone SVG document."""
    width, height, left, right, top, bottom = 560, 340, 70, 20, 40, 50
    counts = [count for count, _ in points]
    ideal = [(count, points[0][1] * count) for count in counts]
    top_value = max(value for _, value in points + ideal) * 1.1
    span = max(counts) - min(counts) or 1

    def x(count: float) -> float:
        return left + (count - min(counts)) / span * (width - left - right)

    def y(value: float) -> float:
        return height - bottom - value / top_value * (height - top - bottom)

    def line(series: list[tuple[int, float]], colour: str, dash: str = "") -> str:
        path = " ".join(f"{x(c):.1f},{y(v):.1f}" for c, v in series)
        dots = "".join(f'<circle cx="{x(c):.1f}" cy="{y(v):.1f}" r="4" fill="{colour}"/>' for c, v in series)
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        return f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{extra}/>{dots}'

    step = 10 ** (len(str(int(top_value))) - 1)
    ticks = [value for value in range(0, int(top_value) + 1, step if top_value / step >= 3 else step // 2 or 1)]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>',
    ]
    for value in ticks:
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value}</text>'
        )
    for count in counts:
        parts.append(f'<text x="{x(count):.1f}" y="{height - bottom + 18}" text-anchor="middle">{count}</text>')
    parts += [
        f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle">notification worker processes</text>',
        f'<text x="16" y="{height / 2}" transform="rotate(-90 16 {height / 2})" text-anchor="middle">jobs/s</text>',
        line(ideal, "#999", "6 4"),
        line(points, "#1f6feb"),
        f'<text x="{left + 8}" y="{top + 12}" fill="#1f6feb">measured</text>',
        f'<text x="{left + 8}" y="{top + 28}" fill="#777">ideal (1 worker × n)</text>',
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def run(options: argparse.Namespace) -> Report:
    """One stack per worker count of ``WORKERS`` (``QUICK_WORKERS`` and ``QUICK_JOBS`` with ``--quick``)."""
    quick = getattr(options, "quick", False)
    jobs, counts = (QUICK_JOBS, QUICK_WORKERS) if quick else (JOBS, WORKERS)
    report = Report(name=NAME, description=DESCRIPTION, metrics=METRICS, baseline=BASELINE)
    setting = f"N={jobs}, batches of {BATCH}"
    points: list[tuple[int, float]] = []
    with jobstack.work_dir(NAME) as root, procs.redis_server(root / "redis") as (redis_url, redis):
        for workers in counts:
            name = subject(workers)
            with jobstack.conveyor(redis_url, root / f"w{workers}", workers=workers, bundle_max=1) as stack:
                meter = jobstack.Meter({"redis": redis.pid, **stack.group.pids()}, redis_url)
                jobstack.wait_quiet(meter.pids)
                accepted, seconds = uvloop.run(conveyor_burst(stack, jobs, meter, BATCH, f"scale-{workers}"))
            parts = cores(meter)
            values: dict[str, float | None] = {
                "jobs_per_s": jobs / seconds,
                "idle": meter.idle * 100,
                **{f"{part}_cores": used for part, used in parts.items() if part != "client"},
            }
            notes = (
                f"{CLIENTS} clients, {BATCH} per POST /notifications:batch, Flower on; all accepted (202) at "
                f"{jobs / accepted:.0f}/s; limit: {limit(meter, parts, workers)}"
            )
            jobstack.add_row(report, setting, name, values, meter, jobs, notes)
            points.append((workers, jobs / seconds))
    report.findings.append(jobstack.cpu_note(True))
    out: Path = getattr(options, "out", Path(__file__).resolve().parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    chart = out / "scale.svg"
    chart.write_text(svg(points, f"Conveyor throughput by worker processes ({os.cpu_count()} cores, {setting})"))
    report.findings.append(f"curve: {chart}")
    print(f"  curve: {chart}", flush=True)
    return report
