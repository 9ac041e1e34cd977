"""``python -m bench.explain_store [--postgres URL] [--rows N]``: the PostgreSQL plans of the job store's hot queries on
a table of N jobs (docs/SCALING.md quotes them).

In a schema of its own (dropped afterwards): the migrations, N jobs of which almost all finished (a few hundred
queued and never sent, started with a stale heartbeat, retrying), ``ANALYZE``, then ``EXPLAIN`` of the dispatcher's
scans (:class:`conveyor.store.outbox.Outbox`), a claim, and the first page of ``GET /jobs?status=…``, compiled
from the code's own statements.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from conveyor.store import db
from conveyor.store.db import create_engine, migrate
from conveyor.store.outbox import Dispatch, Outbox

FILL = """
INSERT INTO jobs (id, kind, status, progress, request, attempts, task_name, queue, created_at, updated_at,
                  dispatched_at, heartbeat_at, next_attempt_at, crashes, owner)
SELECT lpad(to_hex(n), 36, '0'), 'notification',
       CASE WHEN n % 5000 = 1 THEN 'queued' WHEN n % 5000 = 2 THEN 'started' WHEN n % 5000 = 3 THEN 'retrying'
            ELSE 'succeeded' END,
       1.0, '{}'::json, 1, 'notifications.send', 'notifications',
       now() - make_interval(secs => :rows - n), now() - make_interval(secs => :rows - n),
       CASE WHEN n % 5000 IN (1, 3) THEN NULL ELSE now() - make_interval(secs => :rows - n) END,
       now() - make_interval(secs => :rows - n), now() - interval '1 minute', 0, 'owner' || (n % 100)
FROM generate_series(1, :rows) AS n
"""


class _Captured(Outbox):
    """The outbox's scans, kept instead of run."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.queries: list[sa.Select[Any]] = []

    def _dispatches(self, query: sa.Select[Any]) -> list[Dispatch]:
        self.queries.append(query)
        return []


def plans(url: str, rows: int) -> str:
    """The plans, as Markdown."""
    admin = sa.create_engine(url)
    schema = "explain_" + secrets.token_hex(4)
    out: list[str] = []
    try:
        with admin.begin() as connection:
            connection.execute(sa.text(f"CREATE SCHEMA {schema}"))
        engine = create_engine(
            sa.make_url(url).set(query={"options": f"-csearch_path={schema}"}).render_as_string(False)
        )
        try:
            migrate(engine)
            with engine.begin() as connection:
                connection.execute(sa.text("SET LOCAL statement_timeout = 0"))  # a bulk fill, not a job's statement
                connection.execute(sa.text(FILL), {"rows": rows})
                connection.execute(sa.text("ANALYZE jobs"))
            outbox = _Captured(engine)
            minute = timedelta(minutes=1)
            outbox.undispatched(minute)
            outbox.retries_due(minute)
            outbox.stale_started(minute)
            captured = dict(zip(["undispatched", "retries_due", "stale_started"], outbox.queries, strict=True))
            c = db.jobs.c
            captured["a row by id (how a claim's UPDATE finds its job)"] = (
                db.jobs.select().where(c.id == "0" * 36).with_for_update()
            )
            captured["GET /jobs?status=queued, first page"] = (
                db.jobs.select().where(c.owner == "owner1", c.status == "queued").order_by(c.id.desc()).limit(50)
            )
            with engine.connect() as connection:
                for name, query in captured.items():
                    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
                    plan = connection.execute(sa.text(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}")).scalars()
                    out += [f"{name}:", "", "```", *plan, "```", ""]
        finally:
            engine.dispose()
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.explain_store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=500_000)
    args = parser.parse_args(argv)
    sys.stdout.write(plans(args.postgres, args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
