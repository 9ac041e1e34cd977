"""Flower's ``/api/workers`` in step with the workers Flower hears.

``/api/workers`` answers from Flower's ``inspect`` cache, filled once as Flower starts: a worker that started later
was missing (``{}`` when Flower started first) until someone asked with ``?refresh=1``. :class:`WorkerWatch`
inspects each worker whose heartbeat Flower hears and its cache lacks, and drops from the cache a worker Flower
hears no more, so the API lists the live workers, each under its own node name.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from conveyor import logs

log = logs.get("conveyor.ops.flower_workers")

#: Seconds between two looks at Flower's workers (workers beat every 2 s).
WATCH_SECONDS: Final = 1.0
#: Seconds before a worker that did not answer an inspection is asked again.
RETRY_SECONDS: Final = 10.0


class WorkerWatch:
    """Keeps ``flower.inspector.workers`` (what ``/api/workers`` lists) to the workers alive in Flower's state.

    Runs on Flower's event loop. :meth:`run` is supervised: an unexpected error is logged with its traceback and
    the watch goes on."""

    def __init__(self, flower: Any, interval: float = WATCH_SECONDS) -> None:
        self.flower = flower
        self.interval = interval
        self._asked: dict[str, float] = {}

    def step(self, now: float | None = None) -> list[str]:
        """Drop the inspected workers Flower knows to be offline, start inspecting the live ones it lacks; returns
        the names of those asked."""
        now = time.monotonic() if now is None else now
        heard = dict(self.flower.events.state.workers.items())
        inspected = self.flower.inspector.workers
        for name in [name for name in list(inspected) if name in heard and not heard[name].alive]:
            inspected.pop(name, None)
            self._asked.pop(name, None)
        asked = []
        for name, worker in heard.items():
            if worker.alive and name not in inspected and now - self._asked.get(name, -RETRY_SECONDS) >= RETRY_SECONDS:
                self._asked[name] = now
                self.flower.update_workers(workername=name)
                asked.append(name)
        return asked

    async def run(self) -> None:
        """Watch until cancelled; never returns otherwise."""
        while True:
            try:
                for name in self.step():
                    log.info("worker inspected", worker=name)
            except Exception:  # supervised: one bad look must not stop the next
                log.exception("worker watch failed; going on")
            await asyncio.sleep(self.interval)
