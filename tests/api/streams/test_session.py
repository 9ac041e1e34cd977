"""What an event stream is asked for: filters and the resume point, parsed and refused as both transports need."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams

from api.streams.request import parse_request
from api.streams.wire import Refused
from conveyor.topics import TopicPolicy
from tests.api.streams.test_hub import OWNER, event


def test_parse_request_filters_and_resume_point() -> None:
    request = parse_request(QueryParams("job_id=a&job_id=b&topic=t&last_event_id=5-1"))
    assert request.jobs == ("a", "b") and request.topics == ("t",) and request.resume == "5-1"
    assert parse_request(QueryParams("last_event_id=5-1"), "7-0").resume == "7-0"
    assert request.selection(OWNER, TopicPolicy([])).matches(event("1-0", job_id="b"))
    assert not request.selection(OWNER, TopicPolicy([])).matches(event("1-0", job_id="c"))
    for bad in ("last_event_id=yesterday", "job_id=" + "x" * 65, "&".join(f"topic={i}" for i in range(101))):
        with pytest.raises(Refused) as refused:
            parse_request(QueryParams(bad))
        assert refused.value.ws_code == 1008 and refused.value.http_status == 400
