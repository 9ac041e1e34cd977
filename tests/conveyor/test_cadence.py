"""When schedules are due: cron expressions in a time zone (daylight-saving changes included) and intervals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from conveyor.cadence import Cadence, cron_problem, zone_problem

PARIS = ZoneInfo("Europe/Paris")


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("*/5 * * * *", None),
        ("0 9 * * mon-fri", None),
        ("@hourly", None),
        ("* * * *", "must have 5 fields"),
        ("0 0 * * * *", "must have 5 fields"),
        ("61 * * * *", "not a valid expression"),
        ("0 25 * * *", "not a valid expression"),
        ("every minute", "must have 5 fields"),
        ("a b c d e", "not a valid expression"),
    ],
)
def test_cron_problems_are_named(expression: str, problem: str | None) -> None:
    found = cron_problem(expression)
    assert found is None if problem is None else (found is not None and problem in found)


def test_zone_problems_are_named() -> None:
    assert zone_problem("Europe/Paris") is None
    assert zone_problem("UTC") is None
    assert "not a known IANA time zone" in (zone_problem("Mars/Olympus") or "")
    assert zone_problem("../../etc/passwd") is not None


def test_cron_is_read_in_its_time_zone() -> None:
    cadence = Cadence(cron="0 9 * * *", timezone="Europe/Paris")
    now = datetime(2026, 7, 1, 6, 0, tzinfo=UTC)  # 08:00 in Paris (UTC+2)
    assert cadence.first_due(now) == datetime(2026, 7, 1, 7, 0, tzinfo=UTC)
    assert cadence.first_due(now).tzinfo is UTC


def test_cron_across_daylight_saving_changes() -> None:
    # Spring forward (29 March 2026): 02:30 does not exist in Paris; it fires at 03:00, once.
    cadence = Cadence(cron="30 2 * * *", timezone="Europe/Paris")
    due = cadence.first_due(datetime(2026, 3, 28, 12, 0, tzinfo=PARIS))
    assert due.astimezone(PARIS).replace(tzinfo=None) == datetime(2026, 3, 29, 3, 0)
    following = cadence.next_due(due, due)
    assert following.astimezone(PARIS).replace(tzinfo=None) == datetime(2026, 3, 30, 2, 30)
    # Fall back (25 October 2026): 01:30 happens twice; it fires once.
    cadence = Cadence(cron="30 1 * * *", timezone="Europe/Paris")
    due = cadence.first_due(datetime(2026, 10, 24, 12, 0, tzinfo=PARIS))
    following = cadence.next_due(due, due)
    assert following - due == timedelta(hours=25)


def test_interval_keeps_its_phase_and_skips_missed_due_times() -> None:
    cadence = Cadence(every_seconds=60)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    due = cadence.first_due(start)
    assert due == start + timedelta(seconds=60)
    assert cadence.next_due(due, due) == due + timedelta(seconds=60)
    # Beat was down for ten minutes and a bit: the one firing stands for the missed ones, the phase stays.
    later = due + timedelta(minutes=10, seconds=5)
    assert cadence.next_due(due, later) == due + timedelta(minutes=11)
    # Exactly on a due time: the next one is strictly later.
    assert cadence.next_due(due, due + timedelta(minutes=3)) == due + timedelta(minutes=4)


def test_cron_skips_missed_due_times() -> None:
    cadence = Cadence(cron="*/10 * * * *")
    due = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert cadence.next_due(due, due) == datetime(2026, 1, 1, 12, 10, tzinfo=UTC)
    assert cadence.next_due(due, datetime(2026, 1, 1, 13, 5, tzinfo=UTC)) == datetime(2026, 1, 1, 13, 10, tzinfo=UTC)
