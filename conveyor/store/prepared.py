"""Statements compiled once per dialect and executed for many rows with parameters already in the driver's form.

SQLAlchemy rebuilds every parameter set of an ``executemany`` in Python on each call (a dict per row, then each
value through its type's bind processor), inside the transaction; on SQLite that is inside the write lock, and it
costs more than SQLite's own work on the rows. A :class:`Prepared` statement is compiled once per dialect, its
binds' processors and constant values looked up once; :meth:`Prepared.driver_rows` turns rows into what the
driver takes (a tuple per row for a positional paramstyle, a dict for a named one), which callers may do before
the transaction, and :meth:`Prepared.execute` hands them to the driver's ``executemany`` on the connection's own
DBAPI cursor, in the connection's transaction, with nothing done per row or per call by SQLAlchemy's statement
machinery (its execution context and result setup cost more, inside the SQLite write lock, than the statement). A
driver error is raised exactly as SQLAlchemy raises it (``sa.exc.DBAPIError``'s subclasses, the connection
invalidated when the error says it is gone): :meth:`sa.Connection._handle_dbapi_exception` makes it, as for its
own statements (``tests/conveyor/store/test_prepared.py`` holds it to that, on both backends). Statement events
(``before_cursor_execute``) are not fired for these statements; the transaction's events are. In-process, one
``log`` job's claim, log and outcome went from 0.93-0.99 ms to 0.62-0.77 ms of CPU (docs/BENCHMARKS.md).

A statement with ``RETURNING``, or a ``SELECT``, is run for one row at a time by :meth:`Prepared.fetch`, which hands
back the rows it returned as mappings of processed values (each column's result processor looked up once).

For plain ``INSERT``, ``UPDATE``/``DELETE`` and ``SELECT`` statements whose binds are named (``bindparam``) or
constants; not for expanding (``IN``) parameters or SQL-side defaults of omitted columns (name every column).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

_Processor = Callable[[Any], Any] | None
_UNSEEN = object()


@dataclass(frozen=True)
class _Form:
    sql: str
    #: Per driver parameter, in order: the row's key and its processor, or ``None`` and the constant, processed.
    slots: tuple[tuple[str | None, Any, _Processor], ...]
    names: tuple[str, ...] | None  # the driver's parameter names (named paramstyles); ``None``: positional
    #: Per column a ``RETURNING`` clause returns, in order: its key and its type.
    returns: tuple[tuple[str, sa.types.TypeEngine[Any]], ...]


def _key(dialect: Dialect) -> str:
    return f"{dialect.name}+{dialect.driver}:{dialect.paramstyle}"


class Prepared:
    """One statement, compiled once per dialect (see the module docstring)."""

    def __init__(
        self, statement: sa.Insert | sa.Update | sa.Delete | sa.Select[Any], columns: Sequence[str] | None = None
    ) -> None:
        """``columns``: for an ``INSERT`` without ``values()``, the columns every row gives, in any order."""
        self.statement = statement
        self.columns = None if columns is None else list(columns)
        self._forms: dict[str, _Form] = {}
        #: Per dialect, the result processor of each returned column (from the first reply: a driver may need the
        #: column's type code to choose one).
        self._readers: dict[str, tuple[tuple[str, _Processor], ...]] = {}

    def _form(self, dialect: Dialect) -> _Form:
        key = _key(dialect)
        form = self._forms.get(key)
        if form is None:
            compiled = self.statement.compile(dialect=dialect, column_keys=self.columns)
            order = compiled.positiontup if compiled.positional else list(compiled.bind_names.values())
            by_name = {name: bind for bind, name in compiled.bind_names.items()}
            slots: list[tuple[str | None, Any, _Processor]] = []
            for name in order or ():
                bind = by_name[name]
                if bind.expanding:
                    raise ValueError(f"{name}: expanding parameters are not supported")
                processor = bind.type._cached_bind_processor(dialect)
                if bind.required:
                    slots.append((bind.key, None, processor))
                else:
                    constant = bind.effective_value
                    slots.append((None, constant if processor is None else processor(constant), None))
            returns = tuple((entry[0], entry[3]) for entry in compiled._result_columns)
            names = None if compiled.positional else tuple(order or ())
            form = _Form(compiled.string, tuple(slots), names, returns)
            self._forms[key] = form
        return form

    def driver_rows(self, dialect: Dialect, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        """``rows`` (each keyed by the statement's parameter names, or by column for an ``INSERT``) in the driver's
        form for ``dialect``."""
        form = self._form(dialect)
        # A value shared by the rows (the same object: a transaction's "now", a common detail) is processed once.
        seen: list[tuple[Any, Any]] = [(_UNSEEN, None)] * len(form.slots)
        out: list[Any] = []
        for row in rows:
            values = []
            for index, (key, constant, processor) in enumerate(form.slots):
                if key is None:
                    values.append(constant)
                    continue
                value = row[key]
                if processor is None:
                    values.append(value)
                    continue
                last, done = seen[index]
                if value is not last:
                    done = processor(value)
                    seen[index] = (value, done)
                values.append(done)
            out.append(tuple(values) if form.names is None else dict(zip(form.names, values, strict=True)))
        return out

    def execute(self, connection: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        """Execute the statement once per row of ``rows`` in ``connection``'s transaction; the rows matched or
        inserted in all (as the driver counts them)."""
        if not rows:
            return 0
        return self.execute_driver_rows(connection, self.driver_rows(connection.dialect, rows))

    def execute_driver_rows(self, connection: sa.Connection, rows: list[Any]) -> int:
        """:meth:`execute` for rows already in the driver's form (from :meth:`driver_rows` for this dialect)."""
        if not rows:
            return 0
        cursor = _run(connection, self._form(connection.dialect).sql, rows, many=True)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def fetch(self, connection: sa.Connection, row: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Execute the statement for ``row`` in ``connection``'s transaction; the rows it returned (its ``RETURNING``
        clause, or the ``SELECT``), each a mapping of column key to value as SQLAlchemy would read it."""
        dialect = connection.dialect
        form = self._form(dialect)
        (params,) = self.driver_rows(dialect, [row])
        cursor = _run(connection, form.sql, params, many=False)
        try:
            key = _key(dialect)
            readers = self._readers.get(key)
            if readers is None:
                codes = [column[1] for column in cursor.description or ()]
                readers = tuple(
                    (name, type_._cached_result_processor(dialect, code))
                    for (name, type_), code in zip(form.returns, codes, strict=True)
                )
                self._readers[key] = readers
            return [
                {
                    name: value if processor is None or value is None else processor(value)
                    for (name, processor), value in zip(readers, values, strict=True)
                }
                for values in cursor.fetchall()
            ]
        finally:
            cursor.close()


def _run(connection: sa.Connection, sql: str, params: Any, *, many: bool) -> Any:
    """Execute ``sql`` on a cursor of ``connection``'s DBAPI connection (in its transaction) and return the cursor;
    a driver error goes through SQLAlchemy's own handling (wrapped, the connection invalidated when it is gone)."""
    cursor = None
    try:
        cursor = connection.connection.cursor()
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
    except Exception as exc:  # noqa: BLE001 - handed to SQLAlchemy, which raises its own error for it
        try:
            connection._handle_dbapi_exception(exc, sql, params, cursor, None)
        finally:
            if cursor is not None:
                cursor.close()
    return cursor
