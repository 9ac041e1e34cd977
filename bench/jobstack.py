"""What the job benchmarks (``latency``, ``throughput``) share: the processes they start, their CPU time, clients.

A run starts one real redis-server, then each subject on it in turn, so that only the measured subject's processes
run while it is measured:

- :func:`conveyor`: ``conveyor api``, ``conveyor worker --queues notifications`` (its default pool: threads) and
  ``conveyor flower`` (fed from the job event stream), with an API key made by ``conveyor keys create``
  (:func:`bench.procs.api_key`) and rate limits far above what a benchmark asks; each process appends its job-store
  counts (transactions, SQLite write-lock time) to ``stats.jsonl`` at exit (:func:`read_stats`);
- :func:`plain_celery`: ``celery -A bench.plain_celery worker``, prefork, 2 processes;
- :func:`tutorial`: the tutorial stack (:mod:`bench.tutorial_stack`) under uvicorn, with its Celery worker.

All log at ``LOG_LEVEL``. Each process runs in its own session; :class:`Meter` reads the CPU time of whole process
trees (a prefork worker's pool included) and of this process, the client, the machine's idle time, and counts the
commands Redis ran; :func:`wait_quiet` holds a measurement back while other work keeps the machine busy. Clients
use :mod:`bench.loadgen` (kept-alive raw HTTP/1.1), whose CPU is reported apart. With ``BENCH_PROFILE=DIR`` set,
the measured phases are recorded by py-spy (``pip install py-spy``) as raw collapsed stacks in ``DIR`` (see
:func:`profiled`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import httpx
import orjson
import psutil
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench import loadgen, procs
from bench.report import Metric, Report, Row
from conveyor.ops.redis_server import free_port

#: Log level of every process a job benchmark starts (per-job INFO lines are not what is measured).
LOG_LEVEL = "WARNING"
#: Worker processes of either subject (prefork pool), as ``conveyor worker`` runs by default.
CONCURRENCY = 2
#: The cheapest job there is: a ``log`` notification.
BODY = {"channel": "log", "message": "bench"}
#: Events waiting per event-stream connection: so high that a busy client is never dropped for falling behind.
SEND_QUEUE = 1_000_000
#: How long a warm-up may wait for its jobs (the worker may still be starting).
WARMUP_TIMEOUT = 90.0
#: The subject the ratios compare with.
BASELINE = "celery"
#: Before a subject is measured, wait up to ``QUIET_WAIT`` seconds for the rest of the machine to use less than
#: ``QUIET_LOAD`` of a core (other people's work on a shared machine skews every figure).
QUIET_WAIT, QUIET_LOAD = 10.0, 0.25
#: The Flower password of the benchmark's stacks (loopback only, thrown away with the run).
FLOWER_PASSWORD = "bench-flower"
#: How long a stack's Flower may take to start following the event stream (it lets the workers' heartbeats come in
#: first, ``conveyor.ops.flower_feed.SETTLE_SECONDS``), and then to fold the last events of a measurement.
FLOWER_TIMEOUT = 60.0


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores: user, nice, system, irq, softirq, steal)."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq + times.steal


def wait_quiet(pids: Mapping[str, int]) -> float:
    """Wait until, over one second, the machine minus ``pids``' trees and this process used less than
    ``QUIET_LOAD`` of a core, or ``QUIET_WAIT`` seconds passed; returns that last load (in cores)."""

    def others() -> float:
        return machine_busy_seconds() - sum(map(procs.tree_cpu_seconds, pids.values())) - procs.cpu_seconds(os.getpid())

    deadline = time.monotonic() + QUIET_WAIT
    while True:
        before = others()
        time.sleep(1.0)
        load = others() - before
        if load < QUIET_LOAD or time.monotonic() > deadline:
            if load >= QUIET_LOAD:
                print(f"  (the machine is busy with other work: {load:.0%} of a core; measuring anyway)", flush=True)
            return load


@dataclass
class Meter:
    """CPU seconds used between ``__enter__`` and ``__exit__`` by each named process tree and, as ``client``,
    by this process (the load generator; a subject decides whether it counts); and the commands the Redis at
    ``redis_url`` ran meanwhile. ``others`` is what the rest of the machine used: a benchmark's figures are only as
    good as that is small."""

    pids: Mapping[str, int]
    redis_url: str
    used: dict[str, float] = field(default_factory=dict)
    redis_commands: int = 0
    others: float = 0.0
    seconds: float = 0.0
    #: The machine's idle share over the measurement (0.0 to 1.0 of all its cores).
    idle: float = 0.0
    _before: dict[str, float] = field(default_factory=dict)

    def _now(self) -> dict[str, float]:
        now = {name: procs.tree_cpu_seconds(pid) for name, pid in self.pids.items()}
        now["client"] = procs.cpu_seconds(os.getpid())
        now["machine"] = machine_busy_seconds()
        now["clock"] = time.monotonic()
        client = redis.Redis.from_url(self.redis_url)
        try:
            now["commands"] = sum(stats["calls"] for stats in client.info("commandstats").values())
        finally:
            client.close()
        return now

    def __enter__(self) -> Meter:
        self._before = self._now()
        return self

    def __exit__(self, *_exc: object) -> None:
        after = self._now()
        delta = {name: after[name] - self._before[name] for name in after}
        self.seconds = delta.pop("clock")
        self.redis_commands = int(delta.pop("commands"))
        machine = delta.pop("machine")
        self.used = delta
        self.others = max(0.0, machine - sum(delta.values()))
        capacity = self.seconds * (os.cpu_count() or 1)
        self.idle = max(0.0, 1.0 - machine / capacity) if capacity else 0.0

    def per_1000(self, jobs: int, *, client: bool) -> float:
        """CPU seconds per 1,000 jobs over every process, this one only when ``client``."""
        total = sum(seconds for name, seconds in self.used.items() if client or name != "client")
        return total * 1000 / jobs

    def breakdown(self, jobs: int) -> str:
        """Each process's CPU seconds per 1,000 jobs, Redis commands per job, the rest of the machine's load."""
        mine = ", ".join(f"{name} {seconds * 1000 / jobs:.2f}" for name, seconds in self.used.items())
        load = self.others / self.seconds if self.seconds else 0.0
        return (
            f"{mine}; Redis commands per job {self.redis_commands / jobs:.1f}; other processes {load:.0%} of a core; "
            f"machine idle {self.idle:.0%}"
        )


def pooled(meters: Sequence[Meter]) -> Meter:
    """One meter for several measurements of one subject (rounds alternating with another subject's): CPU, Redis
    commands, the rest of the machine's load and the time added up; the idle share weighted by time."""
    total = Meter(meters[0].pids, meters[0].redis_url)
    for meter in meters:
        for name, seconds in meter.used.items():
            total.used[name] = total.used.get(name, 0.0) + seconds
        total.redis_commands += meter.redis_commands
        total.others += meter.others
        total.seconds += meter.seconds
        total.idle += meter.idle * meter.seconds
    total.idle = total.idle / total.seconds if total.seconds else 0.0
    return total


T = TypeVar("T")


def alternate(
    rounds: int, redis_pid: int, redis_url: str, subjects: Mapping[str, tuple[procs.Group, Callable[[Meter], T]]]
) -> dict[str, tuple[list[T], Meter]]:
    """Measure each subject ``rounds`` times, in turn (a, b, a, b, …), each round once the machine is quiet, with a
    :class:`Meter` of its group's processes and Redis; for each subject, what its measure returned in every round,
    in order, and its meters :func:`pooled`. Subjects running side by side and measured so share the machine's
    drift, instead of it weighing on whichever was measured second."""
    results: dict[str, list[T]] = {name: [] for name in subjects}
    meters: dict[str, list[Meter]] = {name: [] for name in subjects}
    for _round in range(rounds):
        for name, (group, measure) in subjects.items():
            meter = Meter({"redis": redis_pid, **group.pids()}, redis_url)
            wait_quiet(meter.pids)
            results[name].append(measure(meter))
            meters[name].append(meter)
    return {name: (results[name], pooled(meters[name])) for name in subjects}


def new_report(name: str, description: str, metrics: list[Metric], goals: list[str]) -> Report:
    """An empty report whose ratios are to plain Celery's row."""
    return Report(name=name, description=description, metrics=metrics, baseline=BASELINE, goals=goals)


def add_row(
    report: Report, setting: str, subject: str, values: dict[str, float | None], meter: Meter, jobs: int, notes: str
) -> None:
    """Add ``subject``'s row with its CPU per 1,000 jobs; its CPU breakdown and ``notes`` go to the findings."""
    values["cpu_s_per_1000"] = meter.per_1000(jobs, client=subject == BASELINE)
    detail = f"{notes}; CPU s per 1,000 jobs: {meter.breakdown(jobs)}"
    report.rows.append(Row(setting, subject, values, detail))
    report.findings.append(f"{subject} ({setting}): {detail}")
    shown = ", ".join(f"{key}={value:.1f}" for key, value in values.items() if value is not None)
    print(f"  {subject:9} {shown}  ({detail})", flush=True)


def cpu_note(authenticated: bool) -> str:
    """How CPU was counted (and whether the api asked for keys), for a report's notes."""
    note = (
        "CPU: every process tree of the subject plus Redis, from /proc (utime+stime, descendants included); for "
        "plain Celery also the client process, which publishes and consumes results; Conveyor's load generator "
        "(HTTP and WebSocket client, shown as `client`) is not counted. `other processes`: the rest of the "
        "machine's load while measuring."
    )
    return note + ("" if authenticated else " The api had no `keys` command: no authentication.")


def percentiles(seconds: Collection[float]) -> dict[str, float | None]:
    """p50, p95, p99 and the maximum (nearest rank), in milliseconds."""
    values = sorted(seconds)

    def rank(q: float) -> float | None:
        return values[max(0, math.ceil(q * len(values)) - 1)] * 1000 if values else None

    return {"p50_ms": rank(0.50), "p95_ms": rank(0.95), "p99_ms": rank(0.99), "max_ms": rank(1.0)}


@contextlib.contextmanager
def work_dir(name: str) -> Iterator[Path]:
    """A temporary directory for one run (under ``BENCH_TMP`` when set), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"conveyor-bench-{name}-", dir=os.environ.get("BENCH_TMP")) as tmp:
        yield Path(tmp)


@contextlib.contextmanager
def profiled(label: str, pids: Mapping[str, int]) -> Iterator[None]:
    """While the block runs, and only when ``BENCH_PROFILE`` names a directory: py-spy samples each Python process
    of ``pids`` and its subprocesses (idle threads left out) into ``DIR/<label>-<name>.txt`` (one line per stack:
    ``frame;frame;... count``). ``BENCH_PROFILE_OPTIONS`` adds py-spy options, e.g. ``--gil`` (only the thread
    holding the GIL: Python's CPU time) or ``--native``."""
    out = os.environ.get("BENCH_PROFILE")
    if not out:
        yield
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    extra = os.environ.get("BENCH_PROFILE_OPTIONS", "").split()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    python = {name: pid for name, pid in pids.items() if Path(psutil.Process(pid).exe()).name.startswith("python")}
    recorders = [
        subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--subprocesses", "--rate", "200", *extra]
            + ["--format", "raw", "--output", str(Path(out) / f"{label}-{name}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=(Path(out) / f"{label}-{name}.log").open("ab"),
        )
        for name, pid in python.items()
    ]
    time.sleep(1.0)
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)
        for recorder in recorders:
            recorder.wait(60)


@dataclass
class Conveyor:
    """A running Conveyor stack: its processes, addresses, the headers every request carries, its counts file."""

    group: procs.Group
    base_url: str
    ws_url: str
    headers: dict[str, str]
    authenticated: bool
    stats: Path
    #: Flower's address, when the stack runs it.
    flower_url: str | None = None

    def pool(self, connections: int) -> contextlib.AbstractAsyncContextManager[loadgen.Pool]:
        """``connections`` kept-alive raw HTTP connections to the api."""
        return loadgen.pool(self.base_url, self.headers, connections)

    def flower_succeeded(self) -> int:
        """How many ``task-succeeded`` events the stack's Flower has folded (its own Prometheus counter)."""
        assert self.flower_url is not None
        answer = httpx.get(f"{self.flower_url}/metrics", auth=("conveyor", FLOWER_PASSWORD), timeout=5)
        answer.raise_for_status()
        return int(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in answer.text.splitlines()
                if line.startswith("flower_events_total{") and 'type="task-succeeded"' in line
            )
        )

    async def flower_caught_up(self, succeeded: int) -> None:
        """Once Flower has folded the ``job.succeeded`` of ``succeeded`` jobs (every job of the stack so far): a
        measurement that ends after this counts the CPU Flower spends on the jobs it measured. At once without
        Flower."""
        if self.flower_url is None:
            return
        deadline = time.monotonic() + FLOWER_TIMEOUT
        while await asyncio.to_thread(self.flower_succeeded) < succeeded:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Flower did not fold {succeeded} successes within {FLOWER_TIMEOUT:g} s")
            await asyncio.sleep(0.02)


_databases = itertools.count(1)


def fresh_database(redis_url: str) -> str:
    """``redis_url`` with a Redis database number no stack of this run used yet (1 to 15, then round again): each
    Conveyor stack gets an empty event stream, so that Flower's replay at start is not of earlier stacks' jobs."""
    return f"{redis_url.rsplit('/', 1)[0]}/{1 + (next(_databases) - 1) % 15}"


@contextlib.contextmanager
def conveyor(
    redis_url: str, root: Path, workers: int = 1, flower: bool = True, bundle_max: int | None = None
) -> Iterator[Conveyor]:
    """``conveyor api``, ``workers`` notifications workers (their default pool) and ``conveyor flower`` (unless
    ``flower`` is false) on a database of its own of the Redis at ``redis_url`` (:func:`fresh_database`), SQLite
    under ``root``, ``CONVEYOR_BUNDLE_MAX`` set to ``bundle_max`` when given (``1``: every job its own task
    message); stopped on exit, after which ``stats`` holds every process's job-store counts (:func:`read_stats`)."""
    port = free_port()
    stats = root / "stats.jsonl"
    environ = procs.env(
        CONVEYOR_DATA_DIR=str(root / "var"),
        CONVEYOR_REDIS_URL=fresh_database(redis_url),
        CONVEYOR_API_PORT=str(port),
        CONVEYOR_FLOWER_PORT=str(free_port()),
        CONVEYOR_FLOWER_PASSWORD=FLOWER_PASSWORD,
        CONVEYOR_LOG_LEVEL=LOG_LEVEL,
        CONVEYOR_WS_SEND_QUEUE=str(SEND_QUEUE),
        CONVEYOR_STATS_FILE=str(stats),
        **procs.generous_limits(),
        **({} if bundle_max is None else {"CONVEYOR_BUNDLE_MAX": str(bundle_max)}),
    )
    group = procs.Group(root, environ)
    try:
        key = procs.api_key({**environ, "CONVEYOR_STATS_FILE": str(root / "keys-stats.jsonl")})
        me = [procs.PYTHON, "-m", "conveyor"]
        group.start("api", [*me, "api"])
        for n in range(workers):
            group.start(f"worker{n + 1}" if n else "worker", [*me, "worker", "--queues", "notifications"])
        if flower:
            group.start("flower", [*me, "flower"])
        procs.wait_healthy(f"http://127.0.0.1:{port}/health", group.processes["api"])
        yield Conveyor(
            group=group,
            base_url=f"http://127.0.0.1:{port}",
            ws_url=f"ws://127.0.0.1:{port}/ws",
            headers=procs.auth_headers(key),
            authenticated=key is not None,
            stats=stats,
            flower_url=f"http://127.0.0.1:{environ['CONVEYOR_FLOWER_PORT']}" if flower else None,
        )
        group.check()
    finally:
        group.stop()


def read_stats(path: Path) -> dict[str, dict[str, float]]:
    """The job-store counts each process of a stopped stack wrote at exit, by process name (empty if none)."""
    if not path.exists():
        return {}
    lines = [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {line["name"]: line for line in lines}


@dataclass
class Tutorial:
    """A running tutorial stack (:mod:`bench.tutorial_stack`): its processes and address."""

    group: procs.Group
    base_url: str

    def pool(self, connections: int) -> contextlib.AbstractAsyncContextManager[loadgen.Pool]:
        return loadgen.pool(self.base_url, {}, connections)


@contextlib.contextmanager
def tutorial(redis_url: str, root: Path, worker: bool = True) -> Iterator[Tutorial]:
    """The tutorial stack's FastAPI app under uvicorn and (when ``worker``) its Celery worker, prefork
    ``CONCURRENCY``, task events on (``-E``), on ``redis_url``; stopped on exit."""
    port = free_port()
    group = procs.Group(root, procs.env(BENCH_REDIS_URL=redis_url))
    try:
        group.start(
            "api",
            [procs.PYTHON, "-m", "uvicorn", "bench.tutorial_stack:app", "--host", "127.0.0.1", "--port", str(port)]
            + ["--log-level", LOG_LEVEL.lower(), "--no-access-log"],
        )
        if worker:
            argv = [procs.PYTHON, "-m", "celery", "-A", "bench.tutorial_stack.celery", "worker", "-E"]
            argv += ["--pool=prefork", f"--concurrency={CONCURRENCY}", f"--loglevel={LOG_LEVEL}", "--hostname=tut@%h"]
            group.start("worker", argv)
        procs.wait_healthy(f"http://127.0.0.1:{port}/docs", group.processes["api"])
        yield Tutorial(group=group, base_url=f"http://127.0.0.1:{port}")
        group.check()
    finally:
        group.stop()


@contextlib.contextmanager
def plain_celery(redis_url: str, root: Path) -> Iterator[procs.Group]:
    """``celery -A bench.plain_celery worker`` (prefork, ``CONCURRENCY``) on ``redis_url``; stopped on exit."""
    group = procs.Group(root, procs.env(BENCH_REDIS_URL=redis_url))
    argv = [procs.PYTHON, "-m", "celery", "-A", "bench.plain_celery", "worker", "--pool=prefork"]
    argv += [f"--concurrency={CONCURRENCY}", f"--loglevel={LOG_LEVEL}", "--hostname=plain@%h"]
    group.start("worker", [*argv, "--without-mingle", "--without-gossip"])
    try:
        yield group
        group.check()
    finally:
        group.stop()


ONE = orjson.dumps(BODY)
_BATCHES: dict[int, bytes] = {}


async def submit(connection: loadgen.Connection) -> str:
    """``POST /notifications`` with :data:`BODY`; the new job's id."""
    answer = await connection.request("POST", "/notifications", ONE)
    if answer.status != 202:
        raise RuntimeError(f"POST /notifications answered {answer.status}: {answer.body[:300]!r}")
    return str(orjson.loads(answer.body)["job_id"])


async def submit_batch(connection: loadgen.Connection, size: int) -> list[str]:
    """``POST /notifications:batch`` with ``size`` copies of :data:`BODY`; the new jobs' ids, in order."""
    body = _BATCHES.get(size) or _BATCHES.setdefault(size, orjson.dumps({"notifications": [BODY] * size}))
    answer = await connection.request("POST", "/notifications:batch", body)
    if answer.status != 202:
        raise RuntimeError(f"POST /notifications:batch answered {answer.status}: {answer.body[:300]!r}")
    return [str(job["job_id"]) for job in orjson.loads(answer.body)["jobs"]]


TUTORIAL_BODY = orjson.dumps({"channel": "log", "message": "bench"})


async def submit_tutorial(connection: loadgen.Connection) -> str:
    """The tutorial stack's ``POST /tasks``; the task's id."""
    answer = await connection.request("POST", "/tasks", TUTORIAL_BODY)
    if answer.status != 202:
        raise RuntimeError(f"POST /tasks answered {answer.status}: {answer.body[:300]!r}")
    return str(orjson.loads(answer.body)["task_id"])


async def poll_tutorial(connection: loadgen.Connection, task_id: str) -> bool:
    """The tutorial stack's ``GET /tasks/{task_id}``: whether the task succeeded (raises if it failed)."""
    answer = await connection.request("GET", f"/tasks/{task_id}")
    status = orjson.loads(answer.body).get("task_status") if answer.status == 200 else None
    if status in ("FAILURE", "REVOKED") or answer.status != 200:
        raise RuntimeError(f"GET /tasks/{task_id}: {answer.status} {answer.body[:300]!r}")
    return bool(status == "SUCCESS")


class Completions:
    """An open ``/ws`` with no filter (every job event of the caller's), noting when each job's ``job.succeeded``
    (or ``job.failed``) arrives, on ``time.perf_counter``'s clock."""

    def __init__(self, stack: Conveyor) -> None:
        self.stack = stack
        self.done: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.closed: BaseException | None = None
        self._finished: list[str] = []
        self._arrived = asyncio.Event()
        self._socket: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Completions:
        self._socket = await connect(self.stack.ws_url, additional_headers=self.stack.headers, max_size=None)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        assert self._socket is not None and self._reader is not None
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._socket.close()

    async def _read(self) -> None:
        assert self._socket is not None
        clock = time.perf_counter  # not the loop's clock: uvloop's has a millisecond resolution
        try:
            async for message in self._socket:
                event = orjson.loads(message)
                kind = event.get("type")
                if kind == "job.succeeded":
                    self.done[event["job_id"]] = clock()
                elif kind == "job.failed":
                    self.failed[event["job_id"]] = str(event.get("error"))
                elif kind == "error":
                    raise RuntimeError(f"the api refused the event stream: {event.get('detail')}")
                else:
                    continue
                self._finished.append(event["job_id"])
                self._arrived.set()
        except (ConnectionClosed, RuntimeError) as exc:
            self.closed = exc
            self._arrived.set()

    async def wait(self, job_ids: Collection[str], timeout: float) -> None:
        """Until every job of ``job_ids`` succeeded; raises if one failed, the socket closed, or on timeout."""
        remaining = set(job_ids)
        seen = 0
        async with asyncio.timeout(timeout):
            while True:
                failed = [job for job in self.failed if job in remaining]
                if failed:
                    raise RuntimeError(f"{len(failed)} job(s) failed, e.g. {failed[0]}: {self.failed[failed[0]]}")
                remaining.difference_update(self._finished[seen:])
                seen = len(self._finished)
                if not remaining:
                    return
                if self.closed is not None:
                    raise RuntimeError(f"event stream closed with {len(remaining)} jobs to go: {self.closed!r}")
                self._arrived.clear()
                await self._arrived.wait()


async def warm_up(stack: Conveyor, pool: loadgen.Pool, events: Completions, jobs: int) -> None:
    """Submit ``jobs`` jobs and wait for them: connections made, worker processes up, caches filled."""

    async def one() -> str:
        async with pool.connection() as connection:
            return await submit(connection)

    job_ids = await asyncio.gather(*(one() for _ in range(jobs)))
    try:
        await events.wait(job_ids, WARMUP_TIMEOUT)
    except TimeoutError:
        stack.group.check()
        raise


@contextlib.asynccontextmanager
async def session(stack: Conveyor, connections: int, warm: int) -> AsyncIterator[tuple[loadgen.Pool, Completions]]:
    """``connections`` HTTP connections and an open event stream on ``stack``, after ``warm`` warm-up jobs (and
    once the stack's Flower has folded them)."""
    async with stack.pool(connections) as pool, Completions(stack) as events:
        await warm_up(stack, pool, events, warm)
        await stack.flower_caught_up(len(events.done))  # Flower follows the stream before anything is measured
        yield pool, events
