"""Latency: from submitting a job to learning that it succeeded, at a fixed open-loop rate, three ways, one run.

On one real redis-server (each subject measured after a warm-up):

- ``celery`` (the baseline): plain Celery (:mod:`bench.plain_celery`), ``apply_async()`` of a no-op task then
  ``AsyncResult.get()`` on the Redis result backend, from a pool of client threads;
- ``conveyor``: ``POST /notifications`` (a ``log`` notification) then its ``job.succeeded`` event on a ``/ws``
  opened beforehand (no filter: every job event of the caller's);
- ``polling``: the same POST, then ``GET /jobs/{id}`` every ``POLL_INTERVAL`` until it says ``succeeded``;
- ``tutorial``: the tutorial stack (:mod:`bench.tutorial_stack`): ``POST /tasks``, then ``GET /tasks/{id}`` every
  ``POLL_INTERVAL`` until it says ``SUCCESS``.

Conveyor runs its api, one notifications worker and Flower; HTTP requests go over kept-alive raw HTTP/1.1
connections (:mod:`bench.loadgen`), so the client costs little of the machine it shares.

Plain Celery and Conveyor, whose ratios are the goals, run side by side and are measured in ``ROUNDS`` alternating
rounds of ``jobs / ROUNDS`` each (celery, conveyor, celery, conveyor), their latencies and CPU pooled over the
rounds: a machine whose speed drifts within a minute or two (this one's does) weighs on both sides alike, instead
of on whichever was measured second. The idle stack's own polling (Flower's reads, Celery's ``BRPOP`` timeouts)
lands in Redis's CPU and in ``other processes``: under 1 % of the measured Redis commands (per job, plain Celery's
went from 18.0 to 18.1 and Conveyor's from 25.2 to 25.3 with the rounds). Polling and the tutorial stack follow,
once each.

Sends follow a fixed schedule (``RATE`` per second) whatever earlier jobs do, so a stall shows in the figures
instead of slowing the sender; each latency is measured from the moment the client sends (its timer fired: within
a millisecond of the schedule) to the moment it sees the outcome, both on ``time.perf_counter`` (uvloop's own clock
has a millisecond resolution, too coarse for latencies of a few milliseconds). CPU per 1,000 jobs at
that rate is summed over the subject's process trees and Redis (and the client threads, for plain Celery).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import orjson
import uvloop

from bench import jobstack, procs
from bench.plain_celery import NOOP, create_app
from bench.report import Check, Metric, Report

NAME = "latency"
DESCRIPTION = (
    "submit → job.succeeded on an open WebSocket at a fixed open-loop rate, vs plain Celery's apply_async → "
    "AsyncResult.get() and vs polling GET /jobs/{id}"
)
RATE = 50.0
JOBS, QUICK_JOBS = 1000, 100
WARMUP = 20
#: Alternating rounds of plain Celery and Conveyor (see the module docstring).
ROUNDS = 2
POLL_INTERVAL = 0.1
#: Client threads for plain Celery: each waits on one result at a time, so this bounds the jobs in flight.
THREADS = 16
#: Kept-alive HTTP connections of the Conveyor and tutorial clients (more than are ever busy at once).
CONNECTIONS = 64
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
                sent = time.perf_counter()  # as for Conveyor: from the send, not from the schedule
                noop.apply_async().get(timeout=DEADLINE)
                return time.perf_counter() - sent

            with jobstack.profiled("latency-celery", meter.pids), meter:
                return list(pool.map(one, range(jobs)))
    finally:
        app.close()


async def open_loop(jobs: int, rate: float, one: Callable[[float], Awaitable[None]]) -> None:
    """Run ``one(sent)`` for ``jobs`` sends scheduled ``1/rate`` apart, each at its time; ``sent`` is when it was
    sent, on ``time.perf_counter``'s clock (the event loop's timers fire within a millisecond of the schedule, and
    uvloop's own clock has a millisecond resolution: too coarse for latencies of a few milliseconds)."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1

    async def at(when: float) -> None:
        await asyncio.sleep(max(0.0, when - loop.time()))
        await one(time.perf_counter())

    await asyncio.gather(*(at(start + i / rate) for i in range(jobs)))


