"""A development stack as a person starts it (``conveyor run``: embedded Redis, api, a worker per queue, beat,
Flower, the catcher) on free ports, for the console's and the command-line client's tests; with an HTTP receiver
for webhooks. Every failure is final at once (``CONVEYOR_MAX_ATTEMPTS=1``)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.receivers import HttpReceiver, http_receiver
from tests.support import Process, bearer, conveyor, run_env, wait_until_healthy


class DevStack:
    """The running ``conveyor run``, its data directory, api address, development key and a webhook receiver."""

    def __init__(self, run: Process, data_dir: Path, base_url: str, key: str, receiver: HttpReceiver) -> None:
        self.run = run
        self.data_dir = data_dir
        self.base_url = base_url
        self.key = key
        self.receiver = receiver

    def part_pids(self, name: str) -> list[int]:
        """Pids of this stack's part ``name`` (``api``, ``worker-notifications``…), from their environments."""
        wanted = {f"CONVEYOR_PROCESS_NAME={name}".encode(), f"CONVEYOR_DATA_DIR={self.data_dir}".encode()}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                variables = set((entry / "environ").read_bytes().split(b"\0"))
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if wanted <= variables and b"conveyor" in cmdline:
                found.append(int(entry.name))
        return found

    def job(self, job_id: str) -> dict[str, object]:
        """The job as ``GET /jobs/{id}`` shows it."""
        response = httpx.get(f"{self.base_url}/jobs/{job_id}", headers=bearer(self.key), timeout=10)
        response.raise_for_status()
        result: dict[str, object] = response.json()
        return result

    def client_env(self) -> dict[str, str]:
        """An environment for the ``conveyor`` client commands: this api and key, nothing else of ours."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(CONVEYOR_API_URL=self.base_url, CONVEYOR_API_KEY=self.key, PYTHONUNBUFFERED="1")
        return env

    def client(self) -> list[str]:
        """The argv that starts ``conveyor``."""
        return [sys.executable, "-m", "conveyor"]


@contextlib.contextmanager
def dev_stack(work: Path) -> Iterator[DevStack]:
    """``conveyor run`` in ``work`` (data under ``work/var``) until the block ends."""
    data_dir = work / "var"
    env, api_port, _ = run_env(data_dir, CONVEYOR_MAX_ATTEMPTS="1")
    # Pages may also be opened under a host name (tests/browser.py maps it to 127.0.0.1), as behind a proxy.
    env["CONVEYOR_ALLOWED_ORIGINS"] = f"http://conveyor.test:{api_port}"
    run = conveyor("run", ["run"], env, work, cwd=work)
    base_url = f"http://127.0.0.1:{api_port}"
    try:
        with http_receiver() as receiver:
            wait_until_healthy(base_url, 120, [run])
            key = (data_dir / "dev-api-key").read_text().strip()
            yield DevStack(run, data_dir, base_url, key, receiver)
    finally:
        run.stop(timeout=30)
