"""The webhook channel against a real local HTTP receiver: signing, outcomes, safety limits."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import orjson
import pytest

from conveyor import webhooks
from conveyor.schemas import WebhookNotification
from conveyor.settings import Settings
from tests.receivers import HttpReceiver, Reply, http_receiver
from worker.channels import DeliveryError
from worker.channels.outbound import parse_retry_after, resolve
from worker.channels.webhook import send

SECRET = webhooks.new_secret()
JOB_ID = "01a207a2-fb69-7023-9247-baa030751cb3"
CREATED = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def receiver() -> Iterator[HttpReceiver]:
    with http_receiver() as receiver:
        yield receiver


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "webhook_secret": SECRET,
        "webhook_allow_private": True,
        "webhook_timeout": 0.5,
    }
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg, arg-type]


def request(url: str, **extra: object) -> WebhookNotification:
    return WebhookNotification.model_validate({"channel": "webhook", "url": url, "type": "order.paid"} | extra)


def test_delivery_is_signed_and_carries_the_payload(receiver: HttpReceiver, tmp_path: Path) -> None:
    url = receiver.script("/signed", Reply(204, body=b""))
    sent = send(make_settings(tmp_path), JOB_ID, CREATED, request(url, data={"order": 7}))
    (got,) = receiver.requests("/signed")
    webhooks.verify(SECRET, got.headers, got.body)
    assert got.headers["webhook-id"] == f"msg_{JOB_ID}" and got.headers["content-type"] == "application/json"
    assert got.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert orjson.loads(got.body) == {"type": "order.paid", "timestamp": "2026-11-23T09:00:00Z", "data": {"order": 7}}
    assert sent.status_code == 204 and sent.detail["webhook_id"] == f"msg_{JOB_ID}"


def test_a_secret_in_the_request_wins_over_the_settings_one(receiver: HttpReceiver, tmp_path: Path) -> None:
    own = webhooks.new_secret()
    send(make_settings(tmp_path), JOB_ID, CREATED, request(receiver.script("/own"), secret=own))
    (got,) = receiver.requests("/own")
    webhooks.verify(own, got.headers, got.body)
    with pytest.raises(webhooks.InvalidSignature):
        webhooks.verify(SECRET, got.headers, got.body)


@pytest.mark.parametrize(
    ("reply", "transient"),
    [
        (Reply(500), True),
        (Reply(503, {"Retry-After": "7"}), True),
        (Reply(429), True),
        (Reply(408), True),
        (Reply(404), False),
        (Reply(401), False),
        (Reply(302, {"Location": "/elsewhere"}), False),
    ],
)
def test_answers_map_to_transient_or_permanent(
    receiver: HttpReceiver, tmp_path: Path, reply: Reply, transient: bool
) -> None:
    path = f"/status-{reply.status}"
    with pytest.raises(DeliveryError) as caught:
        send(make_settings(tmp_path), JOB_ID, CREATED, request(receiver.script(path, reply)))
    assert caught.value.transient is transient
    assert caught.value.status_code == reply.status
    assert caught.value.retry_after == (7.0 if "Retry-After" in reply.headers else None)
    assert receiver.requests("/elsewhere") == [], "a redirect was followed"


def test_a_receiver_that_never_answers_times_out_as_transient(receiver: HttpReceiver, tmp_path: Path) -> None:
    """The receiver answers only when the test ends: the delivery's own timeout (0.5 s) ends it, as transient."""
    with pytest.raises(DeliveryError) as caught:
        send(make_settings(tmp_path), JOB_ID, CREATED, request(receiver.script("/hang", Reply(hang=120))))
    assert caught.value.transient and "timed out" in str(caught.value)


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    from conveyor.ops.redis_server import free_port

    with pytest.raises(DeliveryError) as caught:
        send(make_settings(tmp_path), JOB_ID, CREATED, request(f"http://127.0.0.1:{free_port()}/"))
    assert caught.value.transient and "unreachable" in str(caught.value)


def test_the_response_body_is_read_only_up_to_the_cap(receiver: HttpReceiver, tmp_path: Path) -> None:
    # The receiver promises 1 MiB, sends 4 KiB and stalls until the test ends: with the cap below 4 KiB the answer is
    # complete (a delivery that read on would wait for the rest, and time out after its 60 s).
    url = receiver.script("/big", Reply(200, body=b"x" * (1 << 20), stall_after=4096, hang=120))
    capped = make_settings(tmp_path, webhook_max_response_bytes=1024, webhook_timeout=60)
    sent = send(capped, JOB_ID, CREATED, request(url))
    assert sent.status_code == 200
    with pytest.raises(DeliveryError, match="timed out"):
        send(make_settings(tmp_path, webhook_max_response_bytes=1 << 20), JOB_ID, CREATED, request(url))


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.1", "169.254.169.254", "localhost", "[::1]"])
def test_internal_targets_are_refused_by_default(receiver: HttpReceiver, tmp_path: Path, host: str) -> None:
    settings = make_settings(tmp_path, webhook_allow_private=False)
    with pytest.raises(DeliveryError) as caught:
        send(settings, JOB_ID, CREATED, request(f"http://{host}:{receiver.port}/refused"))
    assert caught.value.transient is False and "refused" in str(caught.value)
    assert receiver.requests("/refused") == []


def test_resolve_refuses_a_name_that_resolves_to_loopback() -> None:
    with pytest.raises(DeliveryError, match="loopback"):
        resolve("localhost", 80, allow_private=False)
    assert set(resolve("localhost", 80, allow_private=True)) & {"127.0.0.1", "::1"}


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    now = time.time()
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True), now) == (
        pytest.approx(30, abs=1.5)
    )
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None and parse_retry_after("") is None
