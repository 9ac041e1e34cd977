"""One outbound HTTP request, made safely: what the ``webhook`` and ``http`` channels share.

The host is resolved once and the request goes to the addresses found (no second lookup a DNS answer could
change), none of which may be loopback, private, link-local or reserved unless ``CONVEYOR_WEBHOOK_ALLOW_PRIVATE``;
for https the original name is the SNI and the certificate's subject; no redirects are followed; no proxy from the
environment is used; the response body is read up to a cap (bytes and time). Connection errors and timeouts are
transient :class:`~worker.channels.DeliveryError`; the answer itself, whatever its status, is the caller's to judge.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from functools import lru_cache

import httpx

from conveyor import webhooks
from worker.channels import DeliveryError

#: Addresses of one host tried in turn when a connection is refused (IPv6 and IPv4, say).
MAX_ADDRESSES = 3


@dataclass(frozen=True)
class Answer:
    """What the peer answered: its status, headers, and the body read (``cut`` when it was longer than the cap)."""

    status: int
    reason: str
    headers: httpx.Headers
    body: bytes
    cut: bool


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); ``None`` if absent or
    unreadable. Never negative."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def resolve(host: str, port: int, allow_private: bool) -> list[str]:
    """The addresses to connect to for ``host``, in the resolver's order. Raises a permanent
    :class:`DeliveryError` if any of its addresses is refused (unless ``allow_private``), a transient one if
    it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DeliveryError(f"cannot resolve {host}: {exc}", transient=True) from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise DeliveryError(f"cannot resolve {host}", transient=True)
    if not allow_private:
        for address in addresses:
            reason = webhooks.refused_address(address)
            if reason is not None:
                raise DeliveryError(
                    f"refused to send to {host}: {reason} (CONVEYOR_WEBHOOK_ALLOW_PRIVATE allows it)", transient=False
                )
    return addresses


@lru_cache(maxsize=1)
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


def _read_capped(response: httpx.Response, cap: int, deadline: float) -> tuple[bytes, bool]:
    data = bytearray()
    for chunk in response.iter_raw():
        data += chunk
        if len(data) > cap or time.monotonic() > deadline:
            return bytes(data[:cap]), True
    return bytes(data), False


def request(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    content: bytes | None,
    timeout: float,
    cap: int,
    allow_private: bool,
    what: str = "request",
) -> Answer:
    """Make the request once (see the module docstring); ``what`` names it in errors ("webhook", "request")."""
    target_url = httpx.URL(url)
    port = target_url.port or (443 if target_url.scheme == "https" else 80)
    addresses = resolve(target_url.host, port, allow_private)
    sent_headers = {"Host": target_url.netloc.decode("ascii"), **headers}
    extensions = {"sni_hostname": target_url.host} if target_url.scheme == "https" else {}
    client = httpx.Client(follow_redirects=False, trust_env=False, verify=_tls(), timeout=timeout)
    try:
        for index, address in enumerate(addresses[:MAX_ADDRESSES], start=1):
            target = target_url.copy_with(host=address)
            try:
                with client.stream(method, target, content=content, headers=sent_headers, extensions=extensions) as r:
                    body, cut = _read_capped(r, cap, time.monotonic() + 3 * timeout)
                    return Answer(r.status_code, r.reason_phrase, r.headers, body, cut)
            except httpx.ConnectError:
                if index >= min(len(addresses), MAX_ADDRESSES):
                    raise
        raise DeliveryError(f"{what} unreachable: no address to connect to", transient=True)
    except httpx.TimeoutException as exc:
        raise DeliveryError(f"{what} timed out ({type(exc).__name__})", transient=True) from exc
    except httpx.TransportError as exc:
        raise DeliveryError(f"{what} unreachable: {type(exc).__name__}: {exc}", transient=True) from exc
    finally:
        client.close()
