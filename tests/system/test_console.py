"""The web console in real headless Chromium against ``conveyor run``: sign in, a log notification reaching
``succeeded`` live, a 20 MB upload's two bars, Retry and Cancel, an api killed and restarted mid-job, ``/docs``
offline. Every page must log no JavaScript error and request nothing outside the api's origin (other requests are
aborted, so the pages are checked as they work offline).

Screenshots go to each test's directory; with ``CONVEYOR_SCREENSHOTS=docs/screenshots`` they also replace the
README's (``make screenshots``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ElementHandle, Route

from tests.browser import Tab, by_name, chromium, tab
from tests.devstack import DevStack
from tests.receivers import Reply
from tests.support import wait_until_healthy

pytestmark = [pytest.mark.system, pytest.mark.timeout(180)]

#: What Chromium logs for a request the api could not answer while it was down (the restart test only).
_OUTAGE = (
    "net::ERR_CONNECTION_REFUSED",
    "net::ERR_EMPTY_RESPONSE",
    "net::ERR_CONNECTION_RESET",
    "net::ERR_INCOMPLETE_CHUNKED_ENCODING",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser, dev_stack: DevStack, tmp_path: Path) -> Iterator[Tab]:
    with tab(browser, dev_stack.base_url, tmp_path / "screenshots") as opened:
        yield opened


def sign_in(tab: Tab, key: str) -> None:
    tab.page.goto("/")
    tab.page.fill("#api-key", key)
    tab.page.click("#sign-in-form button[type=submit]")
    tab.page.wait_for_selector("#connection[data-state=live]")


def submit(tab: Tab, body: dict[str, object]) -> str:
    """Submit ``body`` with the console's form; the new job's id."""
    tab.page.select_option("#channel", str(body["channel"]))
    tab.page.fill("#body", json.dumps(body))
    tab.page.click("#submit-button")
    tab.page.wait_for_selector("#submit-result[data-job-id]")
    job_id = tab.page.get_attribute("#submit-result", "data-job-id")
    assert job_id
    tab.page.locator("#submit-result").evaluate("element => element.removeAttribute('data-job-id')")
    return job_id


def row_status(tab: Tab, job_id: str, status: str, timeout: float = 30) -> None:
    tab.page.wait_for_selector(f"#job-{job_id}[data-status={status}]", timeout=timeout * 1000)


def timeline(tab: Tab, job_id: str, done: Callable[[list[str]], bool], timeout: float = 30) -> list[str]:
    """The event types the page saw for the job (its row's ``data-timeline``), once ``done`` holds for them."""
    deadline = time.monotonic() + timeout
    while True:
        seen = (tab.page.get_attribute(f"#job-{job_id}", "data-timeline") or "").split()
        if done(seen):
            return seen
        assert time.monotonic() < deadline, f"the page saw {seen}"
        time.sleep(0.1)


def clean(tab: Tab, allowed: Callable[[str], bool] = lambda _: False) -> None:
    """No JavaScript error (but ``allowed`` ones), nothing requested outside the api's origin."""
    errors = [error for error in tab.errors if not allowed(error)]
    assert not errors, errors
    assert not tab.foreign(), tab.foreign()


def test_sign_in_and_a_log_notification_reaches_succeeded_live(page: Tab, dev_stack: DevStack) -> None:
    sign_in(page, dev_stack.key)
    navigations = []
    page.page.on("framenavigated", lambda frame: navigations.append(frame.url))
    job_id = submit(page, {"channel": "log", "message": "hello from the browser test"})
    row_status(page, job_id, "succeeded")
    # the row's status may come from reading the job; its events arrive all the same
    page.page.wait_for_selector(f"#job-{job_id}[data-timeline$='job.succeeded']")
    assert navigations == [], "the page reloaded"
    page.page.wait_for_selector("#chart:not([data-succeeded='0'])")  # counted in the last minute's chart
    page.page.click(f"#job-{job_id} button.link")
    page.page.wait_for_selector("#detail-attempts:not(:empty)")
    page.screenshot("console-job")
    clean(page)


def test_an_upload_of_20_mb_fills_both_bars(page: Tab, dev_stack: DevStack, tmp_path: Path) -> None:
    big = tmp_path / "twenty.bin"
    big.write_bytes(os.urandom(20 * 1024 * 1024))
    sign_in(page, dev_stack.key)
    page.page.set_input_files("#file", str(big))
    page.page.click("#upload-button")
    # <progress> reflects its value as an attribute (the page's CSP forbids wait_for_function's evaluated predicates)
    page.page.wait_for_selector("#upload-sending[value='100']")
    page.page.wait_for_selector("#upload-ingest[value='100']")
    job_id = page.page.get_attribute("#upload-result", "data-job-id")
    assert job_id is not None
    row_status(page, job_id, "succeeded")
    assert page.page.text_content("#upload-sending-text") == "100 %"
    assert page.page.text_content("#upload-ingest-text") == "100 %"
    page.screenshot("console-upload", readme=True)
    clean(page)


def test_a_failed_webhook_is_listed_and_retry_runs_it_again(page: Tab, dev_stack: DevStack) -> None:
    url = dev_stack.receiver.script("/always-500", Reply(status=500, body=b"down"))
    sign_in(page, dev_stack.key)
    page.page.click("#tab-failed")
    job_id = submit(page, {"channel": "webhook", "url": url, "data": {"n": 1}})
    row_status(page, job_id, "failed")
    assert len(dev_stack.receiver.requests("/always-500")) == 1
    page.screenshot("console-failed", readme=True)

    before_answer: list[ElementHandle] = []

    def answer_late(route: Route) -> None:
        # The retry's answer ("queued") is held until its second attempt has failed and the page has shown that
        # from the stream: the answer comes last and must not move the row back to queued.
        answer = route.fetch()
        dev_stack.receiver.wait_for("/always-500", 2)
        timeline(page, job_id, lambda seen: seen.count("job.failed") == 2)
        row_status(page, job_id, "failed")
        shown = page.page.query_selector(f"#job-{job_id}")
        assert shown is not None
        before_answer.append(shown)
        route.fulfill(response=answer)

    page.page.route("**/retry", answer_late)
    with page.page.expect_response("**/retry"):
        page.page.click(f"#job-{job_id} button.action-retry")
    # The page re-renders the row once it has read the answer: then the row must still say failed.
    page.page.wait_for_function("row => !row.isConnected", arg=before_answer[0])
    assert page.page.get_attribute(f"#job-{job_id}", "data-status") == "failed"
    assert len(dev_stack.receiver.requests("/always-500")) == 2
    seen = timeline(page, job_id, lambda seen: seen.count("job.failed") == 2)
    assert seen[-1] == "job.failed" and "job.queued" in seen[seen.index("job.failed") :], seen
    clean(page)


def test_cancel_on_a_queued_job_shows_cancelled(page: Tab, dev_stack: DevStack) -> None:
    workers = dev_stack.part_pids("worker-notifications")
    assert workers, "no notifications worker found"
    sign_in(page, dev_stack.key)
    for pid in workers:  # no worker takes the notifications queue's jobs meanwhile
        os.kill(pid, signal.SIGSTOP)
    try:
        job_id = submit(page, {"channel": "log", "message": "never sent"})
        row_status(page, job_id, "queued")
        page.page.click(f"#job-{job_id} button.action-cancel")
        row_status(page, job_id, "cancelled")
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    assert dev_stack.job(job_id)["status"] == "cancelled"
    clean(page)


def test_the_page_catches_up_after_the_api_is_killed_and_restarted(page: Tab, dev_stack: DevStack) -> None:
    url = dev_stack.receiver.script("/slow", Reply(status=200, hang=4))
    sign_in(page, dev_stack.key)
    job_id = submit(page, {"channel": "webhook", "url": url, "data": {"slow": True}})
    row_status(page, job_id, "started")
    (api,) = dev_stack.part_pids("api")
    os.kill(api, signal.SIGKILL)
    page.page.wait_for_selector("#connection[data-state=reconnecting]")
    wait_until_healthy(dev_stack.base_url, 60, [dev_stack.run])
    assert dev_stack.part_pids("api") != [api]
    row_status(page, job_id, "succeeded", timeout=60)
    page.page.wait_for_selector("#connection[data-state=live]")
    seen = timeline(page, job_id, lambda seen: "job.succeeded" in seen)
    assert [event for event in seen if event != "job.progress"] == ["job.queued", "job.started", "job.succeeded"], seen
    clean(page, allowed=lambda error: any(code in error for code in _OUTAGE))


def test_a_topic_subscribed_on_the_page_shows_what_is_published(page: Tab, dev_stack: DevStack) -> None:
    sign_in(page, dev_stack.key)
    page.page.fill("#topic", "console-demo")
    page.page.click("#subscribe-button")
    page.page.wait_for_selector("#topic-list:has-text('console-demo')")
    page.page.fill("#topic-message", '{"text": "deploy 42 finished"}')
    page.page.click("#publish-button")
    page.page.wait_for_selector('#topic-messages li:has-text(\'console-demo: {"text":"deploy 42 finished"}\')')
    clean(page)


def test_the_console_is_usable_at_390_px_and_by_keyboard(browser: Browser, dev_stack: DevStack, tmp_path: Path) -> None:
    # under a host name, as behind a proxy (its origin is in CONVEYOR_ALLOWED_ORIGINS: tests/devstack.py)
    with tab(browser, by_name(dev_stack.base_url), tmp_path / "screenshots", width=390, height=844) as narrow:
        narrow.page.goto("/console")
        narrow.page.focus("#api-key")
        narrow.page.keyboard.type(dev_stack.key)
        narrow.page.keyboard.press("Enter")
        narrow.page.wait_for_selector("#connection[data-state=live]")
        narrow.page.focus("#submit-button")
        narrow.page.keyboard.press("Enter")
        narrow.page.wait_for_selector("#submit-result[data-job-id]")
        job_id = narrow.page.get_attribute("#submit-result", "data-job-id")
        narrow.page.wait_for_selector(f"#job-{job_id}[data-status=succeeded]")
        width = narrow.page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width} px wide at 390"
        narrow.screenshot("console-390")
        clean(narrow)


