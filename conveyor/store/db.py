"""The job store's schema, its engine, and migrations applied on start."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conveyor import logs

log = logs.get("conveyor.store")

#: Errors that mean "the job store did not answer" (down, restarting, unreachable, locked), not "the request was
#: wrong": whoever meets one may try again later.
UNAVAILABLE: tuple[type[Exception], ...] = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("owner", sa.String(128), nullable=True),
    sa.Column("idempotency_key", sa.String(300), nullable=True, unique=True),
    sa.Column("request_hash", sa.String(64), nullable=True),
    sa.Column("task_name", sa.String(64), nullable=False),
    sa.Column("queue", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("queued_event_id", sa.String(40), nullable=True),
    # Touched every few seconds by the run holding a started job; a run whose heartbeat is old is dead.
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
    # When a retrying job's next attempt is due.
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
    # Runs that died holding the job (worker killed, out of memory, time limit).
    sa.Column("crashes", sa.Integer, nullable=False, default=0, server_default="0"),
    # The schedule that fired the job, and the due time it fired for.
    sa.Column("schedule_id", sa.String(36), nullable=True),
    sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True),
    # Set with a run's outcome or a cancellation, cleared once its event is published: beat's reap_stale announces
    # a job still waiting after a while (its writer died between the commit and the publish).
    sa.Column("unannounced_since", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_jobs_status_id", "status", "id"),
    sa.Index("ix_jobs_kind_id", "kind", "id"),
    sa.Index("ix_jobs_owner_id", "owner", "id"),
    sa.Index("ix_jobs_undispatched", "dispatched_at", "created_at"),
    sa.Index("ix_jobs_schedule_id_id", "schedule_id", "id"),
    sa.Index(
        "ix_jobs_unannounced",
        "unannounced_since",
        sqlite_where=sa.text("unannounced_since IS NOT NULL"),
        postgresql_where=sa.text("unannounced_since IS NOT NULL"),
    ),
)

#: One row per side effect that happened; the unique key makes "at most once per job" a database fact.
effects = sa.Table(
    "effects",
    metadata,
    sa.Column("job_id", sa.String(36), primary_key=True),
    sa.Column("effect", sa.String(64), primary_key=True),
    sa.Column("detail", sa.JSON, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

notification_log = sa.Table(
    "notification_log",
    metadata,
    sa.Column("job_id", sa.String(36), primary_key=True),
    sa.Column("level", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", sa.JSON, nullable=True),
    sa.Column("owner", sa.String(128), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

uploads = sa.Table(
    "uploads",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=True),
    sa.Column("filename", sa.String(255), nullable=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("content_type", sa.String(128), nullable=True),
    sa.Column("storage_key", sa.String(255), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_uploads_owner_id", "owner", "id"),
    sa.Index("ix_uploads_sha256", "sha256"),
)

#: One row per delivery attempt of a notification: when, through which channel, and what the peer answered.
delivery_attempts = sa.Table(
    "delivery_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(36), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("reply", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("duration_ms", sa.Integer, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_delivery_attempts_job_id_id", "job_id", "id"),
)


api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("label", sa.String(200), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_api_keys_owner", "owner"),
)


#: Users' schedules: each fires its notification as an ordinary job whenever it is due (beat's housekeeping).
schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("cron", sa.String(200), nullable=True),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("every_seconds", sa.Integer, nullable=True),
    # The notification each firing submits, as the job store keeps a request (secrets sealed).
    sa.Column("request", sa.JSON, nullable=False),
    sa.Column("paused", sa.Boolean, nullable=False),
    # The next due time; a firing moves it on only if it still holds the value the firing read.
    sa.Column("next_due_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_fired_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_job_id", sa.String(36), nullable=True),
    sa.Column("fired", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("owner", "name", name="uq_schedules_owner_name"),
    sa.Index("ix_schedules_owner_id", "owner", "id"),
    sa.Index("ix_schedules_due", "paused", "next_due_at"),
)


#: SQLite's own checkpoint (in the commit that finds the WAL this many pages long, under the write lock): a backstop.
AUTOCHECKPOINT_PAGES = 4000
#: Commits of a process between two of its checkpoints, each run by the process's checkpointer thread (:func:`writing`).
CHECKPOINT_EVERY = 32


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # Checkpoints are run by each writing process's checkpointer thread, beside its writers (:func:`writing`);
    # SQLite's own, run inside a commit, stays as a backstop for a WAL that grew past this many pages anyway.
    cursor.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _committed(_connection: sa.Connection) -> None:
    STATS.transactions += 1


def create_engine(url: str, *, write_lock_timeout: float | None = None, **kwargs: Any) -> Engine:
    """An engine for the job store. SQLite gets WAL, a busy timeout and its directory created, and (with
    ``write_lock_timeout``) the deadline of its write lock in this process. Every commit on it is counted in
    :data:`STATS`."""
    engine = _engine(url, **kwargs)
    sa.event.listen(engine, "commit", _committed)
    lock = _write_lock(engine)
    if write_lock_timeout is not None and isinstance(lock, _WriteLock):
        lock.timeout = write_lock_timeout
    return engine


def _engine(url: str, **kwargs: Any) -> Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 10}, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        kwargs["connect_args"] = _postgres_connect_args(parsed, dict(kwargs.get("connect_args", {})))
    # No ping before each checkout (a round trip per transaction): a connection found dead on first use is
    # invalidated by SQLAlchemy, and the group writer runs the transaction again once on a fresh one.
    return sa.create_engine(url, **kwargs)


#: PostgreSQL: seconds a new connection may take, and the longest a statement may run (a lock wait included) before
#: it fails as the job store being unavailable (503 at the api, tried again by workers). A URL's own
#: ``connect_timeout`` or ``options=-c statement_timeout=…`` wins; migrations run without the statement limit.
POSTGRES_CONNECT_TIMEOUT = 10
POSTGRES_STATEMENT_TIMEOUT_MS = 30_000


def _postgres_connect_args(url: sa.URL, connect_args: dict[str, Any]) -> dict[str, Any]:
    """``connect_args`` with the connect and statement timeouts added, keeping the URL's and the caller's
    ``options`` (a ``search_path``, say): a connect argument replaces the URL's parameter of the same name."""
    if "connect_timeout" not in url.query:
        connect_args.setdefault("connect_timeout", POSTGRES_CONNECT_TIMEOUT)
    given = url.query.get("options", ())
    options = [*([given] if isinstance(given, str) else given)]
    if connect_args.get("options"):
        options.append(connect_args["options"])
    if not any("statement_timeout" in option for option in options):
        options.append(f"-c statement_timeout={POSTGRES_STATEMENT_TIMEOUT_MS}")
    connect_args["options"] = " ".join(options)
    return connect_args


