"""Where a job's CPU and wake-ups go, thread by thread, at the latency benchmark's rate.

``python -m bench.threads [--jobs N]``: on one real redis-server, plain Celery (:mod:`bench.plain_celery`, its
client threads in this process) and Conveyor (``conveyor api``, one notifications worker, ``conveyor flower``:
:func:`bench.jobstack.conveyor`) side by side, each measured over ``N`` jobs at :data:`bench.latency.RATE` with the
latency benchmark's open loop, after a warm-up. For every thread of every process it prints, per job, the CPU it
used (user and system, from ``/proc/<pid>/task/<tid>/stat``) and how often the kernel woke it from a wait (its
voluntary context switches, from ``.../status``). Threads are named by ``py-spy dump`` when py-spy is installed.

Not one of ``make bench``'s benchmarks: it has no goal. It tells where to look: at 50 jobs/s each job's code runs on
cold caches, so what a thread costs follows how often it is woken more than how many statements it runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil
import uvloop

from bench import jobstack, latency, procs

TICKS = os.sysconf("SC_CLK_TCK")
WARMUP = 100


@dataclass(frozen=True)
class Counts:
    """One thread's CPU seconds (user, system) and voluntary context switches so far."""

    user: float
    system: float
    woken: int


def thread_counts(pid: int) -> dict[int, Counts]:
    """Every live thread of ``pid`` and of its descendants (of this process: its own only), by thread id."""
    found: dict[int, Counts] = {}
    tree = pid != os.getpid()  # this process's children are the stacks it measures
    for process in [psutil.Process(pid), *(psutil.Process(pid).children(recursive=True) if tree else [])]:
        for task in Path(f"/proc/{process.pid}/task").glob("*"):
            try:
                fields = (task / "stat").read_text().rpartition(")")[2].split()
                status = (task / "status").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            woken = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.MULTILINE)
            # After the command's closing parenthesis: state is field 3 of stat, utime 14 and stime 15.
            found[int(task.name)] = Counts(
                int(fields[11]) / TICKS, int(fields[12]) / TICKS, int(woken[1]) if woken else 0
            )
    return found


def thread_names(pid: int) -> dict[int, str]:
    """Thread id → Python thread name, from ``py-spy dump`` of ``pid`` (empty without py-spy, or for a process
    that is not Python)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {}
    dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30).stdout
    return {
        int(tid): name for tid, name in re.findall(r'^Thread (?:0x)?(\d+) \([^)]*\): "([^"]*)"', dump, re.MULTILINE)
    }


def measure(label: str, pids: Mapping[str, int], run: Callable[[], object], jobs: int) -> None:
    """Run ``run`` (``jobs`` jobs) and print each process tree's CPU per job (threads that ended meanwhile, such
    as plain Celery's client threads, included) and each thread's that lived through the run, with its wake-ups."""
    before = {name: thread_counts(pid) for name, pid in pids.items()}
    trees = {name: _cpu(pid) for name, pid in pids.items()}
    run()
    after = {name: thread_counts(pid) for name, pid in pids.items()}
    print(f"{label}: per job, CPU in ms (user + system) and wake-ups", flush=True)
    for name, pid in pids.items():
        names = thread_names(pid) if name != "redis" else {}
        rows = []
        for tid, then in before[name].items():
            now = after[name].get(tid)
            if now is None:
                continue
            rows.append(
                (
                    names.get(tid, str(tid)),
                    (now.user - then.user) * 1000 / jobs,
                    (now.system - then.system) * 1000 / jobs,
                    (now.woken - then.woken) / jobs,
                )
            )
        cpu = (_cpu(pid) - trees[name]) * 1000 / jobs
        print(f"  {name}: {cpu:.2f} ms, {sum(row[3] for row in rows):.1f} wake-ups (threads below)", flush=True)
        for thread, user, system, woken in sorted(rows, key=lambda row: -(row[1] + row[2])):
            if user + system >= 0.005 or woken >= 0.05:
                print(f"    {thread:28} {user:.2f} + {system:.2f} ms, {woken:.1f} wake-ups", flush=True)


def _cpu(pid: int) -> float:
    """CPU seconds of ``pid``'s tree (of this process: its own, ended threads included)."""
    return procs.cpu_seconds(pid) if pid == os.getpid() else procs.tree_cpu_seconds(pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs measured for each stack")
    args = parser.parse_args()
    with (
        jobstack.work_dir("threads") as root,
        procs.redis_server(root / "redis") as (redis_url, redis),
        jobstack.plain_celery(redis_url, root / "celery") as group,
        jobstack.conveyor(redis_url, root / "conveyor") as stack,
    ):
        idle = jobstack.Meter({}, redis_url)  # the warm-ups' meters: not read

        def celery(jobs: int) -> object:
            return latency.celery_round_trips(redis_url, jobs, latency.RATE, idle)

        def conveyor(jobs: int) -> object:
            return uvloop.run(latency.conveyor_round_trips(stack, jobs, latency.RATE, idle))

        celery(WARMUP)
        conveyor(WARMUP)
        pids = {"redis": redis.pid, **group.pids(), "client": os.getpid()}
        measure("plain Celery (its client threads included)", pids, lambda: celery(args.jobs), args.jobs)
        pids = {"redis": redis.pid, **stack.group.pids()}
        measure("Conveyor (the load generator left out)", pids, lambda: conveyor(args.jobs), args.jobs)


if __name__ == "__main__":
    main()
