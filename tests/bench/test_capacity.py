"""The capacity model (bench/capacity.py): docs/SCALING.md's fleet table is what the script prints from the committed
figures, and the model grows with the rate."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.capacity import DEFAULT_INPUTS, MILLION_PER_MINUTE, fleet, load, main

SCALING = Path(__file__).resolve().parents[2] / "docs" / "SCALING.md"


def test_the_fleet_table_in_the_docs_is_the_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    doc = SCALING.read_text().splitlines()
    start = doc.index(printed[0])
    assert doc[start : start + len(printed)] == printed


def test_more_jobs_need_more_of_every_part() -> None:
    inputs = load(DEFAULT_INPUTS)
    small, large = fleet(inputs, 100), fleet(inputs, MILLION_PER_MINUTE)
    assert large.api_processes > small.api_processes and large.worker_processes > small.worker_processes
    assert large.redis_broker_servers >= small.redis_broker_servers and large.postgres_cores > small.postgres_cores
    assert large.postgres_tps == MILLION_PER_MINUTE * inputs.store_transactions