#: Longest a writer waits for the SQLite write lock by default before its transaction fails as the job store being
#: unavailable (the api answers 503; a worker tries again): a writer that hangs cannot pile up every other one.
WRITE_LOCK_TIMEOUT = 10.0


class WriteLockTimeout(sa.exc.TimeoutError):
    """The SQLite write lock was held by another writer for longer than :data:`WRITE_LOCK_TIMEOUT`."""


class _WriteLock:
    """One writer at a time among the processes of one host (and the threads of each) for a SQLite file: a
    thread lock, then ``flock`` on ``<database>.write.lock``. SQLite allows one writer anyway, but a writer that
    finds the database locked sleeps in its busy handler (1, 2, 5… ms) and tries again; waiting on the lock
    instead, it is woken the moment the writer before it is done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.thread_lock = threading.Lock()
        self.pid = -1
        self.fd = -1
        self.since = 0.0
        self.since_cpu = 0.0
        self.timeout = WRITE_LOCK_TIMEOUT
        #: Commits under this lock since this process last asked for a checkpoint of the file.
        self.commits = 0
        self.checkpointer = _Checkpointer()

    def __enter__(self) -> None:
        asked = time.perf_counter()
        deadline = time.monotonic() + self.timeout
        if not self.thread_lock.acquire(timeout=self.timeout):
            raise WriteLockTimeout(f"the job store's write lock was not free within {self.timeout:g} s")
        try:
            if self.pid != os.getpid():  # first use, or a forked process: its own descriptor
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self.pid = os.getpid()
            self._flock(deadline)
        except BaseException:
            self.thread_lock.release()
            raise
        self.since = time.perf_counter()
        self.since_cpu = time.thread_time()
        STATS.write_lock_wait_s += self.since - asked

    def _flock(self, deadline: float) -> None:
        """Take the file lock, waiting (in short sleeps, growing to 2 ms) until ``deadline`` at most."""
        pause = 0.0001
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WriteLockTimeout(
                        f"the job store's write lock was not free within {self.timeout:g} s"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.002)

    def __exit__(self, *_exc: object) -> None:
        STATS.write_lock_held_s += time.perf_counter() - self.since
        STATS.write_lock_cpu_s += time.thread_time() - self.since_cpu
        STATS.write_lock_acquired += 1
        self.commits += 1
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self.thread_lock.release()


_write_locks: dict[str, _WriteLock] = {}
_write_locks_guard = threading.Lock()
_NO_LOCK = contextlib.nullcontext()
#: Each engine's lock, found once (a path resolved per transaction costs a few system calls).
_engine_locks: weakref.WeakKeyDictionary[Engine, contextlib.AbstractContextManager[Any]] = weakref.WeakKeyDictionary()


def _write_lock(engine: Engine) -> contextlib.AbstractContextManager[Any]:
    """The write lock of ``engine``'s database file, one per file in the process (engines on one file share it);
    found once per engine."""
    lock: contextlib.AbstractContextManager[Any] | None = _engine_locks.get(engine)
    if lock is not None:
        return lock
    database = engine.url.database or ""
    if engine.dialect.name != "sqlite" or database in ("", ":memory:"):
        lock = _NO_LOCK
    else:
        path = str(Path(database).resolve())
        with _write_locks_guard:
            lock = _write_locks.setdefault(path, _WriteLock(Path(f"{path}.write.lock")))
    _engine_locks[engine] = lock
    return lock


@dataclass
class Stats:
    """What this process asked of the job store: transactions committed (every engine's commit events), and (SQLite)
    how long and how often it held the write lock, and the CPU time the holding thread used meanwhile (the rest of
    the hold is waiting: for the GIL, for a core, for the disk). Read by the benchmarks and tests
    (``CONVEYOR_STATS_FILE``)."""

    transactions: int = 0
    write_lock_held_s: float = 0.0
    write_lock_cpu_s: float = 0.0
    write_lock_acquired: int = 0
    #: Time writers of this process waited for the write lock (other threads', then other processes').
    write_lock_wait_s: float = 0.0


STATS = Stats()


def write_stats(path: Path, name: str) -> None:
    """Append this process's :class:`Stats` to ``path`` as one JSON line (``pid``, ``name`` and the counts)."""
    line = json.dumps({"pid": os.getpid(), "name": name, **asdict(STATS)})
    with path.open("a") as out:
        out.write(line + "\n")


@contextlib.contextmanager
def writing(engine: Engine) -> Iterator[sa.Connection]:
    """A write transaction (``engine.begin()``), taken in turn with every other writer of the same SQLite file on
    this host; for PostgreSQL just the transaction. Never nest two on one thread. Every ``CHECKPOINT_EVERY``
    commits of the process, SQLite's WAL is checkpointed by the process's checkpointer thread
    (:class:`_Checkpointer`): the caller never waits for it."""
    lock = _write_lock(engine)
    with engine.connect() as connection:  # a pooled connection, checked out before the lock is taken
        with lock, connection.begin():
            yield connection
    if isinstance(lock, _WriteLock) and lock.commits >= CHECKPOINT_EVERY:
        lock.commits = 0
        lock.checkpointer.request(engine)


class _Checkpointer:
    """Copies a SQLite file's WAL into the database file (``PRAGMA wal_checkpoint(PASSIVE)``: as far as no reader
    needs the pages, without waiting) on a thread of its own, one per file and process, when a writer asks.

    A checkpoint writes pages and syncs the file (about 1 ms, sometimes several). Run by SQLite inside the
    commit that crossed its threshold, it would hold the write lock meanwhile and every writer of the host would wait
    behind it; run by the committing thread after its commit, that thread's callers (a 202, a worker's ack) would.
    Here nobody waits: writers go on committing while it runs (a WAL checkpoint runs beside writers), and asks that
    come while one runs make one more, not one each. A checkpoint that fails is logged and left to the next one;
    the thread starts on first use, again if it died, and anew in a forked child."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        #: The engine to checkpoint through next, when a checkpoint was asked for and has not started.
        self._due: Engine | None = None
        self._running = False
        self._thread: threading.Thread | None = None
        #: Checkpoints run by this process, for the tests.
        self.done = 0
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        """In a forked child: none of the parent's threads, nor its lock (held, maybe, at the fork)."""
        self._cond = threading.Condition()
        self._due, self._running, self._thread, self.done = None, False, None, 0

    def request(self, engine: Engine) -> None:
        """Have the file checkpointed through ``engine`` soon; returns at once."""
        with self._cond:
            self._due = engine
            if self._thread is None or not self._thread.is_alive():
                self._running = False
                self._thread = threading.Thread(target=self._loop, name="job-store-checkpointer", daemon=True)
                self._thread.start()
            self._cond.notify()

    def wait_idle(self, timeout: float) -> bool:
        """Whether every checkpoint asked for so far has run, waiting ``timeout`` seconds at most."""
        with self._cond:
            return self._cond.wait_for(lambda: self._due is None and not self._running, timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._due is not None)
                engine, self._due, self._running = self._due, None, True
            try:
                assert engine is not None
                with engine.connect() as connection:
                    connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").close()
                    connection.rollback()  # end the transaction SQLAlchemy began around the statement
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any one checkpoint
                log.warning("job store checkpoint failed; left to the next one", error=repr(exc))
            finally:
                with self._cond:
                    self._running = False
                    self.done += 1
                    self._cond.notify_all()
                del engine


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[sa.Connection]:
    """Serialise migrations between processes: a file lock for SQLite, an advisory lock for PostgreSQL."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            database = engine.url.database or ""
            lock_path = Path(f"{database}.migrate.lock") if database not in ("", ":memory:") else None
            if lock_path is None:
                yield connection
                return
            with open(lock_path, "w") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                try:
                    yield connection
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)
        elif engine.dialect.name == "postgresql":
            connection.execute(sa.text("SET statement_timeout = 0"))  # waiting for another process's migration
            connection.execute(sa.text("SELECT pg_advisory_lock(7311001)"))
            connection.commit()
            try:
                yield connection
            finally:
                connection.execute(sa.text("SELECT pg_advisory_unlock(7311001)"))
                connection.execute(sa.text("RESET statement_timeout"))  # the connection's own limit again
                connection.commit()
        else:
            yield connection


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision. Safe to call from several processes at once."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with _migration_lock(engine) as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()


def migrate_database(url: str) -> None:
    """:func:`migrate` the database at ``url`` with an engine of its own, disposed of afterwards."""
    engine = create_engine(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
