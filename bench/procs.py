"""Processes a benchmark starts: redis-server, ``conveyor api``, helper servers and client processes."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from conveyor.redis_server import free_port, redis_command, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to the hard limit; children inherit it. Returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def env(**extra: str) -> dict[str, str]:
    """The environment for child processes: no stray ``CONVEYOR_`` settings, the repo on ``PYTHONPATH``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    base.update(PYTHONUNBUFFERED="1", **extra)
    base["PYTHONPATH"] = str(ROOT) + os.pathsep + base.get("PYTHONPATH", "")
    return base


def start(argv: list[str], log: Path, environ: dict[str, str], stdin: int | None = None) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    try:
        return subprocess.Popen(argv, env=environ, stdout=handle, stderr=subprocess.STDOUT, stdin=stdin)
    finally:
        handle.close()


def stop(process: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 10) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def redis(data_dir: Path) -> Iterator[str]:
    """A real redis-server on a free loopback port (no persistence: a benchmark keeps nothing). Yields its URL."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = start(redis_command(port, data_dir, appendonly=False), data_dir / "redis.log", env())
    try:
        wait_for_port(port, 10, process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


def rss_kib(pid: int) -> int:
    """The process's resident set size now, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


PYTHON = sys.executable
