"""Secrets kept in the job store, sealed: a webhook's own signing secret, an http request's headers.

The api seals those request fields before it records the job, each header's value on its own (``enc:v1:`` and a
Fernet token: AES-128-CBC with an HMAC-SHA256, from the ``cryptography`` package); the worker opens them just
before it sends. The key is ``CONVEYOR_SECRETS_KEY`` (a Fernet key: 32 random bytes, urlsafe base64; ``conveyor keys
secret-key`` makes one), or in development one generated once into ``<data dir>/secrets-key`` (0600). Production
refuses to seal without a configured key. A field without the prefix (a job recorded before sealing existed) is
used as it is.
"""

from __future__ import annotations

import contextlib
import os
import secrets as random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from conveyor.settings import Settings

PREFIX = "enc:v1:"
#: Request fields that hold secrets (sealed before they are stored): a webhook's signing secret, an http request's
#: headers (an ``Authorization`` among them, say).
SEALED_FIELDS = frozenset({"secret", "headers"})


class SecretsUnavailable(RuntimeError):
    """No key to seal or open secrets with, or a sealed value this key cannot open (the key changed)."""


def new_key() -> str:
    """A fresh key for ``CONVEYOR_SECRETS_KEY``."""
    return Fernet.generate_key().decode()


def _key(settings: Settings) -> bytes:
    if settings.secrets_key is not None:
        return settings.secrets_key.get_secret_value().encode()
    if settings.environment == "production":
        raise SecretsUnavailable("CONVEYOR_SECRETS_KEY must be set in production to store webhook secrets")
    path: Path = settings.data_dir / "secrets-key"
    if not path.exists():  # made once, whole, by whichever process comes first (link is atomic and exclusive)
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".secrets-key.{random.token_hex(6)}")
        draft.touch(0o600)
        draft.write_text(new_key())
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
        draft.unlink()
    return path.read_text().strip().encode()


class SecretBox:
    """Seals and opens secrets with the key of ``settings`` (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._fernet: Fernet | None = None

    def _box(self) -> Fernet:
        if self._fernet is None:
            try:
                self._fernet = Fernet(_key(self.settings))
            except ValueError as exc:
                raise SecretsUnavailable(
                    "CONVEYOR_SECRETS_KEY is not a key (make one: conveyor keys secret-key)"
                ) from exc
        return self._fernet

    def seal(self, value: str) -> str:
        """``value`` encrypted, as stored."""
        return PREFIX + self._box().encrypt(value.encode()).decode()

    def open(self, stored: str) -> str:
        """The secret a stored value holds (a value without the prefix is taken as it is)."""
        if not stored.startswith(PREFIX):
            return stored
        try:
            return self._box().decrypt(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken as exc:
            raise SecretsUnavailable(
                "a stored secret cannot be opened with this key (CONVEYOR_SECRETS_KEY changed?)"
            ) from exc

    def seal_fields(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` with its secret fields sealed (a copy): a string field whole, a mapping's values one by one
        (header names stay readable)."""
        return {k: self._each(v, self.seal) if k in SEALED_FIELDS else v for k, v in request.items()}

    def open_fields(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` with its sealed fields opened (a copy; a value stored in clear is taken as it is)."""
        return {k: self._each(v, self.open) if k in SEALED_FIELDS else v for k, v in request.items()}

    @staticmethod
    def _each(value: Any, change: Callable[[str], str]) -> Any:
        if isinstance(value, str):
            return change(value)
        if isinstance(value, dict):
            return {name: change(item) if isinstance(item, str) else item for name, item in value.items()}
        return value
