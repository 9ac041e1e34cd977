"""The cluster-wide counts in Redis (conveyor/metrics.py): what each transition adds, and how the hash renders as
Prometheus families; on the session's real redis-server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from conveyor import metrics
from conveyor.schemas import Job, JobStatus


def job(status: JobStatus, *, attempts: int = 1, queued: float = 2.0, ran: float = 0.3, kind: str = "notification",
        channel: str = "webhook") -> Job:  # fmt: skip
    created = datetime(2026, 1, 1, tzinfo=UTC)
    started = created + timedelta(seconds=queued)
    finished = started + timedelta(seconds=ran) if status.finished else None
    return Job.model_construct(
        job_id="j1", kind=kind, status=status, owner="o", request={"channel": channel}, attempts=attempts,
        progress=0.0, created_at=created, started_at=started, finished_at=finished, updated_at=created,
    )  # fmt: skip


class _Fixed(Collector):
    def __init__(self, stored: dict[bytes, bytes]) -> None:
        self.stored = stored

    def collect(self) -> Iterator[Metric]:
        return iter(metrics.families(self.stored))


def rendered(stored: dict[bytes, bytes]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(stored))
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_job_s_life_adds_its_transitions_times_and_delivery(private_redis_url: str) -> None:
    client = redis.Redis.from_url(private_redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for transition in (
            job(JobStatus.QUEUED),
            job(JobStatus.STARTED),
            job(JobStatus.RETRYING),
            job(JobStatus.STARTED, attempts=2),  # a second start: no second time-in-queue
            job(JobStatus.SUCCEEDED, attempts=2),
        ):
            metrics.count_job(pipe, transition)
        pipe.execute()
        samples = rendered(client.hgetall(metrics.METRICS_KEY))  # type: ignore[arg-type]
    finally:
        client.close()

    def at(name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    assert at("conveyor_jobs_total", kind="notification", status="queued") == 1
    assert at("conveyor_jobs_total", kind="notification", status="started") == 2
    assert at("conveyor_jobs_total", kind="notification", status="retrying") == 1
    assert at("conveyor_jobs_total", kind="notification", status="succeeded") == 1
    assert at("conveyor_job_queue_seconds_count", kind="notification") == 1
    assert at("conveyor_job_queue_seconds_sum", kind="notification") == 2.0
    assert at("conveyor_job_queue_seconds_bucket", kind="notification", le="1.0") == 0  # cumulative buckets
    assert at("conveyor_job_queue_seconds_bucket", kind="notification", le="2.5") == 1
    assert at("conveyor_job_queue_seconds_bucket", kind="notification", le="1800.0") == 1
    assert at("conveyor_job_run_seconds_count", kind="notification") == 1
    assert at("conveyor_job_run_seconds_bucket", kind="notification", le="0.25") == 0
    assert at("conveyor_job_run_seconds_bucket", kind="notification", le="0.5") == 1
    assert at("conveyor_delivery_attempts_total", channel="webhook", outcome="retried") == 1
    assert at("conveyor_delivery_attempts_total", channel="webhook", outcome="delivered") == 1


def test_an_empty_hash_still_declares_every_family() -> None:
    families = {family.name: family.type for family in metrics.families({})}
    assert families == {
        "conveyor_jobs": "counter",
        "conveyor_delivery_attempts": "counter",
        "conveyor_housekeeping_runs": "counter",
        "conveyor_job_queue_seconds": "histogram",
        "conveyor_job_run_seconds": "histogram",
    }


def test_fields_round_trip_and_buckets() -> None:
    assert metrics.parse_field(metrics.field("f", a="x", b="y|z")) == ("f", {"a": "x", "b": "y_z"})
    assert metrics.bucket_for(0) == "0.005"
    assert metrics.bucket_for(1800) == "1800.0"
    assert metrics.bucket_for(1800.5) == "+Inf"
    assert metrics.BUCKETS[-2] == 1800


def test_counting_jobs_together_adds_what_counting_each_adds_one_command_per_series(private_redis_url: str) -> None:
    transitions = [job(JobStatus.QUEUED)] * 50 + [job(JobStatus.STARTED), job(JobStatus.SUCCEEDED)] * 3
    client = redis.Redis.from_url(private_redis_url)
    try:
        client.delete(metrics.METRICS_KEY)
        pipe = client.pipeline(transaction=False)
        for transition in transitions:
            metrics.count_job(pipe, transition)
        pipe.execute()
        each = client.hgetall(metrics.METRICS_KEY)
        client.delete(metrics.METRICS_KEY)
        pipe = client.pipeline(transaction=False)
        metrics.count_jobs(pipe, transitions)
        commands = len(pipe.command_stack)
        pipe.execute()
        together = client.hgetall(metrics.METRICS_KEY)
    finally:
        client.close()
    assert {name: pytest.approx(float(value)) for name, value in together.items()} == {
        name: float(value) for name, value in each.items()
    }
    assert commands == len(together)
