"""What the client shows while it works: progress bars on a terminal (rich), plain lines when piped."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

MB = 1_000_000
#: A piped percentage is written at each multiple of this step (and at 100).
PLAIN_STEP = 10


@dataclass
class _Bar:
    label: str
    total: float
    in_bytes: bool
    started: float = field(default_factory=time.monotonic)
    done: float = 0.0
    status: str = ""
    shown_step: int = -1
    task: TaskID | None = None


class Display:
    """Bars keyed by name: each has a label, a total (bytes or percent), how far it is and a status word.

    On a terminal they are live rich progress bars; otherwise every status change is a line
    (``LABEL STATUS``) and progress is a line at each 10 % step (``LABEL 40%``), so logs and pipes read well.
    """

    def __init__(self, out: TextIO | None = None, terminal: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.terminal = self.out.isatty() if terminal is None else terminal
        self.bars: dict[str, _Bar] = {}
        self.progress: Progress | None = None
        if self.terminal:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=None),
                TaskProgressColumn(),
                TextColumn("{task.fields[detail]}"),
                console=Console(file=self.out),
                refresh_per_second=8,
            )
            self.progress.start()

    def add(self, key: str, label: str, total: float = 100.0, in_bytes: bool = False) -> None:
        """A new bar (a file of ``total`` bytes when ``in_bytes``, else a percentage)."""
        bar = _Bar(label, total or 1, in_bytes)
        self.bars[key] = bar
        if self.progress is not None:
            bar.task = self.progress.add_task(label, total=bar.total, detail="")

    def update(self, key: str, done: float | None = None, status: str | None = None) -> None:
        """Move bar ``key`` to ``done`` and/or set its status word."""
        bar = self.bars[key]
        changed = status is not None and status != bar.status
        if done is not None:
            bar.done = min(done, bar.total)
        if status is not None:
            bar.status = status
        if self.progress is not None and bar.task is not None:
            self.progress.update(bar.task, completed=bar.done, detail=self._detail(bar))
            return
        step = int(100 * bar.done / bar.total) // PLAIN_STEP * PLAIN_STEP
        if done is not None and step > bar.shown_step:
            bar.shown_step = step
            extra = f" ({bar.done / MB:.1f} of {bar.total / MB:.1f} MB)" if bar.in_bytes else ""
            self.line(f"{bar.label} {step}%{extra}")
        if changed:
            self.line(f"{bar.label} {bar.status}")

    def _detail(self, bar: _Bar) -> str:
        if not bar.in_bytes:
            return bar.status
        seconds = max(time.monotonic() - bar.started, 1e-6)
        rate = f"{bar.done / seconds / MB:.1f} MB/s"
        return f"{bar.done / MB:.1f}/{bar.total / MB:.1f} MB {rate} {bar.status}".rstrip()

    def line(self, text: str) -> None:
        """A line of text, above the bars on a terminal."""
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            self.out.write(text + "\n")
            self.out.flush()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.refresh()
            self.progress.stop()
