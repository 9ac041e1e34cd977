"""Latency: from submitting a job to learning that it succeeded, at a fixed open-loop rate, three ways, one run.

On one real redis-server, in turn (each subject's processes run only while it is measured, each after a warm-up):

- ``celery`` (the baseline): plain Celery (:mod:`bench.plain_celery`), ``apply_async()`` of a no-op task then
  ``AsyncResult.get()`` on the Redis result backend, from a pool of client threads;
- ``conveyor``: ``POST /notifications`` (a ``log`` notification) then its ``job.succeeded`` event on a ``/ws``
  opened beforehand (no filter: every job event of the caller's);
- ``polling``: the same POST, then ``GET /jobs/{id}`` every ``POLL_INTERVAL`` until it says ``succeeded``.

Sends follow a fixed schedule (``RATE`` per second) whatever earlier jobs do, and each latency is measured from
the send's scheduled time, so a stall shows in the figures instead of slowing the sender. CPU per 1,000 jobs at
that rate is summed over the subject's process trees and Redis (and the client threads, for plain Celery).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import uvloop

from bench import jobstack, procs
from bench.plain_celery import NOOP, create_app
from bench.report import Metric, Report

NAME = "latency"
DESCRIPTION = (
    "submit → job.succeeded on an open WebSocket at a fixed open-loop rate, vs plain Celery's apply_async → "
    "AsyncResult.get() and vs polling GET /jobs/{id}"
)
RATE = 50.0
JOBS, QUICK_JOBS = 1000, 100
WARMUP = 20
POLL_INTERVAL = 0.1
#: Client threads for plain Celery: each waits on one result at a time, so this bounds the jobs in flight.
THREADS = 16
DEADLINE = 120.0
METRICS = [
    Metric("p50_ms", "p50", "ms", False),
    Metric("p95_ms", "p95", "ms", False),
    Metric("p99_ms", "p99", "ms", False),
    Metric("max_ms", "max", "ms", False),
    Metric("cpu_s_per_1000", "CPU per 1,000 jobs", "s", False),
]


def celery_round_trips(redis_url: str, jobs: int, rate: float, meter: jobstack.Meter) -> list[float]:
    """Open loop: at each scheduled time a client thread calls ``apply_async()`` and waits on ``get()``."""
    app = create_app(redis_url)
    noop = app.tasks[NOOP]
    try:
        with ThreadPoolExecutor(THREADS) as pool:
            gate = threading.Barrier(THREADS)

            def warm(_: int) -> None:  # every thread opens its own result consumer before the clock starts
                gate.wait(jobstack.WARMUP_TIMEOUT)
                noop.apply_async().get(timeout=jobstack.WARMUP_TIMEOUT)

            list(pool.map(warm, range(THREADS)))
            for _ in range(WARMUP - THREADS):
                noop.apply_async().get(timeout=jobstack.WARMUP_TIMEOUT)
            start = time.perf_counter() + 0.1

            def one(i: int) -> float:
                at = start + i / rate
                time.sleep(max(0.0, at - time.perf_counter()))
                noop.apply_async().get(timeout=DEADLINE)
                return time.perf_counter() - at

            with jobstack.profiled("latency-celery", meter.pids), meter:
                return list(pool.map(one, range(jobs)))
    finally:
        app.close()


async def open_loop(jobs: int, rate: float, one: Callable[[float], Awaitable[None]]) -> None:
    """Run ``one(at)`` for ``jobs`` sends scheduled ``1/rate`` apart on the loop's clock, each at its time."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1

    async def at(when: float) -> None:
        await asyncio.sleep(max(0.0, when - loop.time()))
        await one(when)

    await asyncio.gather(*(at(start + i / rate) for i in range(jobs)))


