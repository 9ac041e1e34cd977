"""Statements compiled once per dialect and executed for many rows with parameters already in the driver's form.

SQLAlchemy rebuilds every parameter set of an ``executemany`` in Python on each call (a dict per row, then each
value through its type's bind processor), inside the transaction; on SQLite that is inside the write lock, and it
costs more than SQLite's own work on the rows. A :class:`Prepared` statement is compiled once per dialect, its
binds' processors and constant values looked up once; :meth:`Prepared.driver_rows` turns rows into what the
driver takes (a tuple per row for a positional paramstyle, a dict for a named one), which callers may do before
the transaction, and :meth:`Prepared.execute` hands them to the driver's ``executemany`` through SQLAlchemy's
connection (its events, its transaction, its error translation), with nothing done per row.

For plain ``INSERT`` and ``UPDATE``/``DELETE`` statements whose binds are named (``bindparam``) or constants; not
for expanding (``IN``) parameters, ``RETURNING`` or SQL-side defaults of omitted columns (name every column).
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


class Prepared:
    """One statement, compiled once per dialect (see the module docstring)."""

    def __init__(self, statement: sa.Insert | sa.Update | sa.Delete, columns: Sequence[str] | None = None) -> None:
        """``columns``: for an ``INSERT`` without ``values()``, the columns every row gives, in any order."""
        self.statement = statement
        self.columns = None if columns is None else list(columns)
        self._forms: dict[str, _Form] = {}

    def _form(self, dialect: Dialect) -> _Form:
        key = f"{dialect.name}+{dialect.driver}:{dialect.paramstyle}"
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
            form = _Form(compiled.string, tuple(slots), None if compiled.positional else tuple(order or ()))
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
        return connection.exec_driver_sql(self._form(connection.dialect).sql, rows).rowcount
