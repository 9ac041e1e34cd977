"""When a schedule is due: a 5-field cron expression read in a time zone, or a fixed interval.

Cron follows Vixie cron's reading (``croniter``): when both day-of-month and day-of-week are restricted, either
matching is enough; ``@hourly``, ``@daily``, ``@weekly``, ``@monthly`` and ``@yearly`` are accepted. Across a
daylight-saving change a local time that does not exist (spring forward) fires at the first minute after the gap,
and one that happens twice (fall back) fires once, the first time. An interval keeps its phase: due times are
``first + k * every_seconds``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

#: Shortest interval a schedule may have; beat looks for due schedules once a second.
MIN_EVERY_SECONDS = 1
#: Longest interval (a year): a longer wait is a cron expression's job.
MAX_EVERY_SECONDS = 366 * 24 * 3600
_ALIASES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})


def cron_problem(expression: str) -> str | None:
    """Why ``expression`` is not a 5-field cron expression this module reads, or ``None``."""
    text = expression.strip()
    if text.lower() in _ALIASES:
        return None
    if len(text.split()) != 5:
        return f"cron {expression!r} must have 5 fields (minute hour day-of-month month day-of-week)"
    if not croniter.is_valid(text):
        return f"cron {expression!r} is not a valid expression"
    return None


def zone_problem(name: str) -> str | None:
    """Why ``name`` is not an IANA time zone name (``Europe/Paris``, ``UTC``), or ``None``."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"timezone {name!r} is not a known IANA time zone name"
    return None


@dataclass(frozen=True)
class Cadence:
    """How often a schedule is due: exactly one of ``cron`` (in ``timezone``) and ``every_seconds``; both already
    checked (:func:`cron_problem`, :func:`zone_problem`)."""

    cron: str | None = None
    every_seconds: int | None = None
    timezone: str = "UTC"

    def first_due(self, now: datetime) -> datetime:
        """The first due time of a schedule made (or resumed) at ``now``: an interval's is one interval on, a cron
        expression's is its next match after ``now``."""
        if self.every_seconds is not None:
            return now + timedelta(seconds=self.every_seconds)
        return self._next_cron(now)

    def next_due(self, due: datetime, now: datetime) -> datetime:
        """The due time after the one fired (``due``) that is later than ``now``: due times missed while no beat ran
        are skipped (the firing at ``due`` stands for all of them)."""
        if self.every_seconds is not None:
            step = timedelta(seconds=self.every_seconds)
            missed = max(0, int((now - due) / step))
            later = due + step * (missed + 1)
            return later if later > now else later + step
        return self._next_cron(max(due, now))

    def _next_cron(self, after: datetime) -> datetime:
        assert self.cron is not None
        local = after.astimezone(ZoneInfo(self.timezone))
        result: datetime = croniter(self.cron.strip(), local).get_next(datetime)
        return result.astimezone(UTC)
