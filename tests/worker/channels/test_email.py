"""The e-mail channel against a real SMTP server (aiosmtpd in a thread)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conveyor.ops.redis_server import free_port
from conveyor.schemas import EmailNotification
from conveyor.settings import Settings
from tests.receivers import SMTP_PASSWORD, SMTP_USER, Mailbox, smtp_server
from worker.channels import DeliveryError
from worker.channels.email import JOB_HEADER, send

JOB_ID = "01a207a2-fb69-7023-9247-baa030751cb3"
CREATED = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


def make_settings(tmp_path: Path, port: int, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path,
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_from": "alerts@conveyor.example",
        "smtp_timeout": 5,
    }
    return Settings(_env_file=None, **(values | overrides))  # type: ignore[call-arg, arg-type]


def address(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:8]}@example.com"


def request(to: list[str], html: str | None = None) -> EmailNotification:
    return EmailNotification(channel="email", to=to, subject="Your order shipped", text="It is on its way.", html=html)


def test_message_arrives_with_headers_text_and_html(smtp: tuple[Mailbox, int], tmp_path: Path) -> None:
    mailbox, port = smtp
    first, second = address("a"), address("b")
    sent = send(
        make_settings(tmp_path, port), JOB_ID, CREATED, request([first, second], html="<p>It is on its way.</p>")
    )
    ((envelope, message),) = mailbox.messages_to(first)
    assert envelope.rcpt_tos == [first, second] and envelope.mail_from == "alerts@conveyor.example"
    assert message["To"] == f"{first}, {second}" and message["Subject"] == "Your order shipped"
    assert message["From"] == "alerts@conveyor.example"
    assert message["Message-ID"] == f"<{JOB_ID}@conveyor.example>" and message[JOB_HEADER] == JOB_ID
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_body(("plain",)).get_content().strip() == "It is on its way."  # type: ignore[union-attr]
    assert message.get_body(("html",)).get_content().strip() == "<p>It is on its way.</p>"  # type: ignore[union-attr]
    assert sent.status_code == 250 and sent.detail["accepted"] == [first, second] and sent.detail["refused"] == {}


def test_text_only_message_is_plain(smtp: tuple[Mailbox, int], tmp_path: Path) -> None:
    mailbox, port = smtp
    to = address("plain")
    send(make_settings(tmp_path, port), JOB_ID, CREATED, request([to]))
    ((_envelope, message),) = mailbox.messages_to(to)
    assert message.get_content_type() == "text/plain"


def test_login_from_settings(smtp: tuple[Mailbox, int], tmp_path: Path) -> None:
    mailbox, port = smtp
    to = address("login")
    settings = make_settings(tmp_path, port, smtp_user=SMTP_USER, smtp_password=SMTP_PASSWORD)
    send(settings, JOB_ID, CREATED, request([to]))
    assert len(mailbox.messages_to(to)) == 1
    with pytest.raises(DeliveryError) as caught:
        send(make_settings(tmp_path, port, smtp_user=SMTP_USER, smtp_password="wrong"), JOB_ID, CREATED, request([to]))
    assert caught.value.transient is False and caught.value.status_code == 535


def test_a_4xx_reply_is_transient_and_a_5xx_permanent(smtp: tuple[Mailbox, int], tmp_path: Path) -> None:
    mailbox, port = smtp
    later = mailbox.script(address("later"), "451 4.3.0 try again later", "250 OK")
    with pytest.raises(DeliveryError) as caught:
        send(make_settings(tmp_path, port), JOB_ID, CREATED, request([later]))
    assert caught.value.transient and caught.value.status_code == 451 and "try again later" in str(caught.value)
    send(make_settings(tmp_path, port), JOB_ID, CREATED, request([later]))
    assert len(mailbox.messages_to(later)) == 1

    never = mailbox.script(address("never"), "550 5.1.1 no such mailbox")
    with pytest.raises(DeliveryError) as caught:
        send(make_settings(tmp_path, port), JOB_ID, CREATED, request([never]))
    assert caught.value.transient is False and caught.value.status_code == 550
    assert caught.value.reply is not None and "no such mailbox" in caught.value.reply


def test_no_server_is_transient(tmp_path: Path) -> None:
    with pytest.raises(DeliveryError) as caught:
        send(make_settings(tmp_path, free_port()), JOB_ID, CREATED, request([address("nobody")]))
    assert caught.value.transient and "unreachable" in str(caught.value)


def test_starttls_that_the_server_lacks_is_permanent(smtp: tuple[Mailbox, int], tmp_path: Path) -> None:
    _mailbox, port = smtp
    with pytest.raises(DeliveryError) as caught:
        send(make_settings(tmp_path, port, smtp_starttls=True), JOB_ID, CREATED, request([address("tls")]))
    assert caught.value.transient is False