async def conveyor_round_trips(stack: jobstack.Conveyor, jobs: int, rate: float, meter: jobstack.Meter) -> list[float]:
    """Open loop: POST at each scheduled time; a job is done when its ``job.succeeded`` arrives on the socket."""
    async with jobstack.session(stack, 64, WARMUP) as (http, events):
        sent: dict[str, float] = {}

        async def one(at: float) -> None:
            sent[await jobstack.submit(http)] = at

        with jobstack.profiled("latency-conveyor", stack.group.pids()), meter:
            await open_loop(jobs, rate, one)
            await events.wait(sent, DEADLINE)
    return [events.done[job] - at for job, at in sent.items()]


async def polling_round_trips(stack: jobstack.Conveyor, jobs: int, rate: float, meter: jobstack.Meter) -> list[float]:
    """Open loop: POST at each scheduled time, then ``GET /jobs/{id}`` every ``POLL_INTERVAL`` until it succeeded."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    async with stack.http(64) as http:
        async with jobstack.Completions(stack) as events:  # for the warm-up only: polling needs no socket
            await jobstack.warm_up(stack, http, events, WARMUP)

        async def one(at: float) -> None:
            job_id = await jobstack.submit(http)
            while True:
                await asyncio.sleep(POLL_INTERVAL)
                answer = await http.get(f"/jobs/{job_id}")
                status = answer.json().get("status")
                if status == "succeeded":
                    latencies.append(loop.time() - at)
                    return
                if answer.status_code != 200 or status in ("failed", "cancelled"):
                    raise RuntimeError(f"GET /jobs/{job_id}: {answer.status_code} {answer.text[:300]}")

        with meter:
            await asyncio.wait_for(open_loop(jobs, rate, one), DEADLINE + jobs / rate)
    return latencies


def run(options: argparse.Namespace) -> Report:
    """Plain Celery, then Conveyor over the WebSocket, then Conveyor polled; ``JOBS`` each (``QUICK_JOBS``)."""
    jobs = QUICK_JOBS if getattr(options, "quick", False) else JOBS
    report = jobstack.new_report(
        NAME,
        DESCRIPTION,
        METRICS,
        [
            "conveyor p50 ≤ 1.5× and p99 ≤ 2× plain Celery's round trip",
            "polling p50 ≥ 10× conveyor's",
            "CPU per job ≤ 1.5× plain Celery's",
        ],
    )
    setting = f"N={jobs} at {RATE:g}/s"
    with jobstack.work_dir(NAME) as root, procs.redis_server(root / "redis") as (redis_url, redis):

        def measure(subject: str, latencies: list[float], meter: jobstack.Meter, notes: str) -> None:
            values = jobstack.percentiles(latencies)
            jobstack.add_row(report, setting, subject, values, meter, jobs, f"{len(latencies)} jobs; {notes}")

        with jobstack.plain_celery(redis_url, root / "celery") as group:
            meter = jobstack.Meter({"redis": redis.pid, **group.pids()}, redis_url)
            jobstack.wait_quiet(meter.pids)
            latencies = celery_round_trips(redis_url, jobs, RATE, meter)
            measure("celery", latencies, meter, f"{THREADS} client threads, results by Redis pub/sub")
        with jobstack.conveyor(redis_url, root / "conveyor") as stack:
            meter = jobstack.Meter({"redis": redis.pid, **stack.group.pids()}, redis_url)
            jobstack.wait_quiet(meter.pids)
            latencies = uvloop.run(conveyor_round_trips(stack, jobs, RATE, meter))
            measure("conveyor", latencies, meter, "events on one /ws opened before")
            meter = jobstack.Meter({"redis": redis.pid, **stack.group.pids()}, redis_url)
            jobstack.wait_quiet(meter.pids)
            latencies = uvloop.run(polling_round_trips(stack, jobs, RATE, meter))
            measure("polling", latencies, meter, f"GET /jobs/{{id}} every {POLL_INTERVAL * 1000:.0f} ms")
            auth = stack.authenticated
    by = {row.subject: row.values for row in report.rows}
    polled, pushed = by["polling"]["p50_ms"], by["conveyor"]["p50_ms"]
    if polled and pushed:
        report.findings.append(f"polling p50 / conveyor p50 = {polled / pushed:.1f}×")
    report.findings.append(jobstack.cpu_note(auth))
    return report
