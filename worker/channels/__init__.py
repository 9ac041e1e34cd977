"""Delivery channels. Each sends one notification and says how it went; ``worker.notify`` records the attempt,
keeps the effect ledger and turns failures into retries.

A channel returns :class:`Sent` or raises :class:`DeliveryError`, transient (another attempt may succeed) or
permanent (it would not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sent:
    """A delivery the peer accepted: its answer, and what goes into the job's result."""

    status_code: int | None = None
    reply: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class DeliveryError(Exception):
    """A delivery that did not happen. ``retry_after`` is the peer's own wish (seconds), if it said."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        status_code: int | None = None,
        reply: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.status_code = status_code
        self.reply = reply
        self.retry_after = retry_after
