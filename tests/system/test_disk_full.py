"""A full disk under real processes: the data directory (job store, spool, storage) and the Redis directory (its
append-only file, as the embedded Redis keeps it) on one small tmpfs, mounted here (root only).

While the disk is full: an upload answers 507 with a detail that names no path and leaves nothing behind (no spool
file, no job); notifications answer 202 (the job store could record them) or 503, never 500; Redis refuses writes
(``MISCONF``) and every Celery worker waits instead of exiting. Once space is freed: new submissions succeed without
a restart, every job that got a 202 succeeds, and no process exited.
"""

from __future__ import annotations

import errno
import functools
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support import Process
from tests.system.faults import FaultStack, accepted_ids, submit_many
from tests.uploads_support import BOUNDARY, MULTIPART, body, part

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(400)]

WORKERS = {"uploads": "worker-uploads", "notifications": "worker-notifications", "housekeeping": "worker-housekeeping"}


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs at ``tmp_path/disk``."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def stack(disk: Path, tmp_path: Path) -> Iterator[FaultStack]:
    stack = FaultStack(disk)
    stack.logs = tmp_path / "logs"  # off the full disk, so that the processes can still say what they meet
    try:
        stack.start_redis()
        stack.start("api", ["api"])
        for queue, name in WORKERS.items():
            stack.start(name, ["worker", "--queues", queue])
        stack.start("beat", ["beat"])
        stack.wait_ready(WORKERS)
        yield stack
    finally:
        stack.stop_all()


def fill(disk: Path) -> Path:
    """Write a file until the disk has no room left; returns it."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with filler.open("ab", buffering=0) as handle:  # the last pages too
        try:
            while True:
                handle.write(b"\0" * 512)
        except OSError:
            pass
    return filler


def refuses_writes(client: redis.Redis) -> bool:
    try:
        client.set("conveyor-tests:probe", "1")
    except redis.exceptions.ResponseError as exc:
        assert str(exc).startswith("MISCONF"), exc
        return True
    return False


def upload(client: httpx.Client, content: bytes) -> httpx.Response:
    return client.post(
        "/uploads", content=body(part('form-data; name="file"; filename="f.bin"', content)), headers=MULTIPART
    )


def chunked_upload(client: httpx.Client, size: int) -> httpx.Response:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the disk is found full while the file is written
        yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="f.bin"\r\n\r\n'.encode()
        for _ in range(size // 65536):
            yield os.urandom(65536)
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    return client.post("/uploads", content=chunks(), headers=MULTIPART)


def met_misconf(process: Process) -> bool:
    return "MISCONF" in process.output()


def log_body(message: str) -> dict[str, str]:
    return {"channel": "log", "message": message}


def test_a_full_disk_refuses_cleanly_and_everything_resumes_when_space_returns(stack: FaultStack, disk: Path) -> None:
    pids = {name: process.pid for name, process in stack.processes.items()}
    redis_client = redis.Redis.from_url(stack.redis_url)
    with httpx.Client(base_url=stack.base_url, headers=stack.headers, timeout=60) as client:
        accepted = accepted_ids(
            submit_many(stack.base_url, [log_body(f"before {i}") for i in range(5)], headers=stack.headers)
        )
        first = upload(client, os.urandom(100_000))
        assert first.status_code == 202, first.text
        accepted.append(first.json()["job_id"])
        stack.wait_finished(accepted, 60)
        spool = stack.data_dir / "spool"

        filler = fill(disk)
        statuses: Counter[int] = Counter()
        answers = [*submit_many(stack.base_url, [log_body(f"full {i}") for i in range(20)], headers=stack.headers)]
        stack.wait_for(lambda: refuses_writes(redis_client), 30, "Redis refuses writes (MISCONF)")
        answers += submit_many(stack.base_url, [log_body(f"misconf {i}") for i in range(20)], headers=stack.headers)
        for answer in answers:
            statuses[answer.status_code] += 1
            assert answer.status_code in (202, 503), answer.text
            if answer.status_code == 202:
                accepted.append(answer.json()["job_id"])
            else:
                assert answer.headers["retry-after"] and answer.json()["detail"]
        for refused in (upload(client, os.urandom(1 << 20)), chunked_upload(client, 1 << 20)):
            assert refused.status_code == 507, refused.text
            detail = refused.json()["detail"]
            assert "storage space" in detail and "/" not in detail and "Errno" not in detail
        assert [p.name for p in spool.iterdir()] == [], "a refused upload left a file in the spool"
        assert sum(1 for row in stack.rows() if row["kind"] == "upload") == 1, "a refused upload left a job"
        assert client.get("/health").headers["content-type"].startswith("application/json"), "the api answers"
        for name in WORKERS.values():  # each worker met the refusal, and waits
            stack.wait_for(functools.partial(met_misconf, stack.processes[name]), 60, f"{name} met MISCONF")
        assert "upload not stored: no space left" in stack.processes["api"].output()

        filler.unlink()
        stack.wait_for(lambda: not refuses_writes(redis_client), 60, "Redis takes writes again")
        after = client.post("/notifications", json=log_body("space is back"))
        assert after.status_code == 202, after.text
        accepted.append(after.json()["job_id"])
        again = upload(client, os.urandom(100_000))
        assert again.status_code == 202, again.text
        accepted.append(again.json()["job_id"])
        stack.wait_finished(accepted, 180)
    redis_client.close()
    for name, process in stack.processes.items():
        assert process.alive() and process.pid == pids[name], f"{name} exited\n{process.output()[-3000:]}"
        assert "Unrecoverable error" not in process.output(), f"{name}:\n{process.output()[-3000:]}"
    print(f"answers while the disk was full: {dict(statuses)}")
