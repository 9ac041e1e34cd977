"""``conveyor api --workers 2``: two processes serve one port, and a client's connections may land on either: every
WebSocket sees every job, whichever process holds it, and a resume on any of them gets exactly what was missed."""

from __future__ import annotations

import contextlib
from pathlib import Path

import psutil
import pytest
from websockets.sync.client import ClientConnection, connect

from conveyor.names import QUEUE_NOTIFICATIONS
from tests.events_support import FINISHED, job_events_after, recv, submit, subscribed
from tests.system.faults import FaultStack

pytestmark = [pytest.mark.system, pytest.mark.slow]

JOBS = 20


def _serving(api_pid: int, port: int) -> dict[int, int]:
    """Established connections on ``port`` per api process (the children uvicorn started)."""
    counts: dict[int, int] = {}
    for child in psutil.Process(api_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            held = [c for c in child.net_connections("tcp") if c.laddr and c.laddr.port == port and c.raddr]
            if "spawn_main" in " ".join(child.cmdline()):  # not the resource tracker
                counts[child.pid] = len(held)
    return counts


def test_two_api_processes_on_one_port_serve_every_stream_and_resume(tmp_path: Path) -> None:
    stack = FaultStack(tmp_path)
    sockets: list[ClientConnection] = []
    opened = contextlib.ExitStack()
    try:
        stack.start_redis()
        api = stack.start("api", ["api", "--workers", "2"])
        stack.start("worker", ["worker", "--queues", QUEUE_NOTIFICATIONS, "--hostname", "worker@%h"])
        stack.wait_ready(["worker"])
        assert len(_serving(api.pid, stack.api_port)) == 2, "uvicorn did not start two api processes"

        # Open WebSockets until each process holds some (the kernel hands a new connection to either).
        while len(sockets) < 50 and (len(sockets) < 4 or min(_serving(api.pid, stack.api_port).values()) == 0):
            ws = opened.enter_context(connect(f"{stack.ws_url}/ws", open_timeout=10, additional_headers=stack.headers))
            subscribed(ws)
            sockets.append(ws)
        held = _serving(api.pid, stack.api_port)
        assert min(held.values()) >= 1, f"every WebSocket landed on one process: {held}"

        job_ids = [submit(stack.base_url, f"job {n}", headers=stack.headers) for n in range(JOBS)]
        received: list[list[str]] = []
        for ws in sockets:
            ids: list[str] = []
            finished: set[str] = set()
            while not set(job_ids) <= finished:
                event = recv(ws)
                if event.get("job_id"):
                    ids.append(str(event["event_id"]))
                    if event["type"] in FINISHED:
                        finished.add(str(event["job_id"]))
            received.append(ids)
        in_stream = job_events_after(stack.redis_url, "0-0", owner="tests")

        # A resume from the middle, on whichever process takes the new connection.
        middle = in_stream[len(in_stream) // 2]
        with connect(
            f"{stack.ws_url}/ws?last_event_id={middle}", open_timeout=10, additional_headers=stack.headers
        ) as ws:
            resumed = [str(recv(ws)["event_id"]) for _ in range(len(in_stream) - len(in_stream) // 2 - 1)]
    finally:
        opened.close()
        stack.stop_all()

    print(f"{len(sockets)} WebSockets over 2 api processes ({held}); {JOBS} jobs, {len(in_stream)} events each")
    for ids in received:
        assert ids == in_stream, "a WebSocket missed or repeated an event"
    assert resumed == in_stream[len(in_stream) // 2 + 1 :]
