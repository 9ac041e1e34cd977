"""``conveyor run``: start every part of the stack as child processes, prefix their output, stop them all.

Guarantees: each child runs in its own process group and is sent SIGTERM when the supervisor dies;
on Ctrl-C or SIGTERM every child is stopped within 10 s (SIGKILL after the grace period) and no process
of the stack is left behind. If one child exits on its own, the whole stack is stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

GRACE_SECONDS = 6.0
KILL_AFTER_SECONDS = 8.5


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the supervisor goes away."""
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    stop_signal: int = signal.SIGTERM
    process: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    """Runs children with prefixed output and stops them together."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.children: list[Child] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._width = 10

    def say(self, name: str, line: str) -> None:
        with self._lock:
            self.out.write(f"{name:<{self._width}} | {line}\n")
            self.out.flush()

    def start(self, child: Child) -> Child:
        """Start ``child`` in its own process group, its output prefixed with its name."""
        self._width = max(self._width, len(child.name))
        child.process = subprocess.Popen(  # noqa: S603 - our own commands (conveyor parts, redis-server)
            list(child.argv),
            env=dict(child.env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        child.pump = threading.Thread(target=self._pump, args=(child,), daemon=True, name=f"pump-{child.name}")
        child.pump.start()
        self.children.append(child)
        return child

    def _pump(self, child: Child) -> None:
        assert child.process is not None and child.process.stdout is not None
        for raw in child.process.stdout:
            self.say(child.name, raw.decode(errors="replace").rstrip("\n"))

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: object) -> None:
            self.stopping.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGHUP, handler)

    def wait(self) -> int:
        """Block until a stop signal or a child's exit; returns the exit status for the supervisor."""
        while not self.stopping.wait(0.2):
            for child in self.children:
                if child.process is not None and child.process.poll() is not None:
                    self.say("conveyor", f"{child.name} exited with status {child.process.returncode}; stopping")
                    return 1
        return 0

    @staticmethod
    def _signal_group(child: Child, signum: int) -> None:
        if child.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signum)

    def stop(self, last: Sequence[str] = ()) -> None:
        """Stop every child: SIGTERM, then SIGKILL to the whole group after the grace period.

        Children named in ``last`` (the embedded Redis) are stopped after all the others, so that
        processes shutting down can still reach them.
        """
        started = time.monotonic()
        first = [c for c in self.children if c.name not in last]
        final = [c for c in self.children if c.name in last]
        for group, grace, kill_at in ((first, GRACE_SECONDS, KILL_AFTER_SECONDS - 1.5), (final, 1.0, 1.5)):
            phase_start = time.monotonic()
            for child in group:
                if child.running and child.process is not None:
                    with contextlib.suppress(ProcessLookupError):
                        child.process.send_signal(child.stop_signal)
            self._wait_for(group, phase_start + grace)
            for child in group:
                if child.running:
                    self.say("conveyor", f"{child.name} did not stop in time; killing it")
                    self._signal_group(child, signal.SIGKILL)
            self._wait_for(group, phase_start + kill_at)
        for child in self.children:
            self._signal_group(child, signal.SIGKILL)
            if child.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(timeout=1)
            if child.pump is not None:
                child.pump.join(timeout=1)
        self.say("conveyor", f"stopped in {time.monotonic() - started:.1f}s")

    @staticmethod
    def _wait_for(children: Sequence[Child], deadline: float) -> None:
        for child in children:
            if child.process is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