async def conveyor_round_trips(stack: jobstack.Conveyor, jobs: int, rate: float, meter: jobstack.Meter) -> list[float]:
    """Open loop: POST at each scheduled time; a job is done when its ``job.succeeded`` arrives on the socket."""
    folded = 0 if stack.flower_url is None else await asyncio.to_thread(stack.flower_succeeded)  # earlier rounds'
    async with jobstack.session(stack, CONNECTIONS, WARMUP) as (pool, events):
        sent: dict[str, float] = {}

        async def one(at: float) -> None:
            async with pool.connection() as connection:
                sent[await jobstack.submit(connection)] = at

        with jobstack.profiled("latency-conveyor", stack.group.pids()), meter:
            await open_loop(jobs, rate, one)
            await events.wait(sent, DEADLINE)
            await stack.flower_caught_up(folded + len(events.done))
    return [events.done[job] - at for job, at in sent.items()]


async def polling_round_trips(stack: jobstack.Conveyor, jobs: int, rate: float, meter: jobstack.Meter) -> list[float]:
    """Open loop: POST at each scheduled time, then ``GET /jobs/{id}`` every ``POLL_INTERVAL`` until it succeeded."""
    latencies: list[float] = []
    folded = 0 if stack.flower_url is None else await asyncio.to_thread(stack.flower_succeeded)  # earlier subjects'
    async with stack.pool(CONNECTIONS) as pool:
        async with jobstack.Completions(stack) as events:  # for the warm-up only: polling needs no socket
            await jobstack.warm_up(stack, pool, events, WARMUP)
        await stack.flower_caught_up(folded + WARMUP)

        async def one(at: float) -> None:
            async with pool.connection() as connection:
                job_id = await jobstack.submit(connection)
            while True:
                await asyncio.sleep(POLL_INTERVAL)
                async with pool.connection() as connection:
                    answer = await connection.request("GET", f"/jobs/{job_id}")
                status = orjson.loads(answer.body).get("status")
                if status == "succeeded":
                    latencies.append(time.perf_counter() - at)
                    return
                if answer.status != 200 or status in ("failed", "cancelled"):
                    raise RuntimeError(f"GET /jobs/{job_id}: {answer.status} {answer.body[:300]!r}")

        with meter:
            await asyncio.wait_for(open_loop(jobs, rate, one), DEADLINE + jobs / rate)
            await stack.flower_caught_up(folded + WARMUP + jobs)
    return latencies


async def tutorial_round_trips(stack: jobstack.Tutorial, jobs: int, rate: float, meter: jobstack.Meter) -> list[float]:
    """Open loop: ``POST /tasks`` at each scheduled time, then ``GET /tasks/{id}`` every ``POLL_INTERVAL`` until
    it says ``SUCCESS``."""
    latencies: list[float] = []
    async with stack.pool(CONNECTIONS) as pool:

        async def one(at: float) -> None:
            async with pool.connection() as connection:
                task_id = await jobstack.submit_tutorial(connection)
            while True:
                await asyncio.sleep(POLL_INTERVAL)
                async with pool.connection() as connection:
                    if await jobstack.poll_tutorial(connection, task_id):
                        latencies.append(time.perf_counter() - at)
                        return

        await open_loop(WARMUP, rate, one)
        latencies.clear()
        with jobstack.profiled("latency-tutorial", stack.group.pids()), meter:
            await asyncio.wait_for(open_loop(jobs, rate, one), DEADLINE + jobs / rate)
    return latencies