def test_docs_and_redoc_render_the_operations_offline(browser: Browser, dev_stack: DevStack, tmp_path: Path) -> None:
    with tab(browser, by_name(dev_stack.base_url), tmp_path / "screenshots") as page:
        docs_offline(page)


def docs_offline(page: Tab) -> None:
    page.page.goto("/docs")
    page.page.wait_for_selector(".opblock")
    operations = page.page.locator(".opblock").count()
    assert operations >= 20, operations
    assert page.page.locator("[data-path='/jobs/{job_id}/retry']").count() >= 1
    page.screenshot("docs")
    page.page.goto("/redoc")
    page.page.wait_for_selector("[data-section-id^='operation/']", state="attached")
    assert page.page.locator("[data-section-id^='operation/']").count() >= 20
    clean(page)


def test_the_link_conveyor_run_prints_opens_the_console_signed_in(page: Tab, dev_stack: DevStack) -> None:
    (link,) = [
        line.split()[3]
        for line in dev_stack.run.output().splitlines()
        if line.startswith("conveyor ") and " console " in line
    ]
    assert link.endswith(f"/console#key={dev_stack.key}"), link
    page.page.goto(link)
    page.page.wait_for_selector("#connection[data-state=live]")
    assert "#" not in page.page.url, "the key stayed in the address bar"
    clean(page)
