"""The benchmark report's goal checks and tables (no processes started)."""

from __future__ import annotations

from bench.report import Check, Metric, Report, Row, goals_table, markdown, spread_table


def report(*checks: Check) -> Report:
    metric = Metric("jobs_per_s", "throughput", "jobs/s", True)
    rows = [Row("N=10", "celery", {"jobs_per_s": 100.0}), Row("N=10", "conveyor", {"jobs_per_s": 80.0})]
    return Report("throughput", "test", [metric], rows=rows, baseline="celery", checks=list(checks))


def test_a_check_says_met_or_by_what_factor_it_missed() -> None:
    assert Check("more", 0.9, 0.8, at_least=True).verdict == "met"
    assert Check("more", 0.4, 0.8, at_least=True).verdict == "missed by 2.00×"
    assert Check("less", 3.0, 1.5, at_least=False).verdict == "missed by 2.00×"
    assert Check("less", 1.5, 1.5, at_least=False).verdict == "met"
    assert Check("none", None, 1.0, at_least=True).verdict == "not measured"
    assert Check("zero", 0.0, 1.0, at_least=True).verdict == "missed by inf×"


def test_the_goals_table_lists_every_check_of_every_report() -> None:
    first = report(Check("throughput vs celery", 0.8, 0.8, True, detail="80 vs 100"))
    second = report(Check("lock per job", 1.5, 1.0, False, unit="ms"))
    lines = goals_table([first, second])
    assert lines[2] == "| throughput vs celery | 0.80× | ≥ 0.80× | met | 80 vs 100 |"
    assert lines[3] == "| lock per job | 1.50 ms | ≤ 1.00 ms | missed by 1.50× |  |"
    text = markdown(
        [first, second],
        {"date": "d", "cpu": "c", "cores": 2, "memory_gib": 1, "kernel": "k", "python": "3", "packages": {}},
        "python -m bench",
    )
    assert "## Goals" in text and "| N=10 | conveyor | 80.0 | 0.80× |" in text


def test_the_spread_table_shows_each_run_and_the_range() -> None:
    runs = [[report(Check("ratio", value, 1.0, True))] for value in (1.2, 0.9, 1.1)]
    lines = spread_table(runs)
    assert lines[0] == "| goal | target | run 1 | run 2 | run 3 | median | spread | met in |"
    assert lines[2] == "| ratio | ≥ 1.00× | 1.20× | 0.90× | 1.10× | 1.10 | 0.90–1.20 | 2/3 |"
