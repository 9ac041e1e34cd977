"""User schedules through ``conveyor run``: an ``every_seconds: 2`` schedule fires one job per due time with one beat
and with two (a second ``conveyor beat``, as on a second host), its jobs' events arrive on ``/ws``, pausing stops
it and deleting removes it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.support import Process, base_env, bearer, conveyor, redis_server, run_env, wait_until_healthy

pytestmark = pytest.mark.system

#: Seconds a firing may lag its due time (beat asks every second; the housekeeping worker then fires).
LAG = 3.0


class Events:
    """Every job event of the key's owner (``/ws`` with no filter), collected on a thread until :meth:`close`."""

    def __init__(self, ws_url: str, headers: dict[str, str]) -> None:
        self.events: list[dict[str, Any]] = []
        self.opened = threading.Event()
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(f"{ws_url}/ws", headers), daemon=True)
        self.thread.start()
        assert self.opened.wait(15), "/ws did not open"

    def _read(self, url: str, headers: dict[str, str]) -> None:
        with connect(url, open_timeout=10, additional_headers=headers) as ws:
            self.opened.set()
            while not self.closing.is_set():
                try:
                    self.events.append(json.loads(ws.recv(timeout=0.2)))
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    return

    def types_of(self, job_id: str) -> list[str]:
        return [event["type"] for event in list(self.events) if event.get("job_id") == job_id]

    def close(self) -> None:
        self.closing.set()
        self.thread.join(15)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], dict[str, str], Path]]:
    """``conveyor run`` (one beat among its parts): the api's URL, the key's headers, the environment, the logs."""
    data_dir = tmp_path / "var"
    with redis_server(tmp_path / "redis") as redis_url:  # a Redis a second host could reach too
        env, api_port, _flower_port = run_env(data_dir, CONVEYOR_REDIS_URL=redis_url)
        run = conveyor("run", ["run"], env, tmp_path)
        base_url = f"http://127.0.0.1:{api_port}"
        try:
            wait_until_healthy(base_url, 90, [run])
            yield base_url, bearer((data_dir / "dev-api-key").read_text().strip()), env, tmp_path
        finally:
            run.stop(timeout=30)


def fired(client: httpx.Client, schedule_id: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = client.get("/jobs", params={"schedule_id": schedule_id, "limit": 200}).json()["jobs"]
    return sorted(jobs, key=lambda job: job["scheduled_for"])


def due_times(jobs: list[dict[str, Any]]) -> list[datetime]:
    return [datetime.fromisoformat(job["scheduled_for"]) for job in jobs]


def watch_one(client: httpx.Client, name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Make an ``every_seconds: 2`` schedule and wait until it has fired for its due time 8 s after it was made;
    returns it and its jobs. Its due times in the first 7 s are 2, 4 and 6 s after it was made: exactly 3 jobs, one
    per due time, whatever the lag of each firing."""
    body = {"name": name, "every_seconds": 2, "notification": {"channel": "log", "message": f"{name} tick"}}
    response = client.post("/schedules", json=body)
    assert response.status_code == 201, response.text
    schedule = response.json()
    made = datetime.fromisoformat(schedule["created_at"])
    deadline = time.monotonic() + 60
    while True:
        jobs = fired(client, schedule["schedule_id"])
        times = due_times(jobs)
        if times and times[-1] >= made + timedelta(seconds=8):
            break
        assert time.monotonic() < deadline, f"the due time 8 s after {made} never fired: {times}"
        time.sleep(0.5)
    assert len(times) == len(set(times)), f"a due time fired twice: {times}"
    in_window = [t for t in times if t <= made + timedelta(seconds=7)]
    assert in_window == [made + timedelta(seconds=s) for s in (2, 4, 6)], (made, times)
    return schedule, jobs


def test_a_schedule_fires_once_per_due_time_with_one_beat_or_two(
    running: tuple[str, dict[str, str], dict[str, str], Path], tmp_path: Path
) -> None:
    base_url, headers, env, logs = running
    events = Events(base_url.replace("http://", "ws://"), headers)
    second_beat: Process | None = None
    try:
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
            # One beat (conveyor run's own).
            one, jobs_one = watch_one(client, "one-beat")

            # A second beat, as another host would run it: its own data directory, the same job store and Redis.
            other = base_env(
                tmp_path / "other-host",
                CONVEYOR_REDIS_URL=env["CONVEYOR_REDIS_URL"],
                CONVEYOR_DATABASE_URL=f"sqlite:///{Path(env['CONVEYOR_DATA_DIR']) / 'conveyor.db'}",
            )
            second_beat = conveyor("beat-2", ["beat"], other, logs)
            deadline = time.monotonic() + 30
            while "maxinterval" not in second_beat.output():  # the last line of beat's banner: it is running
                assert second_beat.alive() and time.monotonic() < deadline, second_beat.output()[-3000:]
                time.sleep(0.2)
            two, jobs_two = watch_one(client, "two-beats")
            assert second_beat.alive(), second_beat.output()[-3000:]

            # Every fired job ran, and its events reached the /ws client.
            for job in jobs_one + jobs_two:
                deadline = time.monotonic() + 20
                while events.types_of(job["job_id"])[-1:] != ["job.succeeded"]:
                    assert time.monotonic() < deadline, (job, events.types_of(job["job_id"]))
                    time.sleep(0.1)
                assert events.types_of(job["job_id"]) == ["job.queued", "job.started", "job.succeeded"]

            # Pausing stops it: not one job after the pause is answered.
            path = f"/schedules/{two['schedule_id']}"
            assert client.patch(path, json={"paused": True}).json()["paused"] is True
            count = len(fired(client, two["schedule_id"]))
            time.sleep(4 + LAG)
            assert len(fired(client, two["schedule_id"])) == count

            # Deleting removes it (and it fires no more); its jobs stay.
            assert client.patch(f"/schedules/{one['schedule_id']}", json={"paused": False}).status_code == 200
            assert client.delete(f"/schedules/{one['schedule_id']}").status_code == 204
            assert client.get(f"/schedules/{one['schedule_id']}").status_code == 404
            count = len(fired(client, one["schedule_id"]))
            time.sleep(4 + LAG)
            assert len(fired(client, one["schedule_id"])) == count >= 3
            assert [s["name"] for s in client.get("/schedules").json()["schedules"]] == ["two-beats"]
    finally:
        events.close()
        if second_beat is not None:
            second_beat.stop()
