"""The command-line client (``conveyor submit``, ``upload``, ``watch``, ``jobs``, ``retry``, ``cancel``…) against
``conveyor run``: two progress bars under a pseudo-terminal for a 200 MB upload, plain lines through a pipe, exit 1
for a job that failed, 2 with one line for a refusal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pexpect
import pytest

from tests.devstack import DevStack
from tests.receivers import Reply
from tests.support import wait_until_healthy

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]


def client(stack: DevStack, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``conveyor ARGS`` with stdout and stderr piped."""
    return subprocess.run(
        [*stack.client(), *args], env=stack.client_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def test_an_upload_with_watch_draws_two_bars_on_a_terminal(dev_stack: DevStack, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as handle:
        for _ in range(200):
            handle.write(os.urandom(1024 * 1024))
    argv = dev_stack.client()
    child = pexpect.spawn(
        argv[0],
        [*argv[1:], "upload", str(big), "--watch"],
        env={**dev_stack.client_env(), "TERM": "xterm-256color", "COLUMNS": "120"},
        dimensions=(30, 120),
        timeout=120,
    )
    child.expect(pexpect.EOF)
    child.close()
    screen = child.before.decode(errors="replace")
    (tmp_path / "terminal.txt").write_text(screen)
    assert child.exitstatus == 0, screen[-2000:]
    assert "\x1b[" in screen, "no terminal drawing"
    sending = [line for line in screen.split("\r") if "sending big.bin" in line]
    processing = [line for line in screen.split("\r") if "processing big.bin" in line]
    assert sending and processing, screen[-2000:]
    assert "━" in sending[-1] and "100%" in sending[-1] and "MB/s" in sending[-1], sending[-1]
    assert "━" in processing[-1] and "100%" in processing[-1] and "succeeded" in processing[-1], processing[-1]
    # the bars moved: some drawing of each showed it part-way
    assert any("100%" not in line for line in sending), "the sending bar never showed progress"


def test_piped_output_is_plain_lines(dev_stack: DevStack, tmp_path: Path) -> None:
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(3 * 1024 * 1024))
    done = client(dev_stack, "upload", str(small), "--watch")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    lines = done.stdout.splitlines()
    assert "sending small.bin 100% (3.1 of 3.1 MB)" in lines, lines
    assert "processing small.bin succeeded" in lines, lines
    job_id = next(line.split()[-1] for line in lines if line.startswith("small.bin job "))
    listed = client(dev_stack, "jobs", "--kind", "upload")
    assert listed.returncode == 0 and any(
        line.startswith(f"{job_id}  upload  succeeded") for line in listed.stdout.splitlines()
    )
    shown = client(dev_stack, "job", job_id, "--json")
    assert json.loads(shown.stdout)["status"] == "succeeded"


def test_watch_exits_1_when_the_job_fails(dev_stack: DevStack) -> None:
    url = dev_stack.receiver.script("/cli-fails", Reply(status=500, body=b"down"))
    submitted = client(dev_stack, "submit", "webhook", "--url", url, "--data", '{"n": 1}')
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    watched = client(dev_stack, "watch", job_id)
    assert watched.returncode == 1, (watched.stdout, watched.stderr)
    assert f"{job_id} failed" in watched.stdout.splitlines(), watched.stdout
    retried = client(dev_stack, "retry", job_id)
    assert retried.returncode == 0 and retried.stdout.strip() == f"{job_id} queued", retried
    assert client(dev_stack, "watch", job_id).returncode == 1
    assert len(dev_stack.receiver.requests("/cli-fails")) == 2


def test_submit_watch_succeeds_and_refusals_are_one_line_with_status_2(dev_stack: DevStack) -> None:
    done = client(dev_stack, "submit", "log", "--message", "from the command line", "--watch")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].endswith("100%") or "succeeded" in done.stdout, done.stdout
    missing = client(dev_stack, "job", "no-such-job")
    assert missing.returncode == 2 and missing.stderr == "conveyor job: HTTP 404: no job no-such-job\n", missing.stderr
    finished = client(dev_stack, "cancel", done.stdout.split()[1])
    assert finished.returncode == 2 and "409" in finished.stderr and len(finished.stderr.splitlines()) == 1
    bad_key = subprocess.run(
        [*dev_stack.client(), "jobs", "--key", "not-a-key"],
        env=dev_stack.client_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad_key.returncode == 2 and bad_key.stderr.startswith("conveyor jobs: HTTP 401"), bad_key.stderr


def test_watch_resumes_after_the_api_is_killed_and_restarted(dev_stack: DevStack) -> None:
    url = dev_stack.receiver.script("/cli-slow", Reply(status=200, hang=4))
    job_id = client(dev_stack, "submit", "webhook", "--url", url).stdout.strip()
    watcher = subprocess.Popen(
        [*dev_stack.client(), "watch", job_id, "--json"],
        env=dev_stack.client_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        seen = [json.loads(watcher.stdout.readline())["type"] for _ in range(2)]
        assert seen == ["job.queued", "job.started"], seen
        (api,) = dev_stack.part_pids("api")
        os.kill(api, signal.SIGKILL)
        out, err = watcher.communicate(timeout=90)
    finally:
        watcher.kill()
    types = seen + [json.loads(line)["type"] for line in out.splitlines()]
    assert watcher.returncode == 0, (types, err)
    assert [t for t in types if t != "job.progress"] == ["job.queued", "job.started", "job.succeeded"], types
    wait_until_healthy(dev_stack.base_url, 60, [dev_stack.run])
