"""Results of a benchmark run: rows of figures, ratios to a baseline measured in the same run, the machine."""

from __future__ import annotations

import json
import os
import platform
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


@dataclass
class Row:
    """The figures of one subject (``conveyor`` or a baseline) at one setting (e.g. ``N=1000``)."""

    setting: str
    subject: str
    values: dict[str, float | None]
    notes: str = ""


@dataclass
class Report:
    """What one benchmark returns: its rows, which subject is the baseline, and goals to check."""

    name: str
    description: str
    metrics: list[Metric]
    rows: list[Row] = field(default_factory=list)
    baseline: str = "baseline"
    goals: list[str] = field(default_factory=list)
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
        ratios = report.metrics if any(r.subject == report.baseline for r in report.rows) else []
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
