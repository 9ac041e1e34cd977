"""Channel ``webhook``: one signed HTTP POST per attempt.

Safety: the host is resolved once and the request goes to the addresses found (no second lookup a DNS answer
could change), none of which may be loopback, private, link-local or reserved unless
``CONVEYOR_WEBHOOK_ALLOW_PRIVATE``; no redirects are followed; no proxy from the environment is used; the
response body is read up to ``CONVEYOR_WEBHOOK_MAX_RESPONSE_BYTES``. Connection errors, timeouts, 408, 429 and
5xx are transient (``Retry-After`` honoured); any other answer outside 2xx is permanent.
"""

from __future__ import annotations

import socket
import ssl
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache

import httpx
import orjson

from conveyor import __version__, webhooks
from conveyor.schemas import WebhookNotification
from conveyor.settings import Settings
from worker.channels import DeliveryError, Sent

TRANSIENT_STATUS = frozenset({408, 429})
EXCERPT_CHARS = 200
#: Addresses of one host tried in turn when a connection is refused (IPv6 and IPv4, say).
MAX_ADDRESSES = 3


def payload(request: WebhookNotification, created_at: datetime) -> bytes:
    """The request body: ``{"type", "timestamp", "data"}``, identical on every attempt (the timestamp is the
    job's creation time)."""
    stamp = created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return orjson.dumps({"type": request.type, "timestamp": stamp, "data": request.data})


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


def _read_capped(response: httpx.Response, cap: int, deadline: float) -> bytes:
    data = bytearray()
    if cap <= 0:
        return b""
    for chunk in response.iter_raw():
        data += chunk
        if len(data) >= cap or time.monotonic() > deadline:
            break
    return bytes(data[:cap])


def send(settings: Settings, job_id: str, created_at: datetime, request: WebhookNotification) -> Sent:
    """POST the signed payload once. Returns the 2xx answer; raises :class:`DeliveryError` otherwise."""
    secret = request.secret or (settings.webhook_secret.get_secret_value() if settings.webhook_secret else None)
    if secret is None:
        raise DeliveryError("no webhook secret: set CONVEYOR_WEBHOOK_SECRET or pass one", transient=False)
    url = httpx.URL(str(request.url))
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = resolve(url.host, port, settings.webhook_allow_private)
    body = payload(request, created_at)
    msg_id = webhooks.message_id(job_id)
    headers = {
        "Host": url.netloc.decode("ascii"),
        "Content-Type": "application/json",
        "User-Agent": f"Conveyor/{__version__}",
        **webhooks.signed_headers(secret, msg_id, body),
    }
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    timeout = settings.webhook_timeout
    cap = settings.webhook_max_response_bytes
    client = httpx.Client(follow_redirects=False, trust_env=False, verify=_tls(), timeout=timeout)
    try:
        for index, address in enumerate(addresses[:MAX_ADDRESSES], start=1):
            target = url.copy_with(host=address)
            try:
                with client.stream("POST", target, content=body, headers=headers, extensions=extensions) as response:
                    excerpt = _read_capped(response, cap, time.monotonic() + 3 * timeout)
                break
            except httpx.ConnectError:
                if index >= min(len(addresses), MAX_ADDRESSES):
                    raise
    except httpx.TimeoutException as exc:
        raise DeliveryError(f"webhook timed out ({type(exc).__name__})", transient=True) from exc
    except httpx.TransportError as exc:
        raise DeliveryError(f"webhook unreachable: {type(exc).__name__}: {exc}", transient=True) from exc
    finally:
        client.close()
    status = response.status_code
    reply = f"{status} {response.reason_phrase}".strip()
    text = excerpt.decode("utf-8", "replace")[:EXCERPT_CHARS]
    if text:
        reply += f": {text}"
    if 200 <= status < 300:
        return Sent(status, reply, {"webhook_id": msg_id, "status_code": status, "url": str(request.url)})
    message = f"webhook answered {status} {response.reason_phrase}".strip()
    if status in TRANSIENT_STATUS or status >= 500:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise DeliveryError(message, transient=True, status_code=status, reply=reply, retry_after=retry_after)
    if 300 <= status < 400:
        message += " (redirects are not followed)"
    raise DeliveryError(message, transient=False, status_code=status, reply=reply)
