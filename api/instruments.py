"""This api process's own metrics (the ``process``-labelled series of ``GET /metrics``, ``api/metrics.py``): HTTP
requests counted by route template, method and status, and the event hub's streams and deliveries."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from api.state import AppState
    from api.streams.hub import Hub

#: The path of the metrics route (the guard lets it check its own token).
PATH: Final = "/metrics"
#: The ``route`` label of a request that matched no route (or was refused before routing: 401, 429).
UNMATCHED: Final = "unmatched"


class ProcessMetrics(Collector):
    """This api process's own series (``process`` label): HTTP requests counted by :class:`CountRequests`, and
    the event hub's streams and deliveries read at each scrape."""

    def __init__(self, process: str | None = None) -> None:
        self.process = process or f"{socket.gethostname()}:{os.getpid()}"
        self.requests: dict[tuple[str, str, str], int] = {}
        self.hub: Hub | None = None

    def request(self, route: str, method: str, status: int) -> None:
        key = (route, method, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "conveyor_http_requests",
            "HTTP requests answered by this api process, by route template, method and status",
            labels=("route", "method", "status", "process"),
        )
        for (route, method, status), value in sorted(self.requests.items()):
            requests.add_metric([route, method, status, self.process], value)
        yield requests
        hub = self.hub
        streams = GaugeMetricFamily(
            "conveyor_streams_open", "Event streams (WebSocket and SSE) open on this api process", labels=("process",)
        )
        delivered = CounterMetricFamily(
            "conveyor_stream_events_delivered", "Events handed to this process's event streams", labels=("process",)
        )
        dropped = CounterMetricFamily(
            "conveyor_stream_slow_consumers_dropped",
            "Event streams this process closed because their client fell too far behind",
            labels=("process",),
        )
        if hub is not None:
            streams.add_metric([self.process], len(hub.subscribers))
            delivered.add_metric([self.process], hub.delivered)
            dropped.add_metric([self.process], hub.slow_dropped)
        yield from (streams, delivered, dropped)


class CountRequests:
    """ASGI middleware (outermost): counts every HTTP request's answer in the app's :class:`ProcessMetrics`, by the
    route's template (``/jobs/{job_id}``, never the raw path), so that label values stay few."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.templates = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            state: AppState | None = scope.get("state", {}).get("conveyor")
            if state is not None:
                state.process_metrics.request(self.templates.of(scope), scope["method"], status)


class RouteTemplates:
    """Maps a request path to the template of the app's route that serves it (``/jobs/abc`` → ``/jobs/{job_id}``),
    from the app's OpenAPI paths (built once, on first use), so that label values stay few whoever answered: a
    route, or the submission lane before routing."""

    def __init__(self) -> None:
        self._patterns: list[tuple[re.Pattern[str], str]] | None = None
        self._exact: frozenset[str] = frozenset()

    def of(self, scope: Scope) -> str:
        if self._patterns is None:
            openapi = getattr(scope.get("app"), "openapi", None)
            paths = [*(openapi().get("paths", {}) if openapi is not None else {}), PATH]
            self._patterns = [
                (re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(path)) + "$"), path) for path in paths
            ]
            self._exact = frozenset(paths)
        path = scope.get("path", "")
        if path in self._exact:
            return str(path)
        for pattern, template in self._patterns:
            if pattern.match(path):
                return template
        return UNMATCHED
