"""What ``conveyor run`` keeps is its owner's only, its Redis is locked, and its secrets are printed once: in full on
the start that made them, as a hint afterwards. Two real starts on one data directory."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from conveyor.ops.redis_server import redis_server_binary
from tests.support import Process, conveyor, processes_with_env, run_env

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(240)]


def start(env: dict[str, str], logs: Path) -> Process:
    """``conveyor run``, once its ready banner is out."""
    run = conveyor("run", ["run"], env, logs)
    deadline = time.monotonic() + 90
    try:
        while "ready in" not in run.output():
            assert run.alive() and time.monotonic() < deadline, run.output()[-3000:]
            time.sleep(0.1)
    except BaseException:
        run.stop()  # never leave a stack behind
        raise
    return run


def stop(run: Process, data_dir: Path) -> str:
    assert run.stop(timeout=15) == 0, run.output()[-3000:]
    assert processes_with_env(f"CONVEYOR_DATA_DIR={data_dir}") == []
    return run.output()


def redis_cli(port: int, *args: str) -> str:
    beside = redis_server_binary().with_name("redis-cli")
    cli = str(beside) if beside.exists() else shutil.which("redis-cli")
    assert cli is not None, "no redis-cli"
    done = subprocess.run([cli, "-p", str(port), *args], capture_output=True, text=True, timeout=10)
    return (done.stdout + done.stderr).strip()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_files_a_locked_redis_and_secrets_shown_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    env, _api, _flower = run_env(data_dir)
    redis_port = int(env["CONVEYOR_REDIS_PORT"])

    run = start(env, tmp_path / "logs1")
    try:
        key = (data_dir / "dev-api-key").read_text().strip()
        flower_password = (data_dir / "flower-password").read_text().strip()
        password = (data_dir / "redis-password").read_text().strip()
        first = run.output()
        # Files 0600, directories 0700: secrets, the job store, Redis's files.
        for name in ("conveyor.db", "dev-api-key", "flower-password", "redis-password"):
            assert mode(data_dir / name) == 0o600, name
        for path in data_dir.rglob("*"):
            try:
                assert mode(path) == (0o700 if path.is_dir() else 0o600), path
            except FileNotFoundError:
                continue  # a temporary file, gone since the listing
        assert mode(data_dir) == 0o700

        # Redis: nothing without the password; CONFIG refused even with it.
        with redis.Redis(port=redis_port) as anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        assert "NOAUTH" in redis_cli(redis_port, "PING")
        assert redis_cli(redis_port, "--no-auth-warning", "-a", password, "PING") == "PONG"
        refused = redis_cli(redis_port, "--no-auth-warning", "-a", password, "CONFIG", "GET", "dir")
        assert "unknown command" in refused, refused

        # A part started by hand (no CONVEYOR_REDIS_URL) finds the embedded Redis's password by itself.
        by_hand = {k: v for k, v in env.items() if k != "CONVEYOR_REDIS_URL"}
        code = "import redis; from conveyor.settings import get_settings; "
        code += "print(redis.Redis.from_url(get_settings().effective_redis_url).ping())"
        done = subprocess.run([sys.executable, "-c", code], env=by_hand, capture_output=True, text=True, timeout=30)
        assert done.stdout.strip() == "True", done.stderr
    finally:
        first = stop(run, data_dir)
    assert key in first and flower_password in first, "the first start shows the new secrets in full"
    assert password not in first, "the Redis password is never printed"

    run = start(env, tmp_path / "logs2")
    second = stop(run, data_dir)
    assert key not in second and flower_password not in second, "a later start shows only hints"
    assert f"{key[:8]}…" in second and f"{flower_password[:8]}…" in second, second[-3000:]
    assert password not in second
