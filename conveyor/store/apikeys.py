"""API keys: made once and shown once, stored as a digest, checked on every request, revoked at will.

A key reads ``cvk_<id>_<secret>``: the id (public, 12 characters) finds the row, the secret (32 random
bytes, base64url) is checked against the stored SHA-256 digest in constant time. A plain hash is enough
for secrets of 256 random bits (a slow password hash protects guessable passwords, which these are not).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from conveyor.store import db
from conveyor.store.rows import aware as _aware
from conveyor.store.rows import utcnow

PREFIX = "cvk_"
_KEY = re.compile(r"^cvk_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{43})$")
#: What an owner's name may be: it appears in topic keys and logs, so it is kept plain.
OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class InvalidOwner(ValueError):
    """An owner name outside ``OWNER``."""


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    key_id: str
    owner: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "owner": self.owner,
            "label": self.label,
            "created_at": self.created_at.isoformat(),
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
        }


@dataclass(frozen=True)
class Principal:
    """Who is calling: the owner every job, upload and event of the request belongs to, and the key used."""

    owner: str
    key_id: str


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else ``None``."""
    match = _KEY.match(token)
    return None if match is None else (match.group(1), match.group(2))


def _row(row: sa.Row[Any]) -> ApiKey:
    m = row._mapping
    return ApiKey(m["id"], m["owner"], m["label"], _aware(m["created_at"]), _aware(m["revoked_at"]))


class KeyStore:
    """API keys in the job store's database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, owner: str, label: str | None = None) -> tuple[ApiKey, str]:
        """Make a key for ``owner``; returns it and the full key text, which is not stored and cannot be
        shown again. Raises :class:`InvalidOwner` for a name outside ``OWNER``."""
        if not OWNER.match(owner):
            raise InvalidOwner(f"owner must match {OWNER.pattern}")
        key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
        secret = secrets.token_urlsafe(32)
        now = utcnow()
        with db.writing(self.engine) as conn:
            conn.execute(
                sa.insert(db.api_keys).values(
                    id=key_id, owner=owner, digest=digest(secret), label=label, created_at=now
                )
            )
        return ApiKey(key_id, owner, label, now, None), f"{PREFIX}{key_id}_{secret}"

    def list(self, owner: str | None = None) -> list[ApiKey]:
        """Every key (or ``owner``'s), oldest first, revoked ones included."""
        query = sa.select(db.api_keys).order_by(db.api_keys.c.created_at, db.api_keys.c.id)
        if owner is not None:
            query = query.where(db.api_keys.c.owner == owner)
        with self.engine.connect() as conn:
            return [_row(row) for row in conn.execute(query)]

    def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke a key (by its id, or the full key); ``None`` when there is no such key. Revoking twice is
        harmless. Api processes stop accepting it within ``auth_cache_seconds``."""
        parsed = parse(key_id)
        key_id = parsed[0] if parsed is not None else key_id.removeprefix(PREFIX)
        with db.writing(self.engine) as conn:
            conn.execute(
                sa.update(db.api_keys)
                .where(db.api_keys.c.id == key_id, db.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            row = conn.execute(sa.select(db.api_keys).where(db.api_keys.c.id == key_id)).first()
        return None if row is None else _row(row)

    def verify(self, token: str) -> Principal | None:
        """The principal of a valid, unrevoked key; ``None`` for anything else (the secret is compared in
        constant time)."""
        parsed = parse(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(db.api_keys.c.owner, db.api_keys.c.digest, db.api_keys.c.revoked_at).where(
                    db.api_keys.c.id == key_id
                )
            ).first()
        if row is None or row.revoked_at is not None or not hmac.compare_digest(row.digest, digest(secret)):
            return None
        return Principal(row.owner, key_id)

    def revoked_among(self, key_ids: Iterable[str]) -> set[str]:
        """Which of these key ids are revoked (or unknown)."""
        wanted = set(key_ids)
        if not wanted:
            return set()
        query = sa.select(db.api_keys.c.id).where(db.api_keys.c.id.in_(wanted), db.api_keys.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            active = set(conn.execute(query).scalars())
        return wanted - active

    def any_active(self) -> bool:
        """True when at least one key is not revoked."""
        with self.engine.connect() as conn:
            active = sa.select(db.api_keys.c.id).where(db.api_keys.c.revoked_at.is_(None)).limit(1)
            return conn.execute(active).first() is not None
