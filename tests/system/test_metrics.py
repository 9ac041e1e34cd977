"""``GET /metrics`` on real processes: two api processes on one Redis and one job store, a notifications worker
(no uploads worker, so uploads stay queued), a real redis-server. The text parses with ``prometheus_client``'s
parser; counters kept in Redis read the same from both api processes; per-process series add up with ``sum``."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor.ops.redis_server import free_port
from tests.events_support import wait_finished
from tests.support import ROOT, Process, base_env, bearer, conveyor, create_key, redis_server, wait_until_healthy

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

TOKEN = "metrics-" + uuid.uuid4().hex

#: Every family ``GET /metrics`` exposes (the names a dashboard may query; docs/OBSERVABILITY.md lists them).
FAMILIES = {
    "conveyor_queue_depth": "gauge",
    "conveyor_queue_oldest_age_seconds": "gauge",
    "conveyor_workers_alive": "gauge",
    "conveyor_jobs": "counter",
    "conveyor_job_queue_seconds": "histogram",
    "conveyor_job_run_seconds": "histogram",
    "conveyor_delivery_attempts": "counter",
    "conveyor_housekeeping_runs": "counter",
    "conveyor_http_requests": "counter",
    "conveyor_streams_open": "gauge",
    "conveyor_stream_events_delivered": "counter",
    "conveyor_stream_slow_consumers_dropped": "counter",
    "conveyor_metrics_scrape_seconds": "gauge",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class TwoApis:
    apis: list[str]
    headers: dict[str, str]
    processes: dict[str, Process]

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.output()[-3000:]}" for name, p in self.processes.items())


@pytest.fixture(scope="module")
def two_apis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoApis]:
    root = tmp_path_factory.mktemp("metrics")
    with redis_server(root / "redis") as redis_url:
        ports = [free_port(), free_port()]
        env = base_env(root / "var", CONVEYOR_REDIS_URL=redis_url, CONVEYOR_METRICS_TOKEN=TOKEN)
        stack = TwoApis([f"http://127.0.0.1:{port}" for port in ports], bearer(create_key(env, "tests")), {})
        for n, port in enumerate(ports):
            stack.processes[f"api-{n}"] = conveyor(f"api-{n}", ["api", "--port", str(port)], env, root / "logs")
        stack.processes["notifications"] = conveyor(
            "notifications", ["worker", "--queues", "notifications"], env, root / "logs"
        )
        try:
            for api in stack.apis:
                wait_until_healthy(api, 60, list(stack.processes.values()))
            yield stack
        finally:
            for process in stack.processes.values():
                process.stop()


def scrape(api: str) -> tuple[dict[str, str], Samples]:
    """The families' types and every sample of ``api``'s ``/metrics``, parsed by prometheus_client's parser."""
    response = httpx.get(f"{api}/metrics", headers=bearer(TOKEN), timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (sample, found), v in samples.items() if sample == name and wanted <= found)


def cluster(samples: Samples) -> Samples:
    """The cluster-wide samples (no ``process`` label), without the time-dependent age."""
    return {
        key: v
        for key, v in samples.items()
        if not any(label == "process" for label, _ in key[1]) and key[0] != "conveyor_queue_oldest_age_seconds"
    }


def test_metrics_need_the_metrics_token(two_apis: TwoApis) -> None:
    api = two_apis.apis[0]
    assert httpx.get(f"{api}/metrics", timeout=10).status_code == 401
    refused = httpx.get(f"{api}/metrics", headers=bearer("not-the-token"), timeout=10)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    # A user's API key opens its own jobs, never the cluster's counts.
    assert httpx.get(f"{api}/metrics", headers=two_apis.headers, timeout=10).status_code == 401
    types, _samples = scrape(api)
    assert {name: types.get(name) for name in FAMILIES} == FAMILIES


