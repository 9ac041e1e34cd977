"""Results of a benchmark run: rows of figures, ratios to a baseline measured in the same run, the machine."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


@dataclass
class Metric:
    """One measured quantity: its column name, unit, and whether more is better (for ratios to the baseline)."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    #: Whether the table shows this metric's ratio to the baseline.
    compare: bool = True


@dataclass
class Row:
    """The figures of one subject (``conveyor`` or a baseline) at one setting (e.g. ``N=1000``)."""

    setting: str
    subject: str
    values: dict[str, float | None]
    notes: str = ""


@dataclass
class Check:
    """One goal checked against a measured value: ``value`` must be at least (``at_least``) or at most ``target``."""

    goal: str
    value: float | None
    target: float
    at_least: bool
    unit: str = "×"
    detail: str = ""

    @property
    def met(self) -> bool | None:
        """Whether the goal is met (``None`` when nothing was measured)."""
        if self.value is None:
            return None
        return self.value >= self.target if self.at_least else self.value <= self.target

    @property
    def verdict(self) -> str:
        """``met``, ``missed by F×`` (the factor the value is off by), or ``not measured``."""
        if self.value is None:
            return "not measured"
        if self.met:
            return "met"
        off = (self.target / self.value if self.value else float("inf")) if self.at_least else self.value / self.target
        return f"missed by {off:.2f}×"


@dataclass
class Report:
    """What one benchmark returns: its rows, which subject is the baseline, and goals to check."""

    name: str
    description: str
    metrics: list[Metric]
    rows: list[Row] = field(default_factory=list)
    baseline: str = "baseline"
    goals: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def ratio(self, row: Row, metric: Metric) -> float | None:
        """``row``'s value over the baseline's at the same setting (>1 means better when higher is better)."""
        base = next((r for r in self.rows if r.setting == row.setting and r.subject == self.baseline), None)
        if base is None or row.subject == self.baseline:
            return None
        mine, theirs = row.values.get(metric.key), base.values.get(metric.key)
        if mine is None or theirs is None or theirs == 0:
            return None
        return mine / theirs


def machine() -> dict[str, Any]:
    """A description of the machine and software the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kib = 0
    packages: dict[str, str | None] = {}
    for name in ("uvicorn", "websockets", "starlette", "fastapi", "redis", "uvloop", "pydantic"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": packages,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _measured(check: Check) -> str:
    return "–" if check.value is None else f"{_fmt(check.value)}{' ' if check.unit != '×' else ''}{check.unit}"


def _target(check: Check) -> str:
    return f"{'≥' if check.at_least else '≤'} {_fmt(check.target)}{' ' if check.unit != '×' else ''}{check.unit}"


def goals_table(reports: list[Report]) -> list[str]:
    """Every report's checks as one Markdown table: goal, measured, target, verdict, detail (empty if none)."""
    checks = [check for report in reports for check in report.checks]
    if not checks:
        return []
    lines = ["| goal | measured | target | verdict | detail |", "|---|---|---|---|---|"]
    lines += [f"| {c.goal} | {_measured(c)} | {_target(c)} | {c.verdict} | {c.detail} |" for c in checks]
    return lines


def spread_table(runs: list[list[Report]]) -> list[str]:
    """Each check over several runs: every run's value, min–max, and in how many runs it was met."""
    if not runs or not any(report.checks for report in runs[0]):
        return []
    lines = [
        "| goal | target | " + " | ".join(f"run {n + 1}" for n in range(len(runs))) + " | median | spread | met in |"
    ]
    lines.append("|---|---|" + "---|" * len(runs) + "---|---|---|")
    firsts = [check for report in runs[0] for check in report.checks]
    for index, check in enumerate(firsts):
        same = [[c for r in run for c in r.checks][index] for run in runs]
        values = [c.value for c in same if c.value is not None]
        spread = f"{_fmt(min(values))}–{_fmt(max(values))}" if values else "–"
        middle = _fmt(statistics.median(values)) if values else "–"
        met = sum(1 for c in same if c.met)
        cells = [_measured(c) for c in same]
        lines.append(
            f"| {check.goal} | {_target(check)} | "
            + " | ".join(cells)
            + f" | {middle} | {spread} | {met}/{len(runs)} |"
        )
    return lines


def markdown(reports: list[Report], host: dict[str, Any], command: str) -> str:
    """The run as Markdown: machine, then per benchmark a table with ratios to the baseline."""
    packages = ", ".join(f"{k} {v}" for k, v in host["packages"].items() if v)
    lines = [
        "# Benchmark results",
        "",
        f"`{command}` on {host['date']}",
        "",
        f"Machine: {host['cpu']}, {host['cores']} cores, {host['memory_gib']} GiB, Linux {host['kernel']}, "
        f"Python {host['python']}; {packages}.",
    ]
    for report in reports:
        lines += ["", f"## {report.name}", "", report.description, ""]
        header = ["setting", "subject"] + [f"{m.label} ({m.unit})" if m.unit else m.label for m in report.metrics]
        has_baseline = any(r.subject == report.baseline for r in report.rows)
        ratios = [m for m in report.metrics if m.compare] if has_baseline else []
        header += [f"{m.label} vs {report.baseline}" for m in ratios]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in report.rows:
            cells = [row.setting, row.subject] + [_fmt(row.values.get(m.key)) for m in report.metrics]
            for metric in ratios:
                ratio = report.ratio(row, metric)
                cells.append("–" if ratio is None else f"{ratio:.2f}×")
            lines.append("| " + " | ".join(cells) + " |")
        if report.goals:
            lines += ["", "Goals:", ""] + [f"- {goal}" for goal in report.goals]
        if report.findings:
            lines += ["", "Notes:", ""] + [f"- {finding}" for finding in report.findings]
        lines += ["", f"({report.seconds:.0f} s)"]
    table = goals_table(reports)
    if table:
        lines += ["", "## Goals", "", *table]
    return "\n".join(lines) + "\n"


def write(reports: list[Report], host: dict[str, Any], command: str, out_dir: Path) -> tuple[Path, Path]:
    """Write ``results-<time>.md`` and ``.json`` (and ``latest.*`` copies) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = markdown(reports, host, command)
    data = {
        "command": command,
        "machine": host,
        "benchmarks": [
            {
                **{k: v for k, v in asdict(r).items() if k != "rows"},
                "rows": [{**asdict(row), "ratios": {m.key: r.ratio(row, m) for m in r.metrics}} for row in r.rows],
            }
            for r in reports
        ],
    }
    md, js = out_dir / f"results-{stamp}.md", out_dir / f"results-{stamp}.json"
    md.write_text(text)
    js.write_text(json.dumps(data, indent=2))
    (out_dir / "latest.md").write_text(text)
    (out_dir / "latest.json").write_text(json.dumps(data, indent=2))
    return md, js
