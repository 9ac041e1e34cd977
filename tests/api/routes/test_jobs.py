"""``/jobs`` on the in-process api: read, list with filters and cursor, cancel; jobs run by the burst worker."""

from __future__ import annotations

from datetime import timedelta

import pytest

from conveyor.settings import Settings
from tests.burst import BurstWorker
from tests.inprocess import Api, serve

pytestmark = pytest.mark.anyio

UNKNOWN = "01a207a2-fb69-7023-9247-baa030751cb3"


async def submit(api: Api, message: str) -> str:
    response = await api.client.post("/notifications", json={"channel": "log", "message": message})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def test_unknown_job_is_404(api: Api) -> None:
    response = await api.client.get(f"/jobs/{UNKNOWN}")
    assert response.status_code == 404
    assert "no job" in response.json()["detail"]


async def test_list_filters_and_paginates(api: Api, burst_worker: BurstWorker) -> None:
    ids = [await submit(api, str(i)) for i in range(5)]
    assert await burst_worker.drain_async() == ids
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"kind": "notification", "status": "succeeded", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await api.client.get("/jobs", params=params)).json()
        assert len(page["jobs"]) <= 2
        seen += [job["job_id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None or set(ids) <= set(seen):
            break
    newest_first = [job_id for job_id in seen if job_id in ids]
    assert newest_first == ids[::-1]
    assert (await api.client.get("/jobs", params={"cursor": "garbage!"})).status_code == 400
    assert (await api.client.get("/jobs", params={"status": "exploded"})).status_code == 422
    assert (await api.client.get("/jobs", params={"limit": 0})).status_code == 422


async def test_cancel_finished_job_is_409_and_unknown_is_404(api: Api, burst_worker: BurstWorker) -> None:
    job_id = await submit(api, "x")
    await burst_worker.drain_async()
    response = await api.client.delete(f"/jobs/{job_id}")
    assert response.status_code == 409 and "succeeded" in response.json()["detail"]
    assert (await api.client.delete(f"/jobs/{UNKNOWN}")).status_code == 404


async def test_a_cancelled_job_does_not_run(api: Api, burst_worker: BurstWorker) -> None:
    job_id = await submit(api, "never")
    response = await api.client.delete(f"/jobs/{job_id}")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    # Its job.cancelled event was published, and noted so: beat will not announce it again.
    assert api.state.store.unannounced(timedelta(0)) == []
    assert await burst_worker.drain_async() == [job_id]  # the delivery comes, and finds the job cancelled
    job = (await api.client.get(f"/jobs/{job_id}")).json()
    assert job["status"] == "cancelled" and job["result"] is None


async def test_another_owners_job_is_404(api: Api) -> None:
    job_id = await submit(api, "mine")
    theirs = {"Authorization": f"Bearer {api.new_key('someone-else')}"}
    assert (await api.client.get(f"/jobs/{job_id}", headers=theirs)).status_code == 404
    assert (await api.client.delete(f"/jobs/{job_id}", headers=theirs)).status_code == 404
    assert (await api.client.get("/jobs", headers=theirs)).json()["jobs"] == []


async def test_with_auth_off_no_key_is_needed_and_everything_is_the_anonymous_owners(api_settings: Settings) -> None:
    async with serve(api_settings.model_copy(update={"auth": "off"})) as open_api, open_api.anonymous() as client:
        response = await client.post("/notifications", json={"channel": "log", "message": "open"})
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        assert (await client.get(f"/jobs/{job_id}")).status_code == 200
        stored = open_api.state.store.get(job_id)
        assert stored is not None and stored.owner == "anonymous"
