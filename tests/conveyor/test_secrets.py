"""Webhook secrets sealed at rest: the api stores them encrypted, the worker opens them to sign, nothing shows them.

A unit check of the box, then the whole path in-process: the real app records a webhook job, the stored request
holds only the sealed secret, ``GET /jobs/{id}`` masks it, and the burst worker (the worker's own code) delivers a
request a receiver verifies with the plain secret.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from conveyor import webhooks
from conveyor.secrets import PREFIX, SecretBox, SecretsUnavailable, new_key
from conveyor.settings import Settings
from conveyor.store import db
from conveyor.store.db import create_engine
from tests.burst import BurstWorker
from tests.inprocess import serve
from tests.receivers import http_receiver


def test_sealed_values_open_with_their_key_only(settings: Settings) -> None:
    box = SecretBox(settings)
    sealed = box.seal("whsec_abc")
    assert sealed.startswith(PREFIX) and "whsec_abc" not in sealed and box.open(sealed) == "whsec_abc"
    assert box.open("whsec_plain") == "whsec_plain"  # recorded before sealing existed
    assert (settings.data_dir / "secrets-key").stat().st_mode & 0o777 == 0o600
    other = SecretBox(settings.model_copy(update={"secrets_key": SecretStr(new_key())}))
    with pytest.raises(SecretsUnavailable):
        other.open(sealed)
    production = settings.model_copy(update={"environment": "production", "auth": "keys"})
    with pytest.raises(SecretsUnavailable):
        SecretBox(production).seal("whsec_abc")


@pytest.mark.anyio
async def test_the_stored_secret_is_sealed_and_the_delivery_signed_with_the_plain_one(api_settings: Settings) -> None:
    secret = webhooks.new_secret()
    settings = api_settings.model_copy(update={"webhook_allow_private": True})
    with http_receiver() as receiver:
        async with serve(settings) as api:
            body = {"channel": "webhook", "url": receiver.url("/signed"), "data": {"n": 1}, "secret": secret}
            job_id = (await api.client.post("/notifications", json=body)).json()["job_id"]
            assert (await api.client.get(f"/jobs/{job_id}")).json()["request"]["secret"] == "**********"
            engine = create_engine(settings.effective_database_url)
            with engine.connect() as connection:
                stored = connection.execute(sa.select(db.jobs.c.request).where(db.jobs.c.id == job_id)).scalar_one()
            engine.dispose()
            assert stored["secret"].startswith(PREFIX) and secret not in str(stored)
            worker = BurstWorker(settings)
            try:
                await worker.drain_async()
            finally:
                worker.close()
            assert (await api.client.get(f"/jobs/{job_id}")).json()["status"] == "succeeded"
        (request,) = receiver.requests("/signed")
        webhooks.verify(secret, request.headers, request.body)
