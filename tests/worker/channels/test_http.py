"""The ``http`` channel against a real local HTTP server: the answer in the job's result, retries on 5xx, no retry
on other 4xx, the address guard; and the whole path in-process (the api records it, the worker runs it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from conveyor.schemas import HttpNotification, JobStatus
from conveyor.settings import Settings
from tests.burst import BurstWorker
from tests.inprocess import serve
from tests.receivers import HttpReceiver, Reply, http_receiver
from tests.worker.conftest import make_job
from worker.channels import DeliveryError
from worker.channels.http import send
from worker.notify import deliver
from worker.runner import Retryable, run_job
from worker.runtime import Runtime

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[HttpReceiver]:
    with http_receiver() as receiver:
        yield receiver


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": tmp_path, "webhook_allow_private": True}
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg, arg-type]


def request(url: str, **extra: object) -> HttpNotification:
    return HttpNotification.model_validate({"channel": "http", "url": url} | extra)


def test_a_get_records_the_parsed_json_and_selected_headers(receiver: HttpReceiver, tmp_path: Path) -> None:
    url = receiver.script("/menu", Reply(200, headers={**JSON, "etag": '"v1"', "x-internal": "no"}, body=b'{"a":[1]}'))
    sent = send(make_settings(tmp_path), request(url, headers={"Authorization": "Bearer t0k"}))
    (got,) = receiver.requests("/menu")
    assert got.headers["authorization"] == "Bearer t0k" and got.body == b""
    assert sent.detail["status_code"] == 200 and sent.detail["body"] == {"a": [1]} and not sent.detail["body_cut"]
    assert sent.detail["headers"]["etag"] == '"v1"' and "x-internal" not in sent.detail["headers"]


def test_a_post_sends_json_and_a_long_answer_is_cut(receiver: HttpReceiver, tmp_path: Path) -> None:
    url = receiver.script("/big", Reply(201, headers=JSON, body=b'{"x":"' + b"y" * 5000 + b'"}'))
    sent = send(make_settings(tmp_path, http_max_response_bytes=100), request(url, method="POST", json={"n": 1}))
    (got,) = receiver.requests("/big")
    assert orjson.loads(got.body) == {"n": 1} and got.headers["content-type"] == "application/json"
    assert sent.detail["body_cut"] and isinstance(sent.detail["body"], str) and len(sent.detail["body"]) == 100


@pytest.mark.parametrize(("status", "transient"), [(503, True), (429, True), (404, False), (301, False)])
def test_5xx_and_429_are_transient_other_answers_permanent(
    receiver: HttpReceiver, tmp_path: Path, status: int, transient: bool
) -> None:
    url = receiver.script(f"/status/{status}", Reply(status, headers={"retry-after": "7"}))
    with pytest.raises(DeliveryError) as failed:
        send(make_settings(tmp_path), request(url))
    assert failed.value.transient is transient and failed.value.status_code == status
    assert failed.value.retry_after == (7.0 if transient else None)


def test_expect_names_what_counts_as_success(receiver: HttpReceiver, tmp_path: Path) -> None:
    url = receiver.script("/gone", Reply(410, body=b"gone"))
    assert send(make_settings(tmp_path), request(url, expect=[200, 410])).detail["body"] == "gone"


def test_a_private_address_is_refused_unless_allowed(receiver: HttpReceiver, tmp_path: Path) -> None:
    with pytest.raises(DeliveryError) as refused:
        send(make_settings(tmp_path, webhook_allow_private=False), request(receiver.url("/x")))
    assert not refused.value.transient and "loopback" in str(refused.value)


def test_503_then_200_retries_once_and_succeeds(receiver: HttpReceiver, rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(update={"webhook_allow_private": True})
    url = receiver.script("/flaky", Reply(503), Reply(200, headers=JSON, body=b'{"ok":true}'))
    job = make_job(rt, {"channel": "http", "url": url})
    with pytest.raises(Retryable):
        run_job(rt, job.job_id, deliver)
    rt.store.write(lambda c: c.exec_driver_sql("UPDATE jobs SET next_attempt_at = NULL"))  # due now
    done = run_job(rt, job.job_id, deliver)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.attempts == 2
    assert done.result is not None and done.result["body"] == {"ok": True}


def test_404_fails_at_once(receiver: HttpReceiver, rt: Runtime) -> None:
    rt.settings = rt.settings.model_copy(update={"webhook_allow_private": True})
    job = make_job(rt, {"channel": "http", "url": receiver.script("/missing", Reply(404))})
    failed = run_job(rt, job.job_id, deliver)
    assert failed is not None and failed.status is JobStatus.FAILED and failed.attempts == 1
    assert failed.error is not None and "404" in failed.error


@pytest.mark.anyio
async def test_through_the_api_headers_are_sealed_and_masked_and_private_urls_refused(
    receiver: HttpReceiver, api_settings: Settings
) -> None:
    url = receiver.script("/api-path", Reply(200, headers=JSON, body=b'{"menu":["pizza"]}'))
    body = {"channel": "http", "url": url, "headers": {"Authorization": "Bearer s3cr3t"}}
    async with serve(api_settings) as closed:
        refused = await closed.client.post("/notifications", json=body)
        assert refused.status_code == 422 and "loopback" in refused.json()["detail"]
    settings = api_settings.model_copy(update={"webhook_allow_private": True})
    async with serve(settings) as api:
        job_id = (await api.client.post("/notifications", json=body)).json()["job_id"]
        shown = (await api.client.get(f"/jobs/{job_id}")).json()
        assert shown["request"]["headers"] == {"Authorization": "**********"}
        worker = BurstWorker(settings)
        try:
            await worker.drain_async()
        finally:
            worker.close()
        done = (await api.client.get(f"/jobs/{job_id}")).json()
        assert done["status"] == "succeeded" and done["result"]["body"] == {"menu": ["pizza"]}
    (got,) = receiver.requests("/api-path")
    assert got.headers["authorization"] == "Bearer s3cr3t"
