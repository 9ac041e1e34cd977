"""``/schedules`` on the in-process api: validation with named problems, names and the cap per key, pause, change,
delete, secrets masked; a firing (the housekeeping function beat's task calls) makes a job linked to its schedule."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from conveyor.store import db
from conveyor.store.rows import utcnow
from tests.burst import BurstWorker
from tests.inprocess import Api, serve
from worker.housekeeping import fire_schedules

pytestmark = pytest.mark.anyio

LOG = {"channel": "log", "message": "tick"}
UNKNOWN = "01a207a2-fb69-7023-9247-baa030751cb3"


async def create(api: Api, **body: Any) -> dict[str, Any]:
    response = await api.client.post(
        "/schedules", json={"name": "tick", "every_seconds": 60, "notification": LOG, **body}
    )
    assert response.status_code == 201, response.text
    schedule: dict[str, Any] = response.json()
    assert response.headers["location"] == f"/schedules/{schedule['schedule_id']}"
    return schedule


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"name": "x", "notification": LOG}, "exactly one of cron and every_seconds"),
        ({"name": "x", "cron": "* * * * *", "every_seconds": 5, "notification": LOG}, "exactly one of cron"),
        ({"name": "x", "cron": "61 * * * *", "notification": LOG}, "not a valid expression"),
        ({"name": "x", "cron": "* * * *", "notification": LOG}, "must have 5 fields"),
        ({"name": "x", "cron": "0 9 * * *", "timezone": "Mars/Olympus", "notification": LOG}, "IANA time zone"),
        ({"name": "x", "every_seconds": 0, "notification": LOG}, "greater than or equal to 1"),
        ({"name": "", "every_seconds": 5, "notification": LOG}, "at least 1 character"),
        ({"name": "x", "every_seconds": 5, "notification": {"channel": "fax"}}, "channel"),
        ({"name": "x", "every_seconds": 5}, "notification"),
        (
            {"name": "x", "every_seconds": 5, "notification": {"channel": "http", "url": "http://127.0.0.1:9/"}},
            "notification: url refused",
        ),
    ],
)
async def test_bad_schedules_are_422_naming_the_problem(api: Api, body: dict[str, Any], problem: str) -> None:
    response = await api.client.post("/schedules", json=body)
    assert response.status_code == 422, response.text
    assert problem in response.text


async def test_create_read_list_change_delete(api: Api) -> None:
    made = await create(api)
    assert made["name"] == "tick" and made["every_seconds"] == 60 and made["cron"] is None and not made["paused"]
    assert made["fired"] == 0 and made["next_due_at"] is not None and made["notification"]["message"] == "tick"
    assert made["links"]["jobs"] == f"/jobs?schedule_id={made['schedule_id']}"
    path = f"/schedules/{made['schedule_id']}"
    assert (await api.client.get(path)).json() == made
    assert [s["schedule_id"] for s in (await api.client.get("/schedules")).json()["schedules"]] == [made["schedule_id"]]

    paused = (await api.client.patch(path, json={"paused": True})).json()
    assert paused["paused"] and paused["next_due_at"] is None
    resumed = (await api.client.patch(path, json={"paused": False})).json()
    assert not resumed["paused"] and resumed["next_due_at"] is not None
    changed = (await api.client.patch(path, json={"cron": "30 8 * * 1-5", "timezone": "Europe/Paris"})).json()
    assert changed["cron"] == "30 8 * * 1-5" and changed["every_seconds"] is None
    assert changed["timezone"] == "Europe/Paris"
    back = (await api.client.patch(path, json={"every_seconds": 5})).json()
    assert back["every_seconds"] == 5 and back["cron"] is None
    bad = await api.client.patch(path, json={"cron": "nope"})
    assert bad.status_code == 422 and "5 fields" in bad.text
    assert (await api.client.patch(f"/schedules/{UNKNOWN}", json={"paused": True})).status_code == 404

    assert (await api.client.delete(path)).status_code == 204
    assert (await api.client.get(path)).status_code == 404
    assert (await api.client.delete(path)).status_code == 404


async def test_names_are_unique_per_key_owner_and_other_owners_see_nothing(api: Api) -> None:
    made = await create(api)
    again = await api.client.post("/schedules", json={"name": "tick", "every_seconds": 5, "notification": LOG})
    assert again.status_code == 409
    assert again.json()["schedule_id"] == made["schedule_id"] and "PATCH" in again.json()["detail"]
    other = {"Authorization": f"Bearer {api.new_key('someone-else')}"}
    assert (await api.client.get(f"/schedules/{made['schedule_id']}", headers=other)).status_code == 404
    assert (await api.client.get("/schedules", headers=other)).json()["schedules"] == []
    theirs = await api.client.post(
        "/schedules", headers=other, json={"name": "tick", "every_seconds": 5, "notification": LOG}
    )
    assert theirs.status_code == 201  # a name is unique per owner only
    rename = await api.client.patch(f"/schedules/{theirs.json()['schedule_id']}", headers=other, json={"name": "t2"})
    assert rename.status_code == 200 and rename.json()["name"] == "t2"


async def test_the_cap_per_owner(api: Api) -> None:
    async with serve(api.settings.model_copy(update={"max_schedules_per_owner": 2})) as capped:
        for name in ("a", "b"):
            await create(capped, name=name)
        third = await capped.client.post("/schedules", json={"name": "c", "every_seconds": 5, "notification": LOG})
        assert third.status_code == 409 and "at most 2 schedules" in third.json()["detail"]


async def test_secrets_of_the_notification_are_masked(api: Api) -> None:
    notification = {"channel": "http", "url": "https://example.com/ping", "headers": {"Authorization": "Bearer s3cret"}}
    made = await create(api, notification=notification)
    assert made["notification"]["headers"] == {"Authorization": "**********"}
    assert "s3cret" not in (await api.client.get(f"/schedules/{made['schedule_id']}")).text
    with api.state.store.engine.connect() as connection:
        stored = connection.execute(sa.select(db.schedules.c.request)).scalar_one()
    assert "s3cret" not in str(stored)  # sealed at rest, as a job's request is


async def test_a_due_schedule_fires_one_job_linked_to_it(api: Api, burst_worker: BurstWorker) -> None:
    made = await create(api, every_seconds=3600)
    fire = burst_worker.runtime
    assert fire_schedules(fire) == 0  # not due yet
    due = utcnow() - timedelta(seconds=1)
    with api.state.store.engine.begin() as connection:
        connection.execute(db.schedules.update().values(next_due_at=due))
    assert fire_schedules(fire) == 1
    assert fire_schedules(fire) == 0  # the same due time never fires twice
    [job_id] = await burst_worker.drain_async()
    jobs = (await api.client.get("/jobs", params={"schedule_id": made["schedule_id"]})).json()["jobs"]
    assert [job["job_id"] for job in jobs] == [job_id]
    assert jobs[0]["status"] == "succeeded" and jobs[0]["schedule_id"] == made["schedule_id"]
    assert jobs[0]["scheduled_for"] is not None and jobs[0]["request"]["message"] == "tick"
    after = (await api.client.get(f"/schedules/{made['schedule_id']}")).json()
    assert after["fired"] == 1 and after["last_job_id"] == job_id and after["last_fired_at"] is not None
    assert datetime.fromisoformat(after["next_due_at"]) == due + timedelta(hours=1)  # in phase with the due time
    assert (await api.client.get("/jobs", params={"schedule_id": UNKNOWN})).json()["jobs"] == []
