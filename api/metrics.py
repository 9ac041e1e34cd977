"""``GET /metrics``: Prometheus text for scrapers, behind a token of its own (``CONVEYOR_METRICS_TOKEN``).

Two kinds of series, told apart by the ``process`` label (docs/OBSERVABILITY.md says how to aggregate):

- cluster-wide, with no ``process`` label: read at each scrape from what every process shares, so every api process
  answers the same values. Queue depth (``LLEN`` of each queue), the age of the oldest queued job per queue and the
  workers alive per queue (from the job store and the workers' liveness keys), and the counters and histograms
  every process adds to in Redis (:mod:`conveyor.metrics`). Aggregate them with ``max`` (never ``sum``).
- this process's, labelled ``process="<host>:<pid>"``: HTTP requests by route, method and status; event streams
  (WebSocket and SSE) open; events handed to streams; streams closed for falling too far behind. Aggregate them
  with ``sum``; a restarted process starts again from zero (Prometheus' ``rate()`` handles that).

Auth: ``Authorization: Bearer <CONVEYOR_METRICS_TOKEN>``, compared in constant time, so a scraper needs no user's
API key (a user's key, which sees only its owner's jobs, never opens cluster-wide counts). Without the setting
``/metrics`` answers 401 to everyone; with ``CONVEYOR_AUTH=off`` (development) it is open.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.auth import bearer
from api.deps import StateDep
from api.errors import error
from api.instruments import PATH
from conveyor import liveness, metrics, names
from conveyor.schemas import JobStatus
from conveyor.store import db

if TYPE_CHECKING:
    from api.state import AppState

router = APIRouter(tags=["metrics"])


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


async def cluster_families(state: AppState) -> list[Metric]:
    """The cluster-wide series, read now from Redis and the job store."""
    pipe = state.redis.pipeline(transaction=False)
    for queue in names.QUEUES:
        pipe.llen(queue)
    pipe.hgetall(metrics.METRICS_KEY)
    *depths, stored = await pipe.execute()
    alive = await liveness.live_workers(state.redis, names.QUEUES)
    oldest = await state.db(_oldest_queued, state.store.engine)
    now = datetime.now(UTC)

    depth = GaugeMetricFamily(
        "conveyor_queue_depth", "Messages waiting in each queue (cluster-wide)", labels=("queue",)
    )
    age = GaugeMetricFamily(
        "conveyor_queue_oldest_age_seconds",
        "Age of the oldest job still queued (not started), per queue; 0 when none (cluster-wide)",
        labels=("queue",),
    )
    workers = GaugeMetricFamily(
        "conveyor_workers_alive",
        "Workers that said they were alive recently, per queue (cluster-wide)",
        labels=["queue"],
    )
    for queue, length in zip(names.QUEUES, depths, strict=True):
        depth.add_metric([queue], int(length))
        workers.add_metric([queue], alive.get(queue, 0))
        created = oldest.get(queue)
        age.add_metric([queue], max((now - created).total_seconds(), 0.0) if created is not None else 0.0)
    return [depth, age, workers, *metrics.families(stored)]


def _oldest_queued(engine: sa.Engine) -> dict[str, datetime]:
    """When the oldest queued job of each queue was created."""
    jobs = db.jobs
    query = (
        sa.select(jobs.c.kind, sa.func.min(jobs.c.created_at))
        .where(jobs.c.status == JobStatus.QUEUED.value)
        .group_by(jobs.c.kind)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    found: dict[str, datetime] = {}
    for kind, created in rows:
        if kind in names.TASK_FOR_KIND and created is not None:
            found[names.TASK_FOR_KIND[kind][1]] = created if created.tzinfo else created.replace(tzinfo=UTC)
    return found


def allowed(state: AppState, headers: Any) -> bool:
    """True when the request may read the metrics (see the module)."""
    settings = state.settings
    if settings.auth == "off":
        return True
    token = settings.metrics_token
    offered = bearer(headers)
    if token is None or offered is None:
        return False
    return hmac.compare_digest(offered.encode(), token.get_secret_value().encode())


# Not in the OpenAPI document (like /ws): it is for scrapers, with a token of its own, not for API clients.
@router.get(PATH, response_class=Response, include_in_schema=False)
async def metrics_text(request: Request, state: StateDep) -> Response:
    """Every metric of docs/OBSERVABILITY.md in Prometheus text format: the cluster-wide series (the same from
    every api process) and this process's own (``process`` label). Needs ``Authorization: Bearer`` with
    ``CONVEYOR_METRICS_TOKEN``."""
    if not allowed(state, request.headers):
        detail = "metrics need the metrics token (CONVEYOR_METRICS_TOKEN)"
        return error(401, detail, {"www-authenticate": 'Bearer realm="metrics"'})
    started = time.monotonic()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(await cluster_families(state)))
    registry.register(state.process_metrics)
    scrape = GaugeMetricFamily("conveyor_metrics_scrape_seconds", "Seconds this scrape took", labels=("process",))
    scrape.add_metric([state.process_metrics.process], time.monotonic() - started)
    registry.register(_Families([scrape]))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
