"""No key or ticket in any log: a full ``conveyor run`` at DEBUG, used with keys and tickets, good and bad."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.support import bearer, conveyor, create_key, run_env, wait_until_healthy

#: Longer than the global 120 s: `conveyor run`'s start (60 s), then a few 30 s waits.
pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(180)]


def test_the_logs_of_a_full_run_hold_no_key_and_no_ticket(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    env, api_port, _flower_port = run_env(
        data_dir, CONVEYOR_FLOWER_PASSWORD="flower-log-secret", CONVEYOR_LOG_LEVEL="DEBUG"
    )
    key = create_key(env, "careful")  # before the first start: no development key is made or printed
    secret = key.split("_", 2)[2]  # cvk_<id>_<secret>: the secret itself may hold "_"
    assert len(secret) == 43, key
    run = conveyor("run", ["run"], env, tmp_path / "logs")
    base_url, ws_base = f"http://127.0.0.1:{api_port}", f"ws://127.0.0.1:{api_port}"
    tickets: list[str] = []
    try:
        wait_until_healthy(base_url, 60, [run])
        with httpx.Client(base_url=base_url, headers=bearer(key), timeout=30) as client:
            job_id = client.post("/notifications", json={"channel": "log", "message": "hi"}).json()["job_id"]
            with connect(f"{ws_base}/ws?job_id={job_id}", additional_headers=bearer(key), open_timeout=10) as ws:
                while json.loads(ws.recv(timeout=30))["type"] != "job.succeeded":
                    pass
            for _ in range(2):
                tickets.append(client.post("/ws-tickets").json()["ticket"])
            upload = client.post("/uploads", files={"file": ("a.txt", b"text\n", "text/plain")})
            assert upload.status_code == 202
        with connect(f"{ws_base}/ws?ticket={tickets[0]}", open_timeout=10) as ws:
            ws.send(json.dumps({"op": "subscribe", "job_id": job_id}))
            # The socket follows every job of the key: the upload's events may come before the snapshot.
            seen = [json.loads(ws.recv(timeout=10))["type"]]
            while seen[-1] != "snapshot" and len(seen) < 10:
                seen.append(json.loads(ws.recv(timeout=10))["type"])
            assert seen[-1] == "snapshot" and all(kind.startswith("job.") for kind in seen[:-1]), seen
        with connect(f"{ws_base}/ws?ticket={tickets[0]}", open_timeout=10) as ws:  # reused: refused
            assert json.loads(ws.recv(timeout=10))["type"] == "error"
        with httpx.stream("GET", f"{base_url}/events", params={"ticket": tickets[1]}, timeout=10) as response:
            assert response.status_code == 200
        wrong = key[:-4] + "AAAA"
        assert httpx.get(f"{base_url}/jobs", headers=bearer(wrong), timeout=10).status_code == 401
        assert httpx.get(f"{base_url}/jobs?api_key={key}", timeout=10).status_code == 401
    finally:
        run.stop()
    logs = run.output()
    assert "level=debug" in logs  # DEBUG really was on
    for name, value in [("key", key), ("key secret", secret), ("wrong key", wrong), *[("ticket", t) for t in tickets]]:
        assert value not in logs, f"the {name} appears in the logs"
    for path in data_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for value in (secret, *tickets):
                assert value.encode() not in content, f"a secret is stored in {path}"