def test_after_100_jobs_the_counts_say_100_from_either_api(two_apis: TwoApis) -> None:
    before = [scrape(api)[1] for api in two_apis.apis]
    jobs = []
    for n in range(100):
        api = two_apis.apis[n % 2]  # 50 through each api process
        response = httpx.post(
            f"{api}/notifications", json={"channel": "log", "message": f"m{n}"}, headers=two_apis.headers, timeout=10
        )
        assert response.status_code == 202, response.text
        jobs.append(response.json()["job_id"])
    wait_finished(two_apis.apis[0], jobs, headers=two_apis.headers)

    after = [scrape(api)[1] for api in two_apis.apis]
    assert cluster(after[0]) == cluster(after[1]), "cluster-wide series must read the same from every api process"
    samples, earlier = after[0], before[0]

    def grew(name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(earlier, name, **labels)

    for status in ("queued", "started", "succeeded"):
        assert grew("conveyor_jobs_total", kind="notification", status=status) == 100, status
    assert grew("conveyor_jobs_total", kind="notification", status="failed") == 0
    for histogram in ("conveyor_job_queue_seconds", "conveyor_job_run_seconds"):
        assert grew(f"{histogram}_count", kind="notification") == 100, histogram
        assert grew(f"{histogram}_bucket", kind="notification", le="+Inf") == 100, histogram
        assert grew(f"{histogram}_bucket", kind="notification", le="1800.0") == 100, histogram
        assert grew(f"{histogram}_sum", kind="notification") >= 0
    assert grew("conveyor_delivery_attempts_total", channel="log", outcome="delivered") == 100

    # Per-process series: each api counted its own 50 requests; the documented aggregation (sum) gives 100.
    posted = {"route": "/notifications", "method": "POST", "status": "202"}
    requests = "conveyor_http_requests_total"
    per_process = [
        value(a, requests, **posted) - value(b, requests, **posted) for a, b in zip(after, before, strict=True)
    ]
    assert per_process == [50, 50]
    processes = {dict(labels)["process"] for (name, labels) in samples if name == "conveyor_http_requests_total"}
    assert len(processes) == 1
    assert value(samples, requests, route="/jobs/{job_id}", method="GET", status="200") >= 1  # wait_finished polls
    routes = {dict(labels)["route"] for (name, labels) in samples if name == requests}
    assert all(route == "unmatched" or route.startswith("/") for route in routes), routes
    assert not [route for route in routes if route.startswith("/jobs/") and "{" not in route], "raw paths as labels"


def test_queue_depth_age_and_workers_per_queue(two_apis: TwoApis, tmp_path: Path) -> None:
    """No uploads worker runs: uploads wait in their queue, and the oldest one ages."""
    jobs = []
    for n in range(3):
        response = httpx.post(
            f"{two_apis.apis[1]}/uploads",
            files={"file": (f"{n}.bin", b"u" * 1000)},
            headers=two_apis.headers,
            timeout=30,
        )
        assert response.status_code == 202, response.text
        jobs.append(response.json()["job_id"])
    samples = [scrape(api)[1] for api in two_apis.apis]
    for scraped in samples:
        assert value(scraped, "conveyor_queue_depth", queue="uploads") == 3
        assert value(scraped, "conveyor_queue_oldest_age_seconds", queue="uploads") > 0
        assert value(scraped, "conveyor_queue_oldest_age_seconds", queue="notifications") == 0
        assert value(scraped, "conveyor_workers_alive", queue="notifications") == 1
        assert value(scraped, "conveyor_workers_alive", queue="uploads") == 0
        assert value(scraped, "conveyor_jobs_total", kind="upload", status="queued") == 3
    for job_id in jobs:
        assert httpx.delete(f"{two_apis.apis[0]}/jobs/{job_id}", headers=two_apis.headers).status_code == 202
    assert value(scrape(two_apis.apis[1])[1], "conveyor_jobs_total", kind="upload", status="cancelled") == 3
    assert value(scrape(two_apis.apis[1])[1], "conveyor_queue_oldest_age_seconds", queue="uploads") == 0


def test_the_grafana_dashboard_queries_only_metrics_we_export(two_apis: TwoApis) -> None:
    """docs/grafana/conveyor.json is valid JSON, and every metric name its queries use is one a real ``/metrics``
    answer exposes, with the suffix its type has (``_total`` for counters, ``_bucket`` for histograms)."""
    dashboard = json.loads((ROOT / "docs" / "grafana" / "conveyor.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 10
    used = {name for expr in exprs for name in re.findall(r"\bconveyor_[a-z_]+\b", expr)}
    types, samples = scrape(two_apis.apis[0])
    queried = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in used}
    assert queried <= set(types), queried - set(types)
    for name in used:  # and each with the suffix its family's type has
        family = re.sub(r"_(total|bucket|count|sum)$", "", name)
        suffix = name[len(family) :]
        assert suffix in {"counter": {"_total"}, "histogram": {"_bucket", "_count", "_sum"}}.get(types[family], {""})
    assert {name for name, _labels in samples} >= {"conveyor_job_queue_seconds_bucket", "conveyor_jobs_total"}
    for needed in ("conveyor_queue_depth", "conveyor_job_queue_seconds", "conveyor_jobs"):
        assert needed in queried  # queue depth, time-in-queue p50/p95, throughput by outcome
