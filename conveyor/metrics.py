"""Cluster-wide metrics kept in Redis: counters and histograms that every process adds to and any api process reads.

Workers (prefork children included), the api and beat's tasks all add to one Redis hash (:data:`METRICS_KEY`) with
``HINCRBY``/``HINCRBYFLOAT``, in the same round trip as the event or the write they count. So a count never depends
on which process did the work, survives the restart of any of them, and reads the same from every api process:
``GET /metrics`` (``api/metrics.py``) renders this hash, whichever api process answers.

Guarantees: each job transition a worker or the api announces adds one to ``conveyor_jobs_total{kind,status}``
(a job's ``queued`` once, when it is recorded; ``started`` once per attempt; one of ``succeeded``, ``failed``,
``cancelled`` once); a job's first start observes its time in queue (``created_at`` → ``started_at``) once; its end
(succeeded or failed after running) observes its run time (``started_at`` → ``finished_at``) once; each ended attempt
of a notification adds one to ``conveyor_delivery_attempts_total{channel,outcome}``. Counts are lost only when Redis
loses writes (a crash within its fsync second) or is emptied.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from conveyor.names import KIND_NOTIFICATION, REDIS_PREFIX
from conveyor.schemas import Job, JobStatus

#: The Redis hash holding every cluster-wide count (field: :func:`field`, value: a number).
METRICS_KEY: Final = REDIS_PREFIX + "metrics"

JOBS: Final = "conveyor_jobs_total"
QUEUE_SECONDS: Final = "conveyor_job_queue_seconds"
RUN_SECONDS: Final = "conveyor_job_run_seconds"
DELIVERIES: Final = "conveyor_delivery_attempts_total"
HOUSEKEEPING: Final = "conveyor_housekeeping_runs_total"

#: Upper bounds of the histograms' buckets, in seconds: from 5 ms to 30 minutes (then +Inf).
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, math.inf)

#: Counter families: (help, label names).
COUNTERS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    JOBS: ("Job transitions, by kind and the status entered (cluster-wide)", ("kind", "status")),
    DELIVERIES: ("Ended notification delivery attempts, by channel and outcome (cluster-wide)", ("channel", "outcome")),
    HOUSEKEEPING: ("Housekeeping task runs, by task and outcome (cluster-wide)", ("task", "outcome")),
}
#: Histogram families: (help, label names).
HISTOGRAMS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    QUEUE_SECONDS: ("Seconds from a job's creation to its first start, by kind (cluster-wide)", ("kind",)),
    RUN_SECONDS: ("Seconds from a job's (last) start to its end, by kind (cluster-wide)", ("kind",)),
}

#: The outcome of a notification's attempt, by the status its job entered.
_DELIVERY_OUTCOME: Final = {
    JobStatus.SUCCEEDED: "delivered",
    JobStatus.RETRYING: "retried",
    JobStatus.FAILED: "failed",
}
_SEP: Final = "|"


def field(family: str, **labels: str) -> str:
    """The hash field of one series: the family's name, then ``name=value`` per label in the order given."""
    return _SEP.join([family, *(f"{name}={value.replace(_SEP, '_')}" for name, value in labels.items())])


def parse_field(raw: str) -> tuple[str, dict[str, str]]:
    """The family and labels of a hash field made by :func:`field`."""
    family, *pairs = raw.split(_SEP)
    return family, dict(pair.partition("=")[::2] for pair in pairs)


def bucket_for(seconds: float) -> str:
    """The ``le`` of the smallest bucket holding ``seconds``."""
    for bound in BUCKETS:
        if seconds <= bound:
            return _le(bound)
    return "+Inf"


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def count(pipe: Any, family: str, **labels: str) -> None:
    """Add one to a counter, on ``pipe`` (a Redis client or pipeline, synchronous or not: the caller runs it)."""
    pipe.hincrby(METRICS_KEY, field(family, **labels), 1)


def observe(pipe: Any, family: str, seconds: float, **labels: str) -> None:
    """Add one observation of ``seconds`` to a histogram, on ``pipe``."""
    seconds = max(seconds, 0.0)
    pipe.hincrby(METRICS_KEY, field(family + "_bucket", **labels, le=bucket_for(seconds)), 1)
    pipe.hincrbyfloat(METRICS_KEY, field(family + "_sum", **labels), seconds)


