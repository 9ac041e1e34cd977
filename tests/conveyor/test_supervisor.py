"""The supervisor's restart policy, with real child processes (small Python programs that exit or linger)."""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor.ops.supervisor import Child, RestartPolicy, Supervisor

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]

FAST = RestartPolicy(base_delay=0.05, max_delay=0.2, healthy_after=30.0, max_quick_crashes=3)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def until(condition: Callable[[], bool], timeout: float = 30) -> Callable[[], bool]:
    """``condition``, failing the test if it does not hold within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout

    def check() -> bool:
        assert time.monotonic() < deadline, "condition not reached in time"
        return condition()

    return check


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state not in ("Z", "X")


def gone(pid: int, timeout: float = 10) -> bool:
    """Whether process ``pid`` is gone within ``timeout`` seconds (a signal takes a moment to land)."""
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_the_backoff_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(base_delay=0.5, max_delay=30.0)
    assert [policy.delay(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_child_that_exits_is_started_again() -> None:
    out = io.StringIO()
    supervisor = Supervisor(out, FAST)
    try:
        child = supervisor.start(Child("brief", python("import time; time.sleep(0.3)"), os.environ))
        assert child.process is not None
        first_pid = child.process.pid
        assert supervisor.supervise(until=until(lambda: child.restarts >= 2 and child.running)) is None
        assert child.process.pid != first_pid
    finally:
        supervisor.stop()
    text = out.getvalue()
    assert "brief exited (status 0)" in text and "brief started again" in text, text
    assert "giving up" not in text


def test_quick_crashes_in_a_row_give_up_with_one_line_and_status_1() -> None:
    out = io.StringIO()
    supervisor = Supervisor(out, FAST)
    try:
        supervisor.start(Child("steady", python("import time; time.sleep(60)"), os.environ))
        broken = supervisor.start(Child("broken", python("import sys; sys.exit(3)"), os.environ))
        status = supervisor.supervise(until=until(lambda: False))
        assert status == 1
        assert broken.restarts == FAST.max_quick_crashes - 1
    finally:
        supervisor.stop()
    lines = [line for line in out.getvalue().splitlines() if "giving up" in line]
    assert len(lines) == 1, out.getvalue()
    assert "broken" in lines[0] and "3 times in a row" in lines[0] and "status 3" in lines[0]


def test_a_child_that_ran_a_healthy_while_starts_its_count_again() -> None:
    policy = RestartPolicy(base_delay=0.05, max_delay=0.2, healthy_after=0.5, max_quick_crashes=2)
    supervisor = Supervisor(io.StringIO(), policy)
    try:
        child = supervisor.start(Child("healthy", python("import time; time.sleep(0.7)"), os.environ))
        # Each run lasts longer than healthy_after: every exit counts as the first crash, never as a second one.
        assert supervisor.supervise(until=until(lambda: child.restarts >= 3)) is None
        assert child.crashes == 1
    finally:
        supervisor.stop()


def test_the_first_child_is_back_and_ready_before_the_others_start_again(tmp_path: Path) -> None:
    out = io.StringIO()
    flag = tmp_path / "ready"
    supervisor = Supervisor(out, FAST)
    try:
        # "redis" exits at once and is ready only while the flag file exists; "worker" exits at once too.
        redis = supervisor.start(Child("redis", python("import time; time.sleep(0.2)"), os.environ, first=True))
        redis.ready = flag.exists
        redis.argv = python("import time; time.sleep(60)")  # from its restart on, it stays up
        worker = supervisor.start(Child("worker", python("pass"), os.environ))
        assert supervisor.supervise(until=until(lambda: redis.restarts == 1 and worker.restart_at is not None)) is None
        # Redis is running again but not ready: the worker's backoff is over, yet it waits.
        while (worker.restart_at or 0) > time.monotonic():
            time.sleep(0.01)
        for _ in range(3):
            supervisor.tend()
        assert worker.restarts == 0 and not worker.running
        flag.touch()
        assert supervisor.supervise(until=until(lambda: worker.restarts == 1)) is None
    finally:
        supervisor.stop(last=("redis",))
    text = out.getvalue()
    assert text.index("redis started again") < text.index("worker started again"), text


def test_what_a_dead_child_left_behind_is_killed_before_its_restart(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The child starts a grandchild in its process group (as a prefork worker does), then dies.
    code = (
        "import subprocess, sys, os\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pids)!r}, 'a').write(str(p.pid) + '\\n')\n"
        "os._exit(1)\n"
    )
    supervisor = Supervisor(io.StringIO(), RestartPolicy(base_delay=5.0, max_quick_crashes=5))
    try:
        child = supervisor.start(Child("parent", python(code), os.environ))
        assert supervisor.supervise(until=until(lambda: child.restart_at is not None)) is None
        assert gone(int(pids.read_text().split()[0])), "the dead child's leftover process still runs"
    finally:
        supervisor.stop()


def test_stop_ends_every_child_and_what_they_started(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pids)!r}, 'a').write(str(p.pid) + '\\n')\n"
        "time.sleep(600)\n"
    )
    supervisor = Supervisor(io.StringIO(), FAST)
    children = [supervisor.start(Child(f"c{n}", python(code), os.environ)) for n in range(2)]
    deadline = time.monotonic() + 20
    while (not pids.exists() or len(pids.read_text().split()) < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchildren = [int(pid) for pid in pids.read_text().split()]
    supervisor.stop()
    for pid in [*(c.process.pid for c in children if c.process is not None), *grandchildren]:
        assert gone(pid), f"process {pid} left behind"
