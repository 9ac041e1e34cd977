"""Prepared statements write exactly what SQLAlchemy's own ``executemany`` writes, on each backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conveyor.store import db
from conveyor.store.prepared import Prepared

_COLUMNS = ("job_id", "effect", "detail", "created_at")
_EFFECTS = Prepared(db.effects.insert(), _COLUMNS)
_WHEN = sa.DateTime(timezone=True)
_DETAIL = (
    db.effects.update()
    .where(db.effects.c.job_id == sa.bindparam("p_job"), db.effects.c.effect == "e")
    .values(detail=sa.bindparam("p_detail", type_=sa.JSON), created_at=sa.bindparam("p_at", type_=_WHEN))
)


def _rows(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as connection:
        select = sa.select(*(db.effects.c[name] for name in _COLUMNS)).order_by(db.effects.c.job_id)
        return [tuple(row) for row in connection.execute(select)]


def test_an_insert_writes_what_sqlalchemy_writes(engine: Engine) -> None:
    now = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)
    shared = {"logged": True}  # one object in every row: processed once, stored in each
    rows = [{"job_id": f"a{n}", "effect": "e", "detail": shared if n else None, "created_at": now} for n in range(3)]
    with engine.begin() as connection:
        assert _EFFECTS.execute(connection, rows) == 3
    written = _rows(engine)
    with engine.begin() as connection:
        connection.execute(db.effects.delete())
        connection.execute(db.effects.insert(), rows)
    assert written == _rows(engine)
    assert [row[2] for row in written] == [None, {"logged": True}, {"logged": True}]


def test_an_update_fills_named_binds_and_constants(engine: Engine) -> None:
    then = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as connection:
        connection.execute(
            db.effects.insert(),
            [{"job_id": job, "effect": effect, "detail": None, "created_at": then} for job in "xy" for effect in "ef"],
        )
        later = then + timedelta(days=1)
        matched = Prepared(_DETAIL).execute(
            connection, [{"p_job": job, "p_detail": {"job": job}, "p_at": later} for job in "xyz"]
        )
    assert matched == 2  # z has no row; f rows are not "e"
    by_key = {(row[0], row[1]): row for row in _rows(engine)}
    assert by_key["x", "e"][2] == {"job": "x"} and by_key["y", "e"][2] == {"job": "y"}
    assert by_key["x", "f"][2] is None
    written = [row[3] for key, row in by_key.items() if key[1] == "e"]
    assert all(isinstance(at, datetime) for at in written)
    assert {at.replace(tzinfo=UTC) for at in written if isinstance(at, datetime)} == {then + timedelta(days=1)}


def test_expanding_parameters_are_refused(engine: Engine) -> None:
    statement = db.effects.delete().where(db.effects.c.job_id.in_(sa.bindparam("p_jobs", expanding=True)))
    with engine.begin() as connection, pytest.raises(ValueError, match="expanding"):
        Prepared(statement).execute(connection, [{"p_jobs": ["a"]}])


def test_no_rows_is_no_statement(engine: Engine) -> None:
    with engine.begin() as connection:
        assert _EFFECTS.execute(connection, []) == 0
    assert _rows(engine) == []


def test_a_returning_statement_reads_back_what_sqlalchemy_reads(engine: Engine) -> None:
    then = datetime(2026, 1, 1, 8, 30, tzinfo=UTC)
    statement = _DETAIL.returning(*db.effects.c)
    with engine.begin() as connection:
        connection.execute(db.effects.insert(), [{"job_id": "x", "effect": "e", "detail": None, "created_at": then}])
        params = {"p_job": "x", "p_detail": {"n": 1}, "p_at": then + timedelta(hours=1)}
        fetched = Prepared(statement).fetch(connection, params)
        none = Prepared(statement).fetch(connection, {**params, "p_job": "nobody"})
        params["p_detail"] = {"n": 2}
        read = [dict(row._mapping) for row in connection.execute(statement, params)]
    assert none == []
    assert [{**row, "detail": {"n": 2}} for row in fetched] == read
    assert fetched[0]["detail"] == {"n": 1}
    assert isinstance(fetched[0]["created_at"], datetime)


def test_a_select_reads_back_what_sqlalchemy_reads(engine: Engine) -> None:
    then = datetime(2026, 1, 1, 8, 30, tzinfo=UTC)
    select = sa.select(db.effects.c.job_id, db.effects.c.created_at).where(
        db.effects.c.job_id == sa.bindparam("p_job", type_=sa.String), db.effects.c.effect == "e"
    )
    with engine.begin() as connection:
        connection.execute(db.effects.insert(), [{"job_id": "x", "effect": "e", "detail": None, "created_at": then}])
        fetched = Prepared(select).fetch(connection, {"p_job": "x"})
        read = [dict(row._mapping) for row in connection.execute(select, {"p_job": "x"})]
        assert Prepared(select).fetch(connection, {"p_job": "nobody"}) == []
    assert fetched == read and fetched[0]["job_id"] == "x" and isinstance(fetched[0]["created_at"], datetime)


def test_a_driver_error_is_raised_as_sqlalchemy_raises_its_own(engine: Engine) -> None:
    """The statements run on the driver's cursor, but a failure is SQLAlchemy's error, wrapping the driver's: the
    api's idempotency replay catches ``IntegrityError``, the group writer ``DBAPIError``s, both by SQLAlchemy's
    classes."""
    row = {"job_id": "x", "effect": "e", "detail": None, "created_at": datetime(2026, 1, 1, tzinfo=UTC)}
    with pytest.raises(sa.exc.IntegrityError) as raised, engine.begin() as connection:
        _EFFECTS.execute(connection, [row, row])
    assert isinstance(raised.value.orig, engine.dialect.loaded_dbapi.Error)
    assert _rows(engine) == []  # the transaction rolled back; the engine goes on
    with engine.begin() as connection:
        assert _EFFECTS.execute(connection, [row]) == 1
    assert len(_rows(engine)) == 1


def test_a_connection_found_dead_is_invalidated(engine: Engine) -> None:
    """A statement on a connection that is gone fails as SQLAlchemy's own would: ``connection_invalidated``, which
    is what makes the group writer run the transaction again on a new connection."""
    with engine.connect() as connection:
        connection.connection.dbapi_connection.close()  # type: ignore[union-attr]
        with pytest.raises(sa.exc.DBAPIError) as raised:
            _EFFECTS.fetch(connection, {"job_id": "x", "effect": "e", "detail": None, "created_at": datetime.now(UTC)})
        assert raised.value.connection_invalidated
        assert connection.invalidated
