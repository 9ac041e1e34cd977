"""The capacity model of docs/SCALING.md: measure what one job costs each part, then size a fleet for a target rate.

``python -m bench.capacity measure [--jobs N] [--postgres URL] [--out FILE]`` starts a real redis-server, one
``conveyor api`` and one ``conveyor worker --queues notifications`` (SQLite, or a schema of its own on the PostgreSQL
server at URL), submits N ``log`` notifications from 16 kept-alive HTTP clients, and writes the per-job costs as JSON:
CPU milliseconds of the api, the worker and Redis, Redis commands, job-store transactions (``CONVEYOR_STATS_FILE``),
events and stream bytes per event. The load generator's CPU is not counted.

``python -m bench.capacity fleet [--inputs FILE] [--rate JOBS_PER_S ...]`` prints the fleet table for each rate
from such a file (default: docs/scaling-inputs.json, the figures docs/SCALING.md quotes), so the table in the
docs is reproduced by one command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
import sqlalchemy as sa

from bench import procs
from conveyor.events import encode
from conveyor.names import EVENTS_STREAM
from conveyor.ops.redis_server import free_port, redis_command, wait_for_port
from conveyor.schemas import Event, EventType, JobStatus

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INPUTS = ROOT / "docs" / "scaling-inputs.json"
#: Share of a core a process is planned to use: headroom for bursts, garbage collection, a neighbour's failure.
TARGET_UTILISATION = 0.6
#: How far back a client may resume (``last_event_id``) at the planned rate: ``events_max_len`` must hold this much.
RESUME_WINDOW_S = 600
#: 1M jobs per minute.
MILLION_PER_MINUTE = 1_000_000 / 60


@dataclass
class Inputs:
    """What one job costs each part, measured by :func:`measure` (plus the figures it cannot measure, each with its
    source). Times are CPU milliseconds per job; one Python process uses at most one core."""

    api_cpu_ms: float
    worker_cpu_ms: float
    redis_cpu_ms: float
    redis_commands: float
    store_transactions: float
    events: float
    stream_bytes_per_event: float
    jobs_per_s_measured: float
    store: str
    jobs: int
    #: Commits per second one PostgreSQL core sustains for short single-row transactions (pgbench -N, see
    #: docs/SCALING.md for the run).
    postgres_commits_per_core_s: float = 4000.0
    #: Server CPU per WebSocket delivery and RSS per idle connection of one api process (docs/BENCHMARKS.md, fan-out
    #: at 10,000 clients).
    ws_delivery_us: float = 6.7
    ws_connection_kib: float = 7.0
    #: CPU microseconds one api process spends reading one event of the stream that none of its clients wants (every
    #: api process reads every event).
    stream_read_us: float = 0.0
    machine: str = ""
    measured_at: str = ""
    notes: list[str] = field(default_factory=list)


# --- measuring


@contextlib.contextmanager
def _postgres_schema(url: str | None) -> Iterator[str | None]:
    """A schema of its own on the server at ``url`` (dropped afterwards); yields the job store's URL."""
    if url is None:
        yield None
        return
    engine = sa.create_engine(url)
    schema = "capacity_" + secrets.token_hex(4)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
        try:
            yield sa.make_url(url).set(query={"options": f"-csearch_path={schema}"}).render_as_string(False)
        finally:
            with engine.begin() as connection:
                connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    finally:
        engine.dispose()


