"""The per-thread counts of bench/threads.py: a thread's wake-ups and CPU read from /proc are its own."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from bench.threads import thread_counts

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")


def test_a_thread_woken_twenty_times_and_one_that_spins_are_told_apart() -> None:
    woken, go, done, finish = threading.Event(), threading.Event(), threading.Event(), threading.Event()

    def sleeper() -> None:
        for _ in range(20):
            woken.wait(5)
            woken.clear()
            go.set()
        finish.wait(10)  # alive until measured

    def spinner() -> None:
        until = time.thread_time() + 0.3
        while time.thread_time() < until:
            pass
        done.set()
        finish.wait(10)

    sleeping, spinning = threading.Thread(target=sleeper), threading.Thread(target=spinner)
    sleeping.start()
    before = thread_counts(os.getpid())
    spinning.start()
    for _ in range(20):
        woken.set()
        assert go.wait(5)
        go.clear()
        time.sleep(0.005)
    assert done.wait(10)
    after = thread_counts(os.getpid())
    finish.set()
    sleeping.join(5)
    spinning.join(5)
    assert sleeping.native_id is not None and spinning.native_id is not None
    slept, then = after[sleeping.native_id], before[sleeping.native_id]
    assert slept.woken - then.woken >= 20
    assert (slept.user + slept.system) - (then.user + then.system) < 0.1
    spun = after[spinning.native_id]
    assert spun.user + spun.system >= 0.2, spun
