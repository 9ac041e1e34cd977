"""Upload benchmark: POST /uploads against a minimal ASGI sink, and ingest against the same sha256 loop alone.

Everything runs on this machine, on loopback, in one run: the same file is sent with curl to a raw ASGI app
that discards the body (the baseline) and to a real ``conveyor api``; a real ``conveyor worker`` ingests it.
Rounds alternate between the two targets and medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

from bench.procs import api_key, auth_headers, generous_limits
from bench.report import Metric, Report, Row
from conveyor.ops.redis_server import free_port, redis_command, wait_for_port

MiB = 1024 * 1024
NAME = "upload"
DESCRIPTION = "POST /uploads vs a raw ASGI sink (curl), worker ingest vs its sha256 loop alone, api RSS growth"
METRICS = [
    Metric("upload_mib_s", "upload", "MiB/s", True),
    Metric("ingest_mib_s", "ingest", "MiB/s", True),
    Metric("rss_growth_mib_per_gib", "api peak RSS growth", "MiB/GiB", False),
]


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _curl_upload(url: str, path: Path, headers: dict[str, str]) -> tuple[float, dict[str, Any] | str]:
    started = time.perf_counter()
    argv = ["curl", "-sS", "--fail-with-body", "-F", f"file=@{path}", url]
    argv += [option for name, value in headers.items() for option in ("-H", f"{name}: {value}")]
    out = subprocess.run(argv, capture_output=True, check=True, timeout=600).stdout.decode()
    seconds = time.perf_counter() - started
    try:
        return seconds, json.loads(out)
    except json.JSONDecodeError:
        return seconds, out


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def _ingest_seconds(ws_url: str, job_id: str, storage: Path, headers: dict[str, str]) -> float:
    """The worker's own time from job.started to job.succeeded. The stored copy is then deleted, so every round
    starts from the same state (otherwise each round's copy would crowd the page cache of the next)."""
    started = finished = None
    key = None
    with connect(f"{ws_url}/ws?job_id={job_id}", open_timeout=10, additional_headers=headers) as ws:
        while finished is None:
            event = json.loads(ws.recv(timeout=600))
            if event["type"] == "job.started":
                started = event["ts"]
            elif event["type"] == "job.succeeded":
                finished = event["ts"]
                key = event["result"]["storage_key"]
            elif event["type"] == "job.failed":
                raise RuntimeError(f"ingest failed: {event}")
    assert started is not None and key is not None
    (storage / key).unlink()
    return float(finished - started)


def _make_file(path: Path, size: int) -> None:
    block = os.urandom(MiB)
    with path.open("wb") as handle:
        for i in range(size // MiB):
            handle.write(i.to_bytes(8, "big") + block[8:])


def run(options: argparse.Namespace) -> Report:
    """Run the benchmark (1 GiB, 3 rounds; 128 MiB, 1 round with ``--quick``)."""
    quick = getattr(options, "quick", False)
    size_mib, rounds = (128, 1) if quick else (1024, 3)
    if shutil.which("curl") is None:
        raise RuntimeError("the upload benchmark needs curl")
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-upload-", dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        source = root / "payload.bin"
        _make_file(source, size_mib * MiB)
        redis_port, api_port, sink_port = free_port(), free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        env.update(
            CONVEYOR_DATA_DIR=str(root / "var"),
            CONVEYOR_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            CONVEYOR_API_PORT=str(api_port),
            CONVEYOR_LOG_LEVEL="WARNING",
            CONVEYOR_MAX_UPLOAD_BYTES=str(4 * size_mib * MiB),
            **generous_limits(),
        )
        (root / "redis").mkdir()
        log = (root / "processes.log").open("ab")
        quiet = {"stdout": log, "stderr": subprocess.STDOUT}
        try:
            processes.append(subprocess.Popen(redis_command(redis_port, root / "redis"), **quiet))  # type: ignore[call-overload]
            wait_for_port(redis_port, 10)
            me = [sys.executable, "-m", "conveyor"]
            headers = auth_headers(api_key(env))  # sent to the sink too, so that both requests are the same
            api = subprocess.Popen([*me, "api"], env=env, **quiet)  # type: ignore[call-overload]
            processes.append(api)
            worker_argv = [*me, "worker", "--queues", "uploads", "--concurrency", "1"]
            processes.append(subprocess.Popen(worker_argv, env=env, **quiet))  # type: ignore[call-overload]
            sink_argv = [sys.executable, "-m", "uvicorn", "bench.sink:app", "--port", str(sink_port)]
            sink_argv += ["--loop", "uvloop", "--http", "httptools", "--log-level", "warning"]
            processes.append(subprocess.Popen(sink_argv, **quiet))  # type: ignore[call-overload]
            base = f"http://127.0.0.1:{api_port}"
            try:
                _wait_http(f"{base}/health")
            except TimeoutError:
                sys.stderr.write((root / "processes.log").read_text()[-3000:])
                raise
            _wait_http(f"http://127.0.0.1:{sink_port}/")

            sink_times, conveyor_times, ingest_times = [], [], []
            _curl_upload(f"http://127.0.0.1:{sink_port}/", source, headers)  # warm-up, not counted
            seconds, body = _curl_upload(f"{base}/uploads", source, headers)
            assert isinstance(body, dict), body
            _ingest_seconds(base.replace("http", "ws"), body["job_id"], root / "var" / "storage", headers)
            peak_before = _peak_rss_kib(api.pid)
            for _ in range(rounds):
                sink_times.append(_curl_upload(f"http://127.0.0.1:{sink_port}/", source, headers)[0])
                seconds, body = _curl_upload(f"{base}/uploads", source, headers)
                assert isinstance(body, dict), body
                conveyor_times.append(seconds)
                ingest_times.append(
                    _ingest_seconds(base.replace("http", "ws"), body["job_id"], root / "var" / "storage", headers)
                )
            growth_mib = (_peak_rss_kib(api.pid) - peak_before) / 1024
            sha_times = []
            for _ in range(rounds):
                hashed = subprocess.run(
                    [sys.executable, "-m", "bench.hash_file", str(source)], check=True, capture_output=True, text=True
                )
                sha_times.append(float(hashed.stdout))
        finally:
            for process in reversed(processes):
                process.terminate()
            for process in processes:
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()

    def rate(times: list[float]) -> float:
        return size_mib / statistics.median(times)

    gib = size_mib / 1024
    report = Report(
        name=NAME,
        description=DESCRIPTION,
        metrics=METRICS,
        goals=["upload MiB/s >= 0.5x the ASGI sink's", "api peak RSS growth <= 16 MiB per GiB"],
    )
    setting = f"{size_mib} MiB file, median of {rounds}"
    report.rows.append(
        Row(
            setting,
            "baseline",
            {"upload_mib_s": rate(sink_times), "ingest_mib_s": rate(sha_times)},
            notes="upload: curl into a raw ASGI sink; ingest: the worker's sha256 loop alone (bench/hash_file.py)",
        )
    )
    report.rows.append(
        Row(
            setting,
            "conveyor",
            {
                "upload_mib_s": rate(conveyor_times),
                "ingest_mib_s": rate(ingest_times),
                "rss_growth_mib_per_gib": growth_mib / gib,
            },
        )
    )
    return report


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import main as run_all

    return run_all(["upload", *(argv or [])])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
