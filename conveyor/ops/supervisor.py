"""``conveyor run``'s supervisor: start every part of the stack as a child process, prefix its output with its name,
restart any child that dies, stop them all.

Guarantees:

- Each child runs in its own process group and is sent SIGTERM when the supervisor dies.
- A child that exits on its own is restarted after a backoff (:class:`RestartPolicy`: 0.5 s, doubling up to 30 s,
  back to the start once the child has run a healthy minute). Whatever was left of its process group (pool
  processes of a killed worker) is killed first, so a restart never runs beside leftovers of the previous one.
- The child marked ``first`` (the embedded Redis) is restarted before any other, and the others wait until it
  is ready again; the children already running are left alone (they reconnect by themselves).
- A child that crashes ``max_quick_crashes`` times in a row, each time within ``healthy_after`` of its start, is
  given up on with one line saying so; the supervisor then stops the stack and reports status 1.
- On Ctrl-C, SIGTERM or SIGHUP every child is stopped within 10 s (SIGKILL to its whole group after the grace
  period) and no process of the stack is left behind.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO

GRACE_SECONDS = 6.0
KILL_AFTER_SECONDS = 8.5
#: How often the supervisor looks at its children.
TICK_SECONDS = 0.2


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the supervisor goes away. (Linux sends it when the *thread* that
    forked the child ends, so every child is started from the supervisor's main thread.)"""
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass(frozen=True)
class RestartPolicy:
    """When a child that exited is started again, and when the supervisor gives up on it."""

    #: The wait before the first restart; each quick crash in a row doubles it, up to ``max_delay``.
    base_delay: float = 0.5
    max_delay: float = 30.0
    #: A child that ran this long before exiting was healthy: its crash count and backoff start again.
    healthy_after: float = 60.0
    #: Quick crashes in a row after which the supervisor gives up (and stops the stack).
    max_quick_crashes: int = 5

    def delay(self, crashes: int) -> float:
        """The wait before restarting a child that crashed ``crashes`` times in a row (1 for the first)."""
        return float(min(self.max_delay, self.base_delay * 2 ** max(0, crashes - 1)))


@dataclass
class Child:
    """One part of the stack. ``first`` marks the one others need (the embedded Redis): it is restarted before
    any other, and the others wait until ``ready()`` says it serves again."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    stop_signal: int = signal.SIGTERM
    first: bool = False
    ready: Callable[[], bool] | None = None
    process: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = field(default=None, repr=False)
    #: When the current process started (monotonic), quick crashes in a row, and when the next start is due.
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None
    restarts: int = 0
    #: The exited process's group was killed already (its id may be reused: never signal it again).
    cleaned: bool = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class GiveUp(Exception):
    """A child crashed too often in a row; the stack must stop."""


class Supervisor:
    """Runs children with prefixed output, restarts those that die, and stops them together."""

    def __init__(self, out: IO[str] | None = None, policy: RestartPolicy | None = None) -> None:
        self.out = out or sys.stdout
        self.policy = policy or RestartPolicy()
        self.children: list[Child] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._width = 10

    def say(self, name: str, line: str) -> None:
        with self._lock:
            self.out.write(f"{name:<{self._width}} | {line}\n")
            self.out.flush()

    def start(self, child: Child) -> Child:
        """Start ``child`` in its own process group, its output prefixed with its name; supervise it from now on."""
        self._width = max(self._width, len(child.name))
        self._spawn(child)
        self.children.append(child)
        return child

    def _spawn(self, child: Child) -> None:
        child.process = subprocess.Popen(  # noqa: S603 - our own commands (conveyor parts, redis-server)
            list(child.argv),
            env=dict(child.env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        child.cleaned = False
        child.pump = threading.Thread(target=self._pump, args=(child,), daemon=True, name=f"pump-{child.name}")
        child.pump.start()

    def _pump(self, child: Child) -> None:
        process = child.process
        assert process is not None and process.stdout is not None
        with process.stdout:
            for raw in process.stdout:
                self.say(child.name, raw.decode(errors="replace").rstrip("\n"))

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: object) -> None:
            self.stopping.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGHUP, handler)

    def supervise(self, until: Callable[[], bool] | None = None, every: float = TICK_SECONDS) -> int | None:
        """Watch the children, restarting those that exit, until a stop signal (returns 0), a child given up on
        (returns 1), or ``until()`` holds (returns ``None``; it is asked every ``every`` seconds)."""
        while not self.stopping.wait(every):
            try:
                self.tend()
            except GiveUp:
                return 1
            if until is not None and not self.stopping.is_set() and until():
                return None
        return 0

    def wait(self) -> int:
        """Supervise until a stop signal (0) or a child given up on (1)."""
        status = self.supervise()
        return 0 if status is None else status

    def tend(self) -> None:
        """One look at every child: note those that exited (raises :class:`GiveUp` after too many quick crashes in a
        row) and start again those whose backoff is over, the ``first`` child before all others."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is None and child.process is not None and child.process.poll() is not None:
                self._exited(child, now)
        due = [child for child in self.children if child.restart_at is not None and child.restart_at <= now]
        for child in sorted(due, key=lambda c: not c.first):
            if not child.first and not self._first_ready():
                continue  # Redis first: the others start once it serves again
            self._spawn(child)
            child.restarts += 1
            assert child.process is not None
            self.say("conveyor", f"{child.name} started again (pid {child.process.pid}, restart {child.restarts})")

    def _first_ready(self) -> bool:
        return all(c.running and (c.ready is None or c.ready()) for c in self.children if c.first)

    def _exited(self, child: Child, now: float) -> None:
        assert child.process is not None
        status = child.process.returncode
        self._signal_group(child, signal.SIGKILL)  # what the dead process left behind (its pool processes)
        child.cleaned = True
        if child.pump is not None:
            child.pump.join(timeout=1)
        ran = now - child.started_at
        child.crashes = child.crashes + 1 if ran < self.policy.healthy_after else 1
        if child.crashes >= self.policy.max_quick_crashes:
            self.say(
                "conveyor",
                f"giving up on {child.name}: it exited {child.crashes} times in a row, each within "
                f"{self.policy.healthy_after:.0f}s of starting (last {_status(status)}); see its lines above. "
                "Stopping everything.",
            )
            raise GiveUp(child.name)
        delay = self.policy.delay(child.crashes)
        child.restart_at = now + delay
        self.say(
            "conveyor",
            f"{child.name} exited ({_status(status)}) after {ran:.1f}s; restarting it in {delay:.1f}s",
        )

    @staticmethod
    def _signal_group(child: Child, signum: int) -> None:
        if child.process is None or child.cleaned:
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


def _status(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"status {returncode}"
