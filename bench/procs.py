"""Processes a benchmark starts: redis-server, ``conveyor api``, helper servers and client processes."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Iterator
from pathlib import Path

import httpx
import psutil

from conveyor.ops.redis_server import free_port, redis_command, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


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


#: The owner of the API key a benchmark makes; events a benchmark writes itself carry it.
OWNER = "bench"
#: Per-key limits (requests/s, burst, streams) are set this high so that they never refuse a benchmark's load.
GENEROUS = 1_000_000


def generous_limits() -> dict[str, str]:
    """Environment that lifts every numeric per-key limit: the ``rate_limit*`` settings and ``max_streams_per_key``
    (unknown ``CONVEYOR_`` variables are ignored, so this is safe whatever the installed Conveyor knows)."""
    from conveyor.settings import Settings

    environ = {"CONVEYOR_RATE_LIMIT_PER_SECOND": str(GENEROUS), "CONVEYOR_RATE_LIMIT_BURST": str(GENEROUS)}
    for name, info in Settings.model_fields.items():
        if (name.startswith("rate_limit") or name.endswith("_per_key")) and info.annotation in (int, float):
            environ[f"CONVEYOR_{name.upper()}"] = str(GENEROUS)
    return environ


def api_key(environ: dict[str, str]) -> str | None:
    """A new API key for :data:`OWNER`: the last line ``python -m conveyor keys create`` prints, run with
    ``environ`` (the stack's data directory and database). ``None`` when the installed Conveyor has no ``keys``."""
    command = [PYTHON, "-m", "conveyor", "keys"]
    if subprocess.run([*command, "--help"], env=environ, capture_output=True, timeout=60).returncode != 0:
        return None
    made = subprocess.run(
        [*command, "create", "--owner", OWNER], env=environ, capture_output=True, text=True, timeout=120
    )
    if made.returncode != 0 or not made.stdout.strip():
        raise RuntimeError(f"conveyor keys create failed ({made.returncode}): {made.stderr[-2000:]}")
    return made.stdout.strip().splitlines()[-1].strip()


def auth_headers(key: str | None) -> dict[str, str]:
    """The ``Authorization`` header for ``key``, sent always (an api without authentication ignores it)."""
    return {"Authorization": f"Bearer {key or 'no-auth'}"}


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


class Group:
    """Processes started for one subject, each in its own session so that a signal reaches a worker's pool too."""

    def __init__(self, root: Path, environ: dict[str, str]) -> None:
        self.root, self.env = root, environ
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        (root / "logs").mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` as ``name`` (``CONVEYOR_PROCESS_NAME``), its output in ``root/logs/<name>.log``."""
        with (self.root / "logs" / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                argv,
                env={**self.env, "CONVEYOR_PROCESS_NAME": name},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def check(self) -> None:
        """Raise, with the end of its log, if a process of the group has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.root / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")

    def stop(self, kill: Collection[str] = ()) -> None:
        """SIGTERM to each process group, last started first (SIGKILL to those named in ``kill``); SIGKILL to any
        still there after 20 s."""
        for name, process in reversed(self.processes.items()):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL if name in kill else signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


@contextlib.contextmanager
def redis_server(data_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real redis-server on a free loopback port (no persistence: a benchmark keeps nothing).
    Yields its URL and its process."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = start(redis_command(port, data_dir, appendonly=False), data_dir / "redis.log", env())
    try:
        wait_for_port(port, 10, process)
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        stop(process)


@contextlib.contextmanager
def redis(data_dir: Path) -> Iterator[str]:
    """:func:`redis_server`, yielding only its URL."""
    with redis_server(data_dir) as (url, _process):
        yield url


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
    return int(psutil.Process(pid).memory_info().rss) // 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used, in seconds."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...); empty for a process that is gone."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used by ``pid`` and every descendant, those that exited and were waited for included
    (user + system + children's user + children's system of each live process of the tree); 0.0 for a process
    that is gone."""
    total = 0.0
    for member in [pid, *descendants(pid)]:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(member).cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total
