"""Fan-out: one ``conveyor api`` process pushing every event to N idle WebSocket clients, against a minimal
``websockets.broadcast()`` server reading the same Redis stream, in the same run with the same clients.

For each N and each server, fresh: start the server on a real redis-server; open N clients from
``CLIENT_PROCESSES`` separate processes (:mod:`bench.wsclients`); after a short idle, RSS per connection is
the server's RSS growth over N. Then

- latency: ``LATENCY_EVENTS`` job events published one at a time, spaced so each fan-out ends before the next;
  p50/p99 of (receipt time − the event's ``ts``, set just before ``XADD``) over every delivery;
- throughput: a burst of events (about 200,000 deliveries in all) published as fast as one pipeline goes;
  deliveries/s = deliveries / (last receipt − first publish). Server CPU per delivery is from /proc.

Conveyor's clients use ``/ws`` with no filter (every job event), its default settings, log level WARNING.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
import uuid
from array import array
from pathlib import Path

import redis

from bench import procs
from bench.report import Metric, Report, Row
from conveyor.events import encode
from conveyor.names import EVENTS_STREAM
from conveyor.ops.redis_server import free_port, wait_for_port
from conveyor.schemas import Event, EventType, JobStatus

NAME = "fanout"
DESCRIPTION = "events to N idle WebSocket clients: Conveyor's hub vs websockets.broadcast()"
SIZES = (1_000, 5_000, 10_000)
QUICK_SIZES = (200, 1_000)
CLIENT_PROCESSES = 2
LATENCY_EVENTS = 20
BURST_DELIVERIES = 200_000

METRICS = [
    Metric("connected", "clients held", "", True),
    Metric("deliveries_per_s", "deliveries/s", "1/s", True),
    Metric("p50_ms", "p50", "ms", False),
    Metric("p99_ms", "p99", "ms", False),
    Metric("rss_per_conn_kib", "RSS per idle connection", "KiB", False),
    Metric("cpu_us_per_delivery", "server CPU per delivery", "µs", False),
]


def _event() -> dict[bytes, bytes]:
    job_id = str(uuid.uuid4())
    event = Event(type=EventType.STARTED, job_id=job_id, kind="bench", status=JobStatus.STARTED, progress=0.0,
                  ts=time.time(), attempt=1, owner=procs.OWNER)  # fmt: skip
    return encode(event)


class Clients:
    """``CLIENT_PROCESSES`` processes sharing ``n`` connections to ``url``."""

    def __init__(self, url: str, n: int, work: Path, authorization: str) -> None:
        self.outs = [work / f"clients-{i}" for i in range(CLIENT_PROCESSES)]
        shares = [n // CLIENT_PROCESSES + (1 if i < n % CLIENT_PROCESSES else 0) for i in range(CLIENT_PROCESSES)]
        self.processes = [
            subprocess.Popen(
                [procs.PYTHON, "-m", "bench.wsclients", url, str(share), "--out", str(out), "--authorization"]
                + [authorization],
                env=procs.env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for share, out in zip(shares, self.outs, strict=True)
        ]

    def answers(self) -> list[dict[str, float]]:
        replies = []
        for process in self.processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                raise RuntimeError("a client process died")
            replies.append(json.loads(line))
        return replies

    def phase(self, name: str, expect: int, timeout: float) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(f"phase {name} {expect} {timeout}\n")
            process.stdin.flush()

    def latencies(self, name: str) -> array[float]:
        values: array[float] = array("f")
        for out in self.outs:
            path = Path(f"{out}.{name}")
            values.frombytes(path.read_bytes())
        return values

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None and process.stdin is not None:
                try:
                    process.stdin.write("quit\n")
                    process.stdin.flush()
                except BrokenPipeError:
                    pass
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def _server(subject: str, redis_url: str, work: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """The server, its WebSocket URL and the ``Authorization`` its clients send (events are the key owner's)."""
    port = free_port()
    log = work / f"{subject}.log"
    if subject == "conveyor":
        environ = procs.env(
            CONVEYOR_REDIS_URL=redis_url,
            CONVEYOR_API_PORT=str(port),
            CONVEYOR_DATA_DIR=str(work / "var"),
            CONVEYOR_LOG_LEVEL="WARNING",
            **procs.generous_limits(),
        )
        authorization = procs.auth_headers(procs.api_key(environ))["Authorization"]
        process = procs.start([procs.PYTHON, "-m", "conveyor", "api"], log, environ)
        procs.wait_healthy(f"http://127.0.0.1:{port}/health", process)
        return process, f"ws://127.0.0.1:{port}/ws", authorization
    process = procs.start([procs.PYTHON, "-m", "bench.broadcast_server", str(port), redis_url], log, procs.env())
    wait_for_port(port, 30, process)
    return process, f"ws://127.0.0.1:{port}/", procs.auth_headers(None)["Authorization"]


def measure(subject: str, n: int, redis_url: str, work: Path) -> Row:
    """One server at one N: connections held, RSS per connection, latency, throughput."""
    client = redis.Redis.from_url(redis_url)
    server, url, authorization = _server(subject, redis_url, work)
    clients: Clients | None = None
    notes: list[str] = []
    try:
        time.sleep(1.0)
        rss_before = procs.rss_kib(server.pid)
        clients = Clients(url, n, work, authorization)
        opened = clients.answers()
        connected = sum(int(a["connected"]) for a in opened)
        if connected < n:
            notes.append(f"{n - connected} connections failed")
        time.sleep(2.0)
        rss_idle = procs.rss_kib(server.pid)

        clients.phase("latency", LATENCY_EVENTS, 60 + n * 0.01)
        spacing = 0.02 + n * 40e-6
        for _ in range(LATENCY_EVENTS):
            client.xadd(EVENTS_STREAM, _event())  # type: ignore[arg-type]
            time.sleep(spacing)
        replies = clients.answers()
        latencies = sorted(clients.latencies("latency"))
        missing = connected * LATENCY_EVENTS - sum(int(r["received"]) for r in replies)
        if missing:
            notes.append(f"latency phase: {missing} deliveries missing")

        burst = max(10, BURST_DELIVERIES // n)
        clients.phase("burst", burst, 120 + n * 0.02)
        cpu_before = procs.cpu_seconds(server.pid)
        started = time.time()
        pipe = client.pipeline(transaction=False)
        for i in range(burst):
            pipe.xadd(EVENTS_STREAM, _event())  # type: ignore[arg-type]
            if i % 50 == 49:
                pipe.execute()
        pipe.execute()
        replies = clients.answers()
        cpu = procs.cpu_seconds(server.pid) - cpu_before
        received = sum(int(r["received"]) for r in replies)
        last = max(float(r["last"]) for r in replies)
        if received < connected * burst:
            notes.append(f"burst: {connected * burst - received} deliveries missing")
        alive = server.poll() is None
        if not alive:
            notes.append("server exited")
        return Row(
            setting=f"N={n:,}",
            subject=subject,
            values={
                "connected": float(connected if alive else 0),
                "deliveries_per_s": received / (last - started) if last > started else None,
                "p50_ms": _ms(_percentile(latencies, 0.50)),
                "p99_ms": _ms(_percentile(latencies, 0.99)),
                "rss_per_conn_kib": (rss_idle - rss_before) / connected if connected else None,
                "cpu_us_per_delivery": cpu * 1e6 / received if received else None,
            },
            notes="; ".join(notes),
        )
    finally:
        if clients is not None:
            clients.close()
        procs.stop(server)
        client.close()


def _ms(micros: float | None) -> float | None:
    return None if micros is None else micros / 1000


def run(options: argparse.Namespace) -> Report:
    """Every size, baseline first, each server fresh; loopback only, a few minutes in all."""
    limit = procs.raise_open_file_limit()
    sizes = QUICK_SIZES if options.quick else SIZES
    report = Report(
        name=NAME,
        description=DESCRIPTION,
        metrics=METRICS,
        baseline="broadcast",
        goals=[
            "10,000 clients held by one api process",
            "deliveries/s ≥ 1.0× the broadcast() baseline",
            "RSS per idle connection ≤ 20 KiB",
        ],
    )
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp, procs.redis(Path(tmp) / "redis") as redis_url:
        for n in sizes:
            if n + 100 > limit:
                report.findings.append(f"N={n} skipped: open-file limit {limit}")
                continue
            for subject in ("broadcast", "conveyor"):
                work = Path(tmp) / f"{subject}-{n}"
                work.mkdir()
                row = measure(subject, n, redis_url, work)
                report.rows.append(row)
                values = ", ".join(f"{k}={v:.2f}" for k, v in row.values.items() if v is not None)
                print(f"  {subject:9} N={n:<6} {values} {row.notes}", flush=True)
    return report