def _succeeded(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM jobs WHERE status = 'succeeded'")).scalar_one())


def _wait(done: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def measure(jobs: int, postgres: str | None, warmup: int = 200) -> Inputs:
    """Run the stack once and return what a job cost each part (see the module's docstring)."""
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp, _postgres_schema(postgres) as database_url:
        root = Path(tmp)
        redis_port, api_port = free_port(), free_port()
        (root / "redis").mkdir()
        redis_process = procs.start(redis_command(redis_port, root / "redis"), root / "redis.log", procs.env())
        env = procs.env(
            CONVEYOR_DATA_DIR=str(root / "var"),
            CONVEYOR_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            CONVEYOR_API_PORT=str(api_port),
            CONVEYOR_LOG_LEVEL="WARNING",
            CONVEYOR_STATS_FILE=str(root / "stats.jsonl"),
            **({"CONVEYOR_DATABASE_URL": database_url} if database_url is not None else {}),
            **procs.generous_limits(),
        )
        group = procs.Group(root, env)
        client = redis.Redis(port=redis_port)
        try:
            wait_for_port(redis_port, 10, redis_process)
            headers = procs.auth_headers(procs.api_key(env))
            conveyor = [procs.PYTHON, "-m", "conveyor"]
            api = group.start("api", [*conveyor, "api"])
            worker = group.start("worker", [*conveyor, "worker", "--queues", "notifications"])
            base = f"http://127.0.0.1:{api_port}"
            procs.wait_healthy(f"{base}/health", api)
            engine = sa.create_engine(database_url or f"sqlite:///{root / 'var' / 'conveyor.db'}")

            def submit_all(count: int) -> None:
                with ThreadPoolExecutor(16) as pool, httpx.Client(base_url=base, headers=headers, timeout=30) as http:
                    body = {"channel": "log", "message": "capacity"}
                    answers = list(pool.map(lambda _: http.post("/notifications", json=body).status_code, range(count)))
                assert set(answers) == {202}, set(answers)

            submit_all(warmup)
            _wait(lambda: _succeeded(engine) >= warmup, 120, "the warm-up jobs")
            pids = {"api": api.pid, "worker": worker.pid, "redis": redis_process.pid}
            cpu_before = {name: procs.tree_cpu_seconds(pid) for name, pid in pids.items()}
            commands_before = int(client.info("stats")["total_commands_processed"])
            events_before = int(client.xlen(EVENTS_STREAM))
            started = time.monotonic()
            submit_all(jobs)
            _wait(lambda: _succeeded(engine) >= warmup + jobs, 600, "the measured jobs")
            elapsed = time.monotonic() - started
            cpu = {name: (procs.tree_cpu_seconds(pid) - cpu_before[name]) * 1000 / jobs for name, pid in pids.items()}
            commands = (int(client.info("stats")["total_commands_processed"]) - commands_before) / jobs
            events = int(client.xlen(EVENTS_STREAM))
            stream_bytes = int(client.memory_usage(EVENTS_STREAM) or 0) / max(events, 1)
            engine.dispose()
            read_us = _stream_read_us(client, api.pid)
        finally:
            group.stop()
            client.close()
            procs.stop(redis_process)
        transactions = 0
        for line in (root / "stats.jsonl").read_text().splitlines():
            transactions += int(json.loads(line)["transactions"])
    return Inputs(
        api_cpu_ms=round(cpu["api"], 2),
        worker_cpu_ms=round(cpu["worker"], 2),
        redis_cpu_ms=round(cpu["redis"], 3),
        redis_commands=round(commands, 1),
        # Counted over the warm-up too (and the migrations, once): a slight overestimate.
        store_transactions=round(transactions / (warmup + jobs), 2),
        events=round((events - events_before) / jobs, 2),
        stream_bytes_per_event=round(stream_bytes),
        stream_read_us=round(read_us, 2),
        jobs_per_s_measured=round(jobs / elapsed, 1),
        store="postgresql" if postgres else "sqlite",
        jobs=jobs,
        machine=f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.1f} GiB",
        measured_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )


#: Events :func:`_stream_read_us` appends, and how long it lets the api read them.
STREAM_EVENTS, STREAM_SETTLE_S = 50_000, 3.0


def _stream_read_us(client: redis.Redis, api_pid: int) -> float:
    """The api's CPU per event read from the stream when no client of it wants the event: its CPU while
    :data:`STREAM_EVENTS` ``job.started`` events of an unknown owner are appended and read, minus its CPU over as
    long a time idle, per event."""
    event = Event(type=EventType.STARTED, job_id="capacity", status=JobStatus.STARTED, ts=time.time(), owner="nobody")
    fields = encode(event)

    def publish() -> None:
        for start in range(0, STREAM_EVENTS, 1000):
            pipe = client.pipeline(transaction=False)
            for _ in range(start, min(start + 1000, STREAM_EVENTS)):
                pipe.xadd(EVENTS_STREAM, fields)  # type: ignore[arg-type]
            pipe.execute()

    before = procs.tree_cpu_seconds(api_pid)
    started = time.monotonic()
    publish()
    time.sleep(STREAM_SETTLE_S)
    busy, took = procs.tree_cpu_seconds(api_pid) - before, time.monotonic() - started
    before = procs.tree_cpu_seconds(api_pid)
    time.sleep(took)
    idle = procs.tree_cpu_seconds(api_pid) - before
    return max(0.0, busy - idle) * 1e6 / STREAM_EVENTS


# --- the model


@dataclass
class Fleet:
    """Processes and servers for one rate (jobs per second), and what each tier carries."""

    rate: float
    #: 0 when reading the stream alone leaves an api process (almost) nothing: the stream must be sharded first.
    api_processes: int
    stream_read_share: float
    worker_processes: int
    redis_broker_servers: int
    redis_events_servers: int
    redis_commands_per_s: float
    postgres_tps: float
    postgres_cores: int
    stream_entries: int
    stream_gib: float


def fleet(inputs: Inputs, rate: float) -> Fleet:
    """The fleet for ``rate`` jobs/s: each part's CPU per job times the rate, over :data:`TARGET_UTILISATION` of a
    core per process (a Redis server is one core too). The broker's and the event stream's Redis CPU are split by the
    share of commands each serves (the stream: one ``XADD`` per event, and the api processes' ``XREAD``s)."""

    def processes(cpu_ms: float, spare: float = TARGET_UTILISATION) -> int:
        return max(1, math.ceil(rate * cpu_ms / 1000 / spare))

    # Every api process reads every event of the stream, whoever it is for: that share of its core is gone first.
    read_share = rate * inputs.events * inputs.stream_read_us / 1e6
    api_spare = TARGET_UTILISATION - read_share

    event_share = min(0.9, inputs.events / max(inputs.redis_commands, 1))
    redis_cores = rate * inputs.redis_cpu_ms / 1000
    tps = rate * inputs.store_transactions
    return Fleet(
        rate=rate,
        api_processes=processes(inputs.api_cpu_ms, api_spare) if api_spare > 0.05 else 0,
        stream_read_share=read_share,
        worker_processes=processes(inputs.worker_cpu_ms),
        redis_broker_servers=max(1, math.ceil(redis_cores * (1 - event_share) / TARGET_UTILISATION)),
        redis_events_servers=max(1, math.ceil(redis_cores * event_share / TARGET_UTILISATION)),
        redis_commands_per_s=rate * inputs.redis_commands,
        postgres_tps=tps,
        postgres_cores=max(1, math.ceil(tps / inputs.postgres_commits_per_core_s / TARGET_UTILISATION)),
        stream_entries=math.ceil(rate * inputs.events * RESUME_WINDOW_S),
        stream_gib=rate * inputs.events * RESUME_WINDOW_S * inputs.stream_bytes_per_event / 2**30,
    )


def table(inputs: Inputs, rates: list[float]) -> str:
    """The fleet table (Markdown) for each rate."""
    rows = [
        "| jobs/s | api processes (each one's core share reading the stream) | worker processes "
        "| Redis servers: broker + events | Redis commands/s "
        f"| PostgreSQL commits/s (cores) | stream entries for a {RESUME_WINDOW_S // 60}-minute resume (GiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for rate in rates:
        f = fleet(inputs, rate)
        rows.append(
            f"| {rate:,.0f} | {f'{f.api_processes:,}' if f.api_processes else 'shard the stream first'} "
            f"({f.stream_read_share:.0%}) "
            f"| {f.worker_processes:,} "
            f"| {f.redis_broker_servers} + {f.redis_events_servers} | {f.redis_commands_per_s:,.0f} "
            f"| {f.postgres_tps:,.0f} ({f.postgres_cores}) | {f.stream_entries:,} ({f.stream_gib:,.1f}) |"
        )
    return "\n".join(rows)


def load(path: Path) -> Inputs:
    return Inputs(**json.loads(path.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("measure", help="measure the per-job costs on this machine")
    run.add_argument("--jobs", type=int, default=2000)
    run.add_argument("--postgres", help="SQLAlchemy URL of a PostgreSQL server (default: SQLite)")
    run.add_argument("--out", type=Path, help="write the figures here as JSON (default: print them)")
    size = commands.add_parser("fleet", help="print the fleet table for target rates")
    size.add_argument("--inputs", type=Path, default=DEFAULT_INPUTS)
    size.add_argument("--rate", type=float, action="append", help="jobs/s (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "measure":
        figures = json.dumps(asdict(measure(args.jobs, args.postgres)), indent=2)
        if args.out:
            args.out.write_text(figures + "\n")
        sys.stdout.write(figures + "\n")
        return 0
    inputs = load(args.inputs)
    rates = args.rate or [100, 1_000, 5_000, MILLION_PER_MINUTE]
    sys.stdout.write(table(inputs, rates) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