def count_job(pipe: Any, job: Job) -> None:
    """Add to ``pipe`` the counts of the transition ``job`` just made into its current status (see the module)."""
    kind = job.kind
    count(pipe, JOBS, kind=kind, status=job.status.value)
    if job.status is JobStatus.STARTED and job.attempts == 1 and job.started_at is not None:
        observe(pipe, QUEUE_SECONDS, (job.started_at - job.created_at).total_seconds(), kind=kind)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED) and job.started_at and job.finished_at:
        observe(pipe, RUN_SECONDS, (job.finished_at - job.started_at).total_seconds(), kind=kind)
    outcome = _DELIVERY_OUTCOME.get(job.status)
    if kind == KIND_NOTIFICATION and outcome is not None and job.started_at is not None:
        channel = str(job.request.get("channel", "unknown")) if isinstance(job.request, Mapping) else "unknown"
        count(pipe, DELIVERIES, channel=channel, outcome=outcome)


class _Tally:
    """Increments added up per hash field, to be sent as one command per field (:func:`count_jobs`)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.sums: dict[str, float] = {}

    def hincrby(self, _key: str, name: str, amount: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + amount

    def hincrbyfloat(self, _key: str, name: str, amount: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + amount


def count_jobs(pipe: Any, jobs: Iterable[Job]) -> None:
    """:func:`count_job` for each of ``jobs``, added up: one command per series on ``pipe`` (a batch of 50 queued
    jobs adds 50 to one field with one ``HINCRBY``)."""
    tally = _Tally()
    for job in jobs:
        count_job(tally, job)
    for name, amount in tally.counts.items():
        pipe.hincrby(METRICS_KEY, name, amount)
    for name, total in tally.sums.items():
        pipe.hincrbyfloat(METRICS_KEY, name, total)


def families(stored: Mapping[bytes, bytes] | Mapping[str, str]) -> list[Metric]:
    """The Prometheus metric families in the hash ``stored`` (``HGETALL`` of :data:`METRICS_KEY`). Every family of
    :data:`COUNTERS` and :data:`HISTOGRAMS` is present, empty when nothing was counted yet."""
    counters: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in COUNTERS}
    buckets: dict[str, dict[tuple[str, ...], dict[str, float]]] = {name: {} for name in HISTOGRAMS}
    sums: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in HISTOGRAMS}
    for raw_field, raw_value in stored.items():
        family, labels = parse_field(_text(raw_field))
        value = float(_text(raw_value))
        if family in COUNTERS:
            key = tuple(labels.get(name, "") for name in COUNTERS[family][1])
            counters[family][key] = counters[family].get(key, 0.0) + value
        elif family.endswith("_bucket") and family[: -len("_bucket")] in HISTOGRAMS:
            name = family[: -len("_bucket")]
            key = tuple(labels.get(label, "") for label in HISTOGRAMS[name][1])
            per_le = buckets[name].setdefault(key, {})
            per_le[labels.get("le", "+Inf")] = per_le.get(labels.get("le", "+Inf"), 0.0) + value
        elif family.endswith("_sum") and family[: -len("_sum")] in HISTOGRAMS:
            name = family[: -len("_sum")]
            key = tuple(labels.get(label, "") for label in HISTOGRAMS[name][1])
            sums[name][key] = sums[name].get(key, 0.0) + value
    found: list[Metric] = []
    for name, (documentation, label_names) in COUNTERS.items():
        counter = CounterMetricFamily(name.removesuffix("_total"), documentation, labels=label_names)
        for key, value in sorted(counters[name].items()):
            counter.add_metric(list(key), value)
        found.append(counter)
    for name, (documentation, label_names) in HISTOGRAMS.items():
        histogram = HistogramMetricFamily(name, documentation, labels=label_names)
        for key in sorted(set(buckets[name]) | set(sums[name])):
            histogram.add_metric(list(key), _cumulative(buckets[name].get(key, {})), sums[name].get(key, 0.0))
        found.append(histogram)
    return found


def _cumulative(per_le: Mapping[str, float]) -> list[tuple[str, float]]:
    total = 0.0
    out = []
    for bound in BUCKETS:
        total += per_le.get(_le(bound), 0.0)
        out.append((_le(bound), total))
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