def run(options: argparse.Namespace) -> Report:
    """Plain Celery, then Conveyor over the WebSocket, then Conveyor polled; ``JOBS`` each (``QUICK_JOBS``)."""
    jobs = QUICK_JOBS if getattr(options, "quick", False) else JOBS
    report = jobstack.new_report(NAME, DESCRIPTION, METRICS, [])
    setting = f"N={jobs} at {RATE:g}/s"
    with jobstack.work_dir(NAME) as root, procs.redis_server(root / "redis") as (redis_url, redis):

        def measure(subject: str, latencies: list[float], meter: jobstack.Meter, notes: str) -> None:
            values = jobstack.percentiles(latencies)
            jobstack.add_row(report, setting, subject, values, meter, len(latencies), f"{len(latencies)} jobs; {notes}")

        with (
            jobstack.plain_celery(redis_url, root / "celery") as group,
            jobstack.conveyor(redis_url, root / "conveyor") as stack,
        ):
            each = max(1, jobs // ROUNDS)
            rounds = f"{ROUNDS} rounds of {each} jobs, alternating with {{}}'s"
            measured = jobstack.alternate(
                ROUNDS,
                redis.pid,
                redis_url,
                {
                    "celery": (group, lambda meter: celery_round_trips(redis_url, each, RATE, meter)),
                    "conveyor": (stack.group, lambda meter: uvloop.run(conveyor_round_trips(stack, each, RATE, meter))),
                },
            )
            for subject, other, how in (
                ("celery", "conveyor", f"{THREADS} client threads, results by Redis pub/sub"),
                ("conveyor", "celery", "events on one /ws opened before"),
            ):
                latencies_by_round, meter = measured[subject]
                latencies = [latency for part in latencies_by_round for latency in part]
                measure(subject, latencies, meter, f"{how}; {rounds.format(other)}")
            meter = jobstack.Meter({"redis": redis.pid, **stack.group.pids()}, redis_url)
            jobstack.wait_quiet(meter.pids)
            latencies = uvloop.run(polling_round_trips(stack, jobs, RATE, meter))
            measure("polling", latencies, meter, f"GET /jobs/{{id}} every {POLL_INTERVAL * 1000:.0f} ms")
            auth = stack.authenticated
        with jobstack.tutorial(redis_url, root / "tutorial") as tutorial:
            meter = jobstack.Meter({"redis": redis.pid, **tutorial.group.pids()}, redis_url)
            jobstack.wait_quiet(meter.pids)
            latencies = uvloop.run(tutorial_round_trips(tutorial, jobs, RATE, meter))
            measure("tutorial", latencies, meter, f"GET /tasks/{{id}} every {POLL_INTERVAL * 1000:.0f} ms")
    add_checks(report)
    report.findings.append(jobstack.cpu_note(auth))
    return report


def add_checks(report: Report) -> None:
    """The latency goals of issue 13 (acceptance 1), and CPU per job at this rate."""
    by = {row.subject: row.values for row in report.rows}

    def ratio(mine: str, theirs: str, key: str) -> tuple[float | None, str]:
        a, b = by.get(mine, {}).get(key), by.get(theirs, {}).get(key)
        if a is None or not b:
            return None, ""
        return a / b, f"{a:.1f} vs {b:.1f}"

    for key, target, goal in (
        ("p50_ms", 1.5, "latency p50 vs plain Celery"),
        ("p99_ms", 2.0, "latency p99 vs plain Celery"),
    ):
        measured, detail = ratio("conveyor", "celery", key)
        report.checks.append(Check(goal, measured, target, False, detail=f"{detail} ms"))
    measured, detail = ratio("polling", "conveyor", "p50_ms")
    report.checks.append(
        Check("polling GET /jobs/{id} p50 vs Conveyor's events", measured, 10.0, True, detail=f"{detail} ms")
    )
    measured, detail = ratio("tutorial", "conveyor", "p50_ms")
    report.checks.append(
        Check("tutorial stack's polling p50 vs Conveyor's events", measured, 10.0, True, detail=f"{detail} ms")
    )
    measured, detail = ratio("conveyor", "celery", "cpu_s_per_1000")
    report.checks.append(
        Check(
            f"CPU per job at {RATE:g} jobs/s, with Flower, vs plain Celery",
            measured,
            1.2,
            False,
            detail=f"{detail} s per 1,000",
        )
    )
