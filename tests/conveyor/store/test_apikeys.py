"""API keys in the job store (SQLite, and PostgreSQL when reachable)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conveyor.store import db
from conveyor.store.apikeys import InvalidOwner, KeyStore, parse


def test_a_new_key_verifies_as_its_owner_and_only_its_digest_is_stored(engine: Engine) -> None:
    keys = KeyStore(engine)
    key, text = keys.create("alice", "laptop")
    principal = keys.verify(text)
    assert principal is not None and principal.owner == "alice" and principal.key_id == key.key_id
    with engine.connect() as conn:
        stored = " ".join(str(value) for row in conn.execute(sa.select(db.api_keys)) for value in row)
    parsed = parse(text)
    assert parsed is not None
    secret = parsed[1]  # not text.rsplit("_", 1): a secret may itself contain "_"
    assert secret not in stored and text not in stored


def test_wrong_malformed_and_unknown_keys_are_refused(engine: Engine) -> None:
    keys = KeyStore(engine)
    _key, text = keys.create("alice")
    tampered = text[:-1] + ("A" if text[-1] != "A" else "B")
    other_id = "cvk_" + "x" * 12 + text[16:]
    for token in (tampered, other_id, "", "Bearer " + text, text + "x", "cvk_short_secret"):
        assert keys.verify(token) is None, token


def test_revoked_key_is_refused_and_listed_as_revoked(engine: Engine) -> None:
    keys = KeyStore(engine)
    key, text = keys.create("alice")
    _other, other_text = keys.create("bob")
    revoked = keys.revoke(key.key_id)
    assert revoked is not None and revoked.revoked_at is not None
    assert keys.verify(text) is None
    assert keys.verify(other_text) is not None
    assert keys.revoke(text) is not None  # by the whole key; revoking twice is harmless
    assert keys.revoke("nosuchkeyid0") is None
    listed = {k.key_id: k for k in keys.list()}
    assert listed[key.key_id].revoked_at is not None and listed[_other.key_id].revoked_at is None
    assert [k.owner for k in keys.list("bob")] == ["bob"]


@pytest.mark.parametrize("owner", ["", "a/b", "*", "a b", "x" * 65, "-lead"])
def test_owner_names_are_plain(engine: Engine, owner: str) -> None:
    with pytest.raises(InvalidOwner):
        KeyStore(engine).create(owner)


def test_keys_are_distinct_and_well_formed(engine: Engine) -> None:
    keys = KeyStore(engine)
    texts = {keys.create("alice")[1] for _ in range(20)}
    assert len(texts) == 20 and all(parse(text) is not None for text in texts)
