"""A bounded schemathesis run against ``/openapi.json``, with a key: no 5xx, every response as documented.

The api under test has its own job store and its own Redis database (so the junk it accepts — webhooks to
random hosts, e-mails to nowhere — never reaches the session's workers); no worker runs, jobs just queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case as GenericCase
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from conveyor.ops.redis_server import free_port
from tests.support import base_env, bearer, conveyor, create_key, wait_until_healthy

#: ``check`` keeps its source unchanged: Hypothesis derives the examples of a derandomized test from it.
Case = GenericCase[Any]

pytestmark = [pytest.mark.system, pytest.mark.slow]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzzed_api(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[str, str]]:
    """A ``conveyor api`` of its own; yields its base URL and a key."""
    data_dir = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = base_env(
        data_dir,
        CONVEYOR_REDIS_URL=redis_url.rsplit("/", 1)[0] + "/1",
        CONVEYOR_API_PORT=str(port),
        CONVEYOR_RATE_LIMIT_PER_SECOND="100000",
        CONVEYOR_RATE_LIMIT_BURST="100000",
        CONVEYOR_MAX_UPLOAD_BYTES="100000",
    )
    key = create_key(env, "fuzz")
    process = conveyor("api-fuzz", ["api"], env, data_dir / "logs")
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_until_healthy(base_url, 60, [process])
        yield base_url, key
    finally:
        process.stop()
    assert "Traceback" not in process.output(), process.output()[-4000:]


def test_the_api_answers_as_documented(fuzzed_api: tuple[str, str]) -> None:
    base_url, key = fuzzed_api
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    results = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) >= 12

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        def check(case: Case) -> None:
            if case.path == "/events":  # a refusal to check, not a stream to wait on
                case.query = {**(case.query or {}), "job_id": "0190a0a0-0000-7000-8000-000000000000"}
            case.call_and_validate(base_url=base_url, headers=bearer(key), checks=CHECKS, timeout=30)

        check()
