"""Revoked keys lose their streams: a supervised loop of each api process looks, every ``CHECK_SECONDS``, whether a
key that holds a stream here or that this process remembers as valid was revoked (``conveyor keys revoke``, from
any process or host). Such a key's streams end — WebSocket: an error message, then close 1008; SSE: a last
``error`` message — and its remembered answer is forgotten, so its next request is refused. Tickets are checked
when they are taken (``api.auth.Authenticator.redeem``)."""

from __future__ import annotations

import asyncio

import anyio

from api.auth import Authenticator
from api.streams.hub import Hub
from api.streams.wire import CLOSE_POLICY, Refused
from conveyor import logs

log = logs.get("conveyor.api")

#: How often each api process looks for revoked keys: a revoked key's streams end within this (plus a query).
CHECK_SECONDS = 2.0
REVOKED = Refused("the API key was revoked", CLOSE_POLICY, 401)


async def watch(hub: Hub, auth: Authenticator, every: float = CHECK_SECONDS) -> None:
    """End the streams of revoked keys and forget their cached answers, until cancelled. An error (the job store
    down) is logged and the watch goes on."""
    while True:
        await asyncio.sleep(every)
        try:
            await check(hub, auth)
        except Exception as exc:  # noqa: BLE001 - the watch outlives any one failure
            log.warning("revocation check failed; trying again", error=repr(exc))


async def check(hub: Hub, auth: Authenticator) -> set[str]:
    """One look: returns the revoked key ids found (their streams ended, their cache entries dropped)."""
    key_ids = hub.holders() | auth.cached_key_ids()
    if not key_ids or not auth.enabled:
        return set()
    revoked = await anyio.to_thread.run_sync(auth.keys.revoked_among, key_ids, limiter=auth.threads)
    if revoked:
        auth.forget(revoked)
        ended = sum(hub.end_holder(key_id, REVOKED) for key_id in revoked)
        log.info("revoked keys refused", keys=",".join(sorted(revoked)), streams_ended=ended)
    return revoked
