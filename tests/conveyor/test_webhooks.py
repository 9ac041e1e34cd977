"""Standard Webhooks signing and the outbound address policy (pure functions)."""

from __future__ import annotations

import pytest

from conveyor import webhooks
from conveyor.webhooks import InvalidSignature

# The published Standard Webhooks test vector: a receiver's library must accept exactly this.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_matches_the_published_vector() -> None:
    assert webhooks.sign(SECRET, MSG_ID, TIMESTAMP, BODY) == SIGNATURE


def test_verify_accepts_the_vector_among_other_signatures() -> None:
    headers = {
        "Webhook-Id": MSG_ID,
        "Webhook-Timestamp": str(TIMESTAMP),
        "Webhook-Signature": f"v1,bm9wZQ== {SIGNATURE}",
    }
    webhooks.verify(SECRET, headers, BODY, now=TIMESTAMP + 10)


@pytest.mark.parametrize(
    ("change", "now"),
    [
        ({"webhook-signature": "v1,bm9wZQ=="}, TIMESTAMP),
        ({"webhook-id": "msg_other"}, TIMESTAMP),
        ({}, TIMESTAMP + 301),
        ({}, TIMESTAMP - 301),
        ({"webhook-timestamp": "soon"}, TIMESTAMP),
        ({"webhook-signature": SIGNATURE.replace("v1,", "v2,")}, TIMESTAMP),
    ],
)
def test_verify_refuses_tampering_and_stale_requests(change: dict[str, str], now: int) -> None:
    headers = {"webhook-id": MSG_ID, "webhook-timestamp": str(TIMESTAMP), "webhook-signature": SIGNATURE} | change
    with pytest.raises(InvalidSignature):
        webhooks.verify(SECRET, headers, BODY, now=now)


def test_verify_refuses_another_body_or_secret() -> None:
    headers = webhooks.signed_headers(SECRET, MSG_ID, BODY)
    webhooks.verify(SECRET, headers, BODY)
    with pytest.raises(InvalidSignature):
        webhooks.verify(SECRET, headers, BODY + b" ")
    with pytest.raises(InvalidSignature):
        webhooks.verify(webhooks.new_secret(), headers, BODY)
    with pytest.raises(InvalidSignature):
        webhooks.verify(SECRET, {}, BODY)


@pytest.mark.parametrize("secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "whsec_c2hvcnQ="])
def test_malformed_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError):
        webhooks.signing_key(secret)


def test_new_secrets_are_valid_and_distinct() -> None:
    first, second = webhooks.new_secret(), webhooks.new_secret()
    assert first != second and len(webhooks.signing_key(first)) == 32


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "::1", "fe80::1",
     "fc00::1", "::ffff:127.0.0.1", "100.64.0.1", "224.0.0.1", "240.0.0.1"],
)  # fmt: skip
def test_internal_addresses_are_refused(address: str) -> None:
    assert webhooks.refused_address(address) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert webhooks.refused_address(address) is None
