"""A Sentinel-managed Redis for tests: a master redis-server, a replica of it and three Sentinels (the same binary run
with ``--sentinel``), each on a free port, with configuration files generated in the test's directory."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from conveyor.ops.redis_server import free_port, redis_command, redis_server_binary, wait_for_port
from tests.support import Process, start_process

MASTER_NAME = "conveyor"
#: How long a master may not answer before the Sentinels call it down (a failover then takes a second or two more).
DOWN_AFTER_MS = 1000


@dataclass
class SentinelGroup:
    """The running servers; :attr:`url` is the ``sentinel://`` URL Conveyor takes as ``CONVEYOR_REDIS_URL``."""

    root: Path
    master_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    sentinel_ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    processes: dict[str, Process] = field(default_factory=dict)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"sentinel://{hosts}/0?master={MASTER_NAME}"

    def start(self) -> None:
        logs = self.root / "logs"
        for name, port, extra in (
            ("redis-master", self.master_port, []),
            ("redis-replica", self.replica_port, ["--replicaof", "127.0.0.1", str(self.master_port)]),
        ):
            data = self.root / name
            data.mkdir(parents=True, exist_ok=True)
            process = start_process(name, [*redis_command(port, data), *extra], os.environ, logs)
            self.processes[name] = process
            wait_for_port(port, 10, process.popen)
        for n, port in enumerate(self.sentinel_ports):
            data = self.root / f"sentinel-{n}"
            data.mkdir(parents=True, exist_ok=True)
            config = data / "sentinel.conf"  # Sentinel rewrites its file with what it learns
            config.write_text(
                "\n".join(
                    [
                        f"port {port}",
                        "bind 127.0.0.1",
                        f"dir {data}",
                        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2",
                        f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                        f"sentinel failover-timeout {MASTER_NAME} 10000",
                        f"sentinel parallel-syncs {MASTER_NAME} 1",
                    ]
                )
                + "\n"
            )
            argv = [str(redis_server_binary()), str(config), "--sentinel", "--loglevel", "notice"]
            process = start_process(f"sentinel-{n}", argv, os.environ, logs)
            self.processes[f"sentinel-{n}"] = process
            wait_for_port(port, 10, process.popen)
        self.wait_until(self._ready, 30, "the replica in sync and known to every Sentinel")

    def _ready(self) -> bool:
        with contextlib.closing(redis.Redis(port=self.replica_port, socket_timeout=2)) as replica:
            if replica.info("replication").get("master_link_status") != "up":
                return False
        for port in self.sentinel_ports:
            with contextlib.closing(redis.Redis(port=port, socket_timeout=2)) as sentinel:
                replicas: Any = sentinel.sentinel_slaves(MASTER_NAME)
                others: Any = sentinel.sentinel_sentinels(MASTER_NAME)
                if len(replicas) < 1 or len(others) < 2:
                    return False
        return True

    def master_port_now(self) -> int:
        """The master's port as a majority of Sentinels names it."""
        ports = []
        for port in self.sentinel_ports:
            with contextlib.closing(redis.Redis(port=port, socket_timeout=2)) as sentinel:
                with contextlib.suppress(redis.RedisError):
                    address: Any = sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)
                    ports.append(int(address[1]))
        return max(set(ports), key=ports.count)

    def kill_master(self) -> float:
        """SIGKILL the master redis-server; returns when."""
        process = self.processes["redis-master"]
        process.popen.kill()
        process.popen.wait(10)
        return time.monotonic()

    def wait_until(self, done: Callable[[], bool], timeout: float, what: str) -> float:
        started = time.monotonic()
        while True:
            try:
                if done():
                    return time.monotonic() - started
            except redis.RedisError:
                pass
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{what}: not within {timeout}s")
            time.sleep(0.2)

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()


@contextlib.contextmanager
def sentinel_group(root: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(root)
    try:
        group.start()
        yield group
    finally:
        group.stop()
