"""Group commit: one writer thread per process commits everything its callers hand it, many callers per transaction.

Each caller hands the writer a *unit of work* — a function of a connection that runs its statements and returns a
value — and waits for it. The writer takes every unit waiting, runs them one after the other in **one**
transaction (under the SQLite write lock, ``db.writing``), commits, and only then hands each caller its value. So:

- a caller's value is returned only after the transaction holding its writes committed (a 202, or a message
  acknowledgement, that follows a write never precedes its commit);
- there is no added wait when the writer is idle: a caller of :meth:`GroupWriter.run` that finds nothing pending
  and no transaction running commits its unit itself, in its own thread (no hand-off to the writer thread and
  back); units that arrive while a transaction runs are committed together in the next one, by the writer thread,
  so under load the cost of a commit (and on SQLite the write lock, on PostgreSQL the fsync) is shared by everyone
  waiting;
- a unit that raises does not take the others down: the transaction is rolled back and every unit of that group is
  run again in a transaction of its own, so the failing one fails alone (units must only touch the database, which
  the rollback undoes); a database that does not answer fails every unit of the group with that error.

Units must not wait on anything but the database (no network, no other writer call): they run on the writer thread,
or on the calling thread when it found the writer idle.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conveyor import logs
from conveyor.store import db
from conveyor.store.db import UNAVAILABLE

log = logs.get("conveyor.store.writer")
T = TypeVar("T")
#: A unit of work: statements to run in the group's transaction, and what to hand back.
Unit = Callable[[sa.Connection], T]
#: Most units one transaction takes (the rest wait for the next one).
MAX_GROUP = 500


class GroupWriter:
    """The process's group-commit writer for one database (see the module docstring). Thread-safe; the writer
    thread starts on first use and, in a forked child, anew."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pending: list[tuple[Unit[Any], Future[Any]]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = -1
        self._closed = False
        #: A transaction is running (on the writer thread, or on a caller's that found the writer idle).
        self._busy = False
        self._busy_pid = -1
        #: Transactions committed and units carried, for the benchmarks' counts.
        self.transactions = 0
        self.units = 0

    def submit(self, unit: Unit[T]) -> Future[T]:
        """Queue ``unit`` for the next transaction; the future holds its value once that transaction committed
        (or the exception the unit, or the database, raised)."""
        future: Future[T] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the group writer is closed")
            self._ensure_thread()
            self._pending.append((unit, future))
            self._cond.notify()
        return future

    def run(self, unit: Unit[T]) -> T:
        """:meth:`submit` and wait: ``unit``'s value, once committed. When nothing is pending and no transaction is
        running, the unit is committed right here, in the calling thread."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the group writer is closed")
            if self._busy_pid != os.getpid():  # first use, or a forked child: no transaction of ours is running
                self._busy, self._busy_pid = False, os.getpid()
            inline = not self._busy and not self._pending
            if inline:
                self._busy = True
        if not inline:
            return self.submit(unit).result()
        future: Future[T] = Future()
        try:
            self._commit([(unit, future)])
        finally:
            with self._cond:
                self._busy = False
                if self._pending:
                    self._ensure_thread()
                # Only the writer thread waits on the condition, and only for this transaction's end while units are
                # pending or it is closing: waking it otherwise costs a switch and a GIL hand-off per transaction.
                if self._pending or self._closed:
                    self._cond.notify_all()
        return future.result()

    def close(self) -> None:
        """Commit what is pending, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _ensure_thread(self) -> None:
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._loop, name="group-writer", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while (not self._pending or self._busy) and not self._closed:
                    self._cond.wait()
                while self._busy:  # closing: let a caller's transaction end first
                    self._cond.wait()
                if not self._pending:
                    return
                group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
                self._busy = True
            try:
                self._commit(group)
            except BaseException as exc:
                log.error("group writer failed", error=repr(exc), exc_info=exc)
                for _unit, future in group:
                    if not future.done():
                        future.set_exception(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _commit(self, group: list[tuple[Unit[Any], Future[Any]]]) -> None:
        try:
            values = self._transaction([unit for unit, _future in group])
        except UNAVAILABLE as exc:
            for _unit, future in group:
                future.set_exception(exc)
        except Exception as exc:  # noqa: BLE001 - a unit failed: run each alone, so that only it fails
            if len(group) == 1:
                group[0][1].set_exception(exc)
            else:
                for unit, future in group:
                    self._alone(unit, future)
        else:
            for (_unit, future), value in zip(group, values, strict=True):
                future.set_result(value)

    def _alone(self, unit: Unit[Any], future: Future[Any]) -> None:
        try:
            (value,) = self._transaction([unit])
        except Exception as exc:  # noqa: BLE001 - the unit's own error goes to its caller
            future.set_exception(exc)
        else:
            future.set_result(value)

    def _transaction(self, units: list[Unit[Any]]) -> list[Any]:
        try:
            return self._once(units)
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            log.warning("job store connection was dead; transaction run again on a new one", error=repr(exc))
            return self._once(units)

    def _once(self, units: list[Unit[Any]]) -> list[Any]:
        with db.writing(self.engine) as connection:
            values = [unit(connection) for unit in units]
        self.transactions += 1
        self.units += len(units)
        return values
