"""The embedded Redis as ``conveyor run`` starts it (locked), and the port checks, for real."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conveyor.ops.redis_server import free_port, locked_config, port_taken, redis_command, wait_for_port
from tests.support import start_process

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A redis-server started with the locked configuration; yields its port and password."""
    password_file = tmp_path / "redis-password"
    redis_dir = tmp_path / "redis"
    config = locked_config(redis_dir, password_file)
    port = free_port()
    process = start_process("redis", redis_command(port, redis_dir, config=config), os.environ, tmp_path)
    try:
        wait_for_port(port, 10, process.popen)
        yield port, password_file.read_text().strip()
    finally:
        process.stop()


def test_the_locked_redis_needs_its_password_and_refuses_config_and_debug(locked: tuple[int, str]) -> None:
    port, password = locked
    with redis.Redis(port=port) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with redis.Redis(port=port, password="not-it") as wrong, pytest.raises(redis.AuthenticationError):
        wrong.ping()
    with redis.Redis(port=port, password=password) as client:
        assert client.ping()
        for command in (("CONFIG", "GET", "dir"), ("DEBUG", "SLEEP", "0"), ("MODULE", "LIST")):
            with pytest.raises(redis.ResponseError, match="unknown command"):
                client.execute_command(*command)


def test_the_password_is_on_no_command_line_and_its_files_are_private(tmp_path: Path, locked: tuple[int, str]) -> None:
    _port, password = locked
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                assert password.encode() not in (entry / "cmdline").read_bytes()
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
    for path in (tmp_path / "redis-password", tmp_path / "redis" / "locked.conf"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "redis").stat().st_mode) == 0o700


def test_a_port_is_taken_while_something_listens_on_it() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port_taken(port, "127.0.0.1")
        assert port_taken(port, "0.0.0.0")  # a server on every address would need it too
    assert not port_taken(port, "127.0.0.1")


def test_a_port_with_only_closing_connections_is_free() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the server side closes first: its end of the connection lingers in TIME_WAIT
        client.close()
    assert not port_taken(port, "127.0.0.1")
