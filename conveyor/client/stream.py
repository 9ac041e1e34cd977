"""``GET /events`` read as Server-Sent Events, resumed after a disconnect from the last event id seen."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import orjson

from conveyor.client.http import Api, ApiError, detail

#: Seconds without a byte before the stream counts as lost (the api sends a comment every 15 s by default).
READ_TIMEOUT = 60.0
#: Answers after which the client tries again rather than giving up: the api restarting or overloaded.
RETRYABLE = frozenset({502, 503, 504})


class EventReader:
    """The caller's events (``job_ids``: only those jobs, from their first event; none: every job, from now).

    Iterating yields each event once and in order, across reconnections: after a dropped connection it waits
    (0.25 s, doubling to 5 s), calls ``reconnecting`` with the reason, and resumes after the last event id it
    yielded. A ``resync`` message (the resume point is older than the stream keeps) is yielded as it is. Refusals
    other than the api restarting (401, 404…) raise :class:`ApiError`.
    """

    def __init__(
        self,
        api: Api,
        job_ids: Sequence[str] = (),
        reconnecting: Callable[[str], None] = lambda _reason: None,
        last_event_id: str | None = None,
    ) -> None:
        self.api = api
        self.job_ids = list(job_ids)
        self.reconnecting = reconnecting
        self.last_event_id = last_event_id

    def __iter__(self) -> Iterator[dict[str, Any]]:
        delay = 0.25
        while True:
            params: dict[str, list[str]] = {"job_id": self.job_ids}
            if self.last_event_id is not None:
                params["last_event_id"] = [self.last_event_id]
            try:
                for event in self._read(params):
                    delay = 0.25
                    yield event
                reason = "the api closed the stream"
            except httpx.TransportError as exc:
                reason = f"connection lost ({type(exc).__name__})"
            except ApiError as exc:
                if exc.status not in RETRYABLE:
                    raise
                reason = str(exc)
            self.reconnecting(reason)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _read(self, params: dict[str, list[str]]) -> Iterator[dict[str, Any]]:
        timeout = httpx.Timeout(30.0, read=READ_TIMEOUT)
        query = httpx.QueryParams(params)
        with self.api.http.stream("GET", "/events", params=query, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response.status_code, detail(response))
            event_id: str | None = None
            data: list[str] = []
            for line in response.iter_lines():
                if line:
                    field, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if field == "id":
                        event_id = value
                    elif field == "data":
                        data.append(value)
                    continue
                if data:
                    message = orjson.loads("\n".join(data))
                    if event_id:
                        self.last_event_id = event_id
                    if isinstance(message, dict):
                        yield message
                event_id, data = None, []
