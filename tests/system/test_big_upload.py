"""A 1 GiB upload: constant memory in the api, the api stays responsive, verified storage, progress events."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import Stack
from tests.support import peak_rss_kib

#: Longer than the global 120 s: a 1 GiB upload may take its 300 s, then up to 120 s per event.
pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(480)]
GiB = 1024**3


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with path.open("wb") as handle:
        for i in range(size >> 20):
            data = block[: 1 << 19] + i.to_bytes(8, "big") * (1 << 16)
            digest.update(data)
            handle.write(data)
    return digest.hexdigest()


def post_file(url: str, path: Path, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST the file as multipart: with curl when it is there (as a user would), else streamed by httpx."""
    if shutil.which("curl"):
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "-w",
                "\n%{http_code}",
                "-H",
                f"Authorization: {headers['Authorization']}",
                "-F",
                f"file=@{path}",
                url,
            ],
            capture_output=True,
            check=True,
            timeout=300,
        ).stdout.decode()
        text, _, code = out.rpartition("\n")
        return int(code), json.loads(text)
    boundary = "big-upload-boundary"

    def stream() -> Any:
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n\r\n'.encode()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        url,
        content=stream(),
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=300,
    )
    return response.status_code, response.json()


def test_1gib_upload(stack: Stack, tmp_path: Path) -> None:
    source = tmp_path / "1GiB.bin"
    expected = make_file(source, GiB)
    api_pid = stack.processes["api"].pid
    peak_before = peak_rss_kib(api_pid)

    outcome: dict[str, Any] = {}

    def run_upload() -> None:
        started = time.monotonic()
        outcome["status"], outcome["body"] = post_file(f"{stack.base_url}/uploads", source, stack.headers)
        outcome["seconds"] = time.monotonic() - started

    uploader = threading.Thread(target=run_upload)
    uploader.start()
    health_during: list[int] = []
    while uploader.is_alive():
        try:
            health_during.append(httpx.get(f"{stack.base_url}/health", timeout=10).status_code)
        except httpx.TimeoutException:
            health_during.append(0)
        time.sleep(0.05)
    uploader.join()
    source.unlink()

    assert outcome["status"] == 202, outcome
    job_id = outcome["body"]["job_id"]
    growth_mib = (peak_rss_kib(api_pid) - peak_before) / 1024
    print(f"1 GiB upload: 202 after {outcome['seconds']:.2f}s; api peak RSS grew by {growth_mib:.1f} MiB;")
    print(f"/health answered {len(health_during)} times during the upload")
    assert growth_mib <= 32, f"api peak RSS grew by {growth_mib:.1f} MiB"
    assert health_during and all(code == 200 for code in health_during), health_during

    events: list[dict[str, Any]] = []
    with connect(f"{stack.ws_url}/ws?job_id={job_id}", open_timeout=10, additional_headers=stack.headers) as ws:
        while not events or events[-1]["type"] not in ("job.succeeded", "job.failed"):
            events.append(json.loads(ws.recv(timeout=120)))
    assert events[-1]["type"] == "job.succeeded", events[-1]
    progress = [e["progress"] for e in events if e["type"] == "job.progress"]
    assert progress and progress == sorted(progress) and 0 < progress[-1] < 100, progress
    result = events[-1]["result"]
    assert result["sha256"] == expected and result["size"] == GiB
    stored = stack.data_dir / "storage" / result["storage_key"]
    digest = hashlib.sha256()
    with stored.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    assert digest.hexdigest() == expected
    stored.unlink()
