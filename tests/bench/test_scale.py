"""The scaling benchmark's reading of a step: its limiting resource, and its chart."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from bench import jobstack
from bench.scale import cores, limit, svg


def meter(idle: float, seconds: float = 10.0, **used: float) -> jobstack.Meter:
    measured = jobstack.Meter(pids={}, redis_url="redis://unused")
    measured.seconds, measured.idle, measured.used = seconds, idle, dict(used)
    return measured


def test_the_machine_is_the_limit_when_it_has_no_idle_time() -> None:
    m = meter(0.02, api=2.0, worker=8.0, worker2=7.0, redis=1.0, client=0.5)
    assert cores(m)["workers"] == 1.5
    assert limit(m, cores(m), 2).startswith("the machine's")


def test_a_single_threaded_part_near_a_full_core_is_the_limit() -> None:
    m = meter(0.4, api=9.0, worker=3.0, redis=1.0)
    assert limit(m, cores(m), 1).startswith("the api process")


def test_a_worker_process_near_a_full_core_is_its_own_limit() -> None:
    m = meter(0.3, api=2.0, worker=9.5, redis=1.0)
    assert limit(m, cores(m), 1).startswith("each worker process")
    m = meter(0.5, api=2.0, worker=4.0, worker2=4.0, redis=1.0)
    assert limit(m, cores(m), 2).startswith("no part saturated")


def test_the_chart_is_an_svg_with_both_lines() -> None:
    root = ET.fromstring(svg([(1, 350.0), (2, 560.0), (3, 610.0)], "title"))
    assert root.tag.endswith("svg")
    lines = [element for element in root.iter() if element.tag.endswith("polyline")]
    assert len(lines) == 2 and all(len(line.get("points", "").split()) == 3 for line in lines)
