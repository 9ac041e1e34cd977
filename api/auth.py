"""Who is calling: API keys (``Authorization: Bearer``) and single-use WebSocket tickets.

Keys are checked against the job store (:class:`conveyor.store.apikeys.KeyStore`) and the answer — valid or not —
is remembered for ``CONVEYOR_AUTH_CACHE_SECONDS``, so a busy client costs one lookup per period, and a revoked
key stops working within that period. Tickets are for browsers, which cannot set headers on a WebSocket or an
``EventSource``: ``POST /ws-tickets`` (with a key) stores a random ticket in Redis for a few seconds, and the
first stream that presents it as ``?ticket=`` takes it (``GETDEL``): a ticket works once, then never again.
Taking it leaves a marker for :data:`USED_MARKER_SECONDS`, so that a second use is told "already used" rather
than "unknown or expired". Neither keys nor tickets are ever logged; Redis holds only a ticket's digest.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping

import anyio
import redis.asyncio as aioredis

from conveyor.names import TICKET_KEY, USED_TICKET_KEY
from conveyor.redis_client import text
from conveyor.store.apikeys import KeyStore, Principal

TICKET_PREFIX = "cvt_"
#: Seconds a taken ticket is remembered as used (only to say why a second use is refused).
USED_MARKER_SECONDS = 600
#: Take a ticket (KEYS[1]) and leave its used marker (KEYS[2]) in one step: ``{1, value}`` when taken, else
#: ``{0, 1}`` when it was used before, ``{0, 0}`` when it is unknown or expired.
_REDEEM = """
local value = redis.call('GETDEL', KEYS[1])
if value then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
  return {1, value}
end
return {0, redis.call('EXISTS', KEYS[2])}
"""
#: Remembered answers per api process; the cache is emptied when it grows past this.
CACHE_LIMIT = 10_000
#: The owner of everything when ``CONVEYOR_AUTH=off``.
ANONYMOUS = Principal("anonymous", "-")


class Unauthenticated(Exception):
    """No credentials, or ones that are not valid; ``detail`` says which (never echoing them)."""

    def __init__(self, detail: str, error: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.error = error

    @property
    def www_authenticate(self) -> str:
        """The ``WWW-Authenticate`` challenge for a 401 (RFC 6750)."""
        challenge = 'Bearer realm="conveyor"'
        return challenge if self.error is None else f'{challenge}, error="{self.error}"'


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if there is one."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class Authenticator:
    """Resolves credentials to a :class:`Principal` for one api process."""

    def __init__(
        self,
        keys: KeyStore,
        redis: aioredis.Redis,
        *,
        enabled: bool,
        cache_seconds: float,
        threads: anyio.CapacityLimiter | None = None,
    ) -> None:
        self.keys = keys
        self.threads = threads
        self.redis = redis
        self.enabled = enabled
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[Principal | None, float]] = {}
        self._redeem = redis.register_script(_REDEEM)

    async def key(self, token: str | None) -> Principal:
        """The principal of a valid key. Raises :class:`Unauthenticated` for no key or a bad one."""
        if not self.enabled:
            return ANONYMOUS
        if token is None:
            raise Unauthenticated("an API key is needed: send Authorization: Bearer <key>")
        now = time.monotonic()
        cached = self._cache.get(token)
        if cached is not None and cached[1] > now:
            principal = cached[0]
        else:
            principal = await anyio.to_thread.run_sync(self.keys.verify, token, limiter=self.threads)
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            self._cache[token] = (principal, now + self.cache_seconds)
        if principal is None:
            raise Unauthenticated("the API key is not valid (unknown, malformed or revoked)", "invalid_token")
        return principal

    async def issue_ticket(self, principal: Principal, seconds: int) -> str:
        """A new single-use ticket standing for ``principal``, valid for ``seconds``."""
        ticket = TICKET_PREFIX + secrets.token_urlsafe(32)
        await self.redis.set(TICKET_KEY + _digest(ticket), f"{principal.owner}\n{principal.key_id}", ex=seconds)
        return ticket

    async def redeem(self, ticket: str) -> Principal:
        """Take a ticket: its principal the first time, :class:`Unauthenticated` ever after (or once expired)."""
        if not ticket.startswith(TICKET_PREFIX) or len(ticket) > 100:
            raise Unauthenticated("the ticket is not valid", "invalid_token")
        keys = [TICKET_KEY + _digest(ticket), USED_TICKET_KEY + _digest(ticket)]
        taken, value = await self._redeem(keys=keys, args=[USED_MARKER_SECONDS])
        if not int(taken):
            if int(value):
                raise Unauthenticated("the ticket is not valid (already used)", "invalid_token")
            raise Unauthenticated("the ticket is not valid (unknown or expired)", "invalid_token")
        owner, _, key_id = text(value).partition("\n")
        revoked: set[str] = (
            await anyio.to_thread.run_sync(self.keys.revoked_among, [key_id], limiter=self.threads)
            if self.enabled
            else set()
        )
        if revoked:
            raise Unauthenticated("the ticket's API key was revoked", "invalid_token")
        return Principal(owner, key_id)

    def forget(self, key_ids: set[str]) -> None:
        """Drop what this process remembers of these keys (revoked: refused from the next request on)."""
        for token, (principal, _until) in tuple(self._cache.items()):
            if principal is not None and principal.key_id in key_ids:
                del self._cache[token]

    def cached_key_ids(self) -> set[str]:
        """The ids of the keys this process remembers as valid."""
        return {principal.key_id for principal, _until in self._cache.values() if principal is not None}

    async def stream(self, headers: Mapping[str, str], ticket: str | None) -> Principal:
        """The principal of an event stream: a ticket (``?ticket=``) or the bearer header."""
        if self.enabled and ticket is not None:
            return await self.redeem(ticket)
        return await self.key(bearer(headers))


def origin_allowed(headers: Mapping[str, str], origins: frozenset[str]) -> bool:
    """True when the request comes from no browser page (no ``Origin``) or from an allowed one."""
    origin = headers.get("origin")
    return origin is None or origin.rstrip("/").lower() in origins


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()
