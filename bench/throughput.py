"""Throughput and cost: N jobs as fast as they go, and the CPU seconds every process spent per 1,000 of them.

On one real redis-server, in turn (each subject's processes run only while it is measured, each after a warm-up):

- ``celery`` (the baseline): plain Celery (:mod:`bench.plain_celery`) publishes N no-op tasks with ``apply_async()``
  from one client thread, then waits for every result (Redis result backend);
- ``conveyor``: ``CLIENTS`` concurrent HTTP clients (kept-alive connections) ``POST /notifications`` (a ``log``
  notification) N times in all; done when every ``job.succeeded`` event has arrived on a ``/ws`` opened beforehand;
- ``conveyor-batch``: the same, but each request is a ``POST /notifications:batch`` of ``BATCH`` notifications.

jobs/s = N / (first send → last completion seen). CPU is read from ``/proc`` for whole process trees (a prefork
worker's pool included) before and after: Conveyor's api, worker and Redis; plain Celery's worker, Redis and the
client process, which publishes and consumes results. Conveyor's HTTP/WebSocket client is reported apart.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvloop

from bench import jobstack, procs
from bench.plain_celery import NOOP, create_app
from bench.report import Metric, Report

NAME = "throughput"
DESCRIPTION = (
    "N jobs from concurrent HTTP clients to their job.succeeded events vs plain Celery publishing N no-op tasks "
    "and waiting for every result; CPU seconds per 1,000 jobs over every process"
)
JOBS, QUICK_JOBS = 2000, 100
CLIENTS = 32
#: Notifications per ``POST /notifications:batch`` in the ``conveyor-batch`` subject.
BATCH = 50
WARMUP = 20
DEADLINE = 600.0
METRICS = [
    Metric("jobs_per_s", "throughput", "jobs/s", True),
    Metric("cpu_s_per_1000", "CPU per 1,000 jobs", "s", False),
]


def celery_burst(redis_url: str, jobs: int, meter: jobstack.Meter) -> float:
    """Publish ``jobs`` no-op tasks, then wait for every result; returns the seconds from first publish to last."""
    app = create_app(redis_url)
    noop = app.tasks[NOOP]
    try:
        for _ in range(WARMUP):
            noop.apply_async().get(timeout=jobstack.WARMUP_TIMEOUT)
        with jobstack.profiled("throughput-celery", meter.pids), meter:
            started = time.perf_counter()
            results = [noop.apply_async() for _ in range(jobs)]
            for result in results:
                result.get(timeout=DEADLINE)
            return time.perf_counter() - started
    finally:
        app.close()


async def conveyor_burst(
    stack: jobstack.Conveyor, jobs: int, meter: jobstack.Meter, batch: int = 1
) -> tuple[float, float]:
    """Submit ``jobs`` jobs from ``CLIENTS`` concurrent clients, ``batch`` per request (``1``: the single-job
    route); returns the seconds to the last 202 and to the last ``job.succeeded``, both from the first send."""
    loop = asyncio.get_running_loop()
    async with jobstack.session(stack, CLIENTS, WARMUP) as (http, events):
        job_ids: list[str] = []
        tickets = iter(range(0, jobs, batch))

        async def client() -> None:
            for first in tickets:
                if batch == 1:
                    job_ids.append(await jobstack.submit(http))
                else:
                    job_ids.extend(await jobstack.submit_batch(http, min(batch, jobs - first)))

        with jobstack.profiled(f"throughput-conveyor-{batch}", stack.group.pids()), meter:
            started = loop.time()
            await asyncio.gather(*(client() for _ in range(CLIENTS)))
            accepted = loop.time()
            await events.wait(job_ids, DEADLINE)
        return accepted - started, max(events.done[job] for job in job_ids) - started


def run(options: argparse.Namespace) -> Report:
    """Plain Celery, then Conveyor; ``JOBS`` jobs each (``QUICK_JOBS`` with ``--quick``)."""
    jobs = QUICK_JOBS if getattr(options, "quick", False) else JOBS
    report = jobstack.new_report(
        NAME,
        DESCRIPTION,
        METRICS,
        [
            "throughput ≥ 0.8× plain Celery's (≥ 1.0× with the batch endpoint)",
            "CPU per 1,000 jobs ≤ 1.5× plain Celery's",
        ],
    )
    setting = f"N={jobs}"
    with jobstack.work_dir(NAME) as root, procs.redis_server(root / "redis") as (redis_url, redis):

        def measure(subject: str, seconds: float, meter: jobstack.Meter, notes: str) -> None:
            jobstack.add_row(report, setting, subject, {"jobs_per_s": jobs / seconds}, meter, jobs, notes)

        with jobstack.plain_celery(redis_url, root / "celery") as group:
            meter = jobstack.Meter({"redis": redis.pid, **group.pids()}, redis_url)
            jobstack.wait_quiet(meter.pids)
            seconds = celery_burst(redis_url, jobs, meter)
            measure("celery", seconds, meter, "1 client thread publishes all, then waits for each result")
        for subject, batch, how in (
            ("conveyor", 1, f"{CLIENTS} HTTP clients"),
            ("conveyor-batch", BATCH, f"{CLIENTS} HTTP clients, {BATCH} per POST /notifications:batch"),
        ):
            with jobstack.conveyor(redis_url, root / subject) as stack:
                meter = jobstack.Meter({"redis": redis.pid, **stack.group.pids()}, redis_url)
                jobstack.wait_quiet(meter.pids)
                accepted, seconds = uvloop.run(conveyor_burst(stack, jobs, meter, batch))
                notes = f"{how}; all {jobs} accepted (202) at {jobs / accepted:.0f}/s (client CPU not counted)"
                measure(subject, seconds, meter, notes)
                auth = stack.authenticated
    report.findings.append(jobstack.cpu_note(auth))
    return report
