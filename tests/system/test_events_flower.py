"""Workers also announce job progress as Celery ``task-progress`` events, so Flower's event stream carries them."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from conveyor.queue.app import create_celery
from conveyor.settings import Settings
from tests.conftest import Stack
from tests.events_support import wait_finished

pytestmark = pytest.mark.system


def test_upload_progress_reaches_the_celery_event_stream(stack: Stack) -> None:
    app = create_celery(Settings(_env_file=None, redis_url=stack.redis_url))  # type: ignore[call-arg]
    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    done = threading.Event()

    def capture() -> None:
        with app.connection() as connection:
            receiver = app.events.Receiver(connection, handlers={"task-progress": seen.append})
            consume_ready = receiver.on_consume_ready

            def on_ready(*args: Any, **kwargs: Any) -> None:
                consume_ready(*args, **kwargs)
                ready.set()

            receiver.on_consume_ready = on_ready
            receiver.should_stop = False

            def stop_when_done() -> None:
                done.wait()
                receiver.should_stop = True

            stopper = threading.Thread(target=stop_when_done)
            stopper.start()
            receiver.capture(limit=None, timeout=None, wakeup=False)
            stopper.join()

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        response = httpx.post(
            f"{stack.base_url}/uploads", files={"file": ("p.bin", b"p" * 300_000)}, headers=stack.headers, timeout=30
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        wait_finished(stack.base_url, [job_id], headers=stack.headers)
        for _ in range(50):
            if any(event.get("job_id") == job_id for event in seen):
                break
            done.wait(0.1)
    finally:
        done.set()
        thread.join(5)
        app.close()
    mine = [event for event in seen if event.get("job_id") == job_id]
    assert mine, f"no task-progress event for {job_id} (saw {len(seen)})"
    assert mine[0]["uuid"] == job_id and 0 <= mine[0]["progress"] <= 100
