"""Flower's application internals, as ``conveyor.ops.flower`` relies on them.

``conveyor/ops/flower.py`` does not run Flower's command line: it builds ``flower.app.Flower(capp=, options=,
io_loop=, **flower.urls.settings)`` itself, sets the tornado options ``basic_auth`` and ``purge_offline_workers``
(Flower reads the latter from the global ``tornado.options.options``), and serves Flower's application behind its
:class:`~conveyor.ops.flower.Gate` (a tornado ``Router`` that calls ``Application.find_handler``).

When a test here fails, Flower changed one of those: adapt ``conveyor/ops/flower.py`` (and check
``tests/system/test_flower_auth.py``), then raise the upper bound of ``flower`` in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets
from tornado.options import options
from tornado.web import Application

from conveyor.ops.flower import PURGE_OFFLINE_WORKERS, BasicAuth, Gate, locked_flower
from conveyor.settings import Settings

AUTH = ("contracts", "flower-contract-password")


def test_flower_takes_the_arguments_we_pass() -> None:
    from flower.app import Flower
    from flower.urls import settings as flower_settings

    parameters = inspect.signature(Flower.__init__).parameters
    for name in ("capp", "options", "io_loop"):
        assert name in parameters, f"Flower() lost {name}="
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()), "Flower() takes no **settings"
    assert issubclass(Flower, Application)
    assert isinstance(flower_settings, dict) and "cookie_secret" in flower_settings


def test_the_options_we_set_are_flowers() -> None:
    import flower.options  # noqa: F401 - defines Flower's tornado options
    from flower.views import workers

    defined = options.as_dict()
    assert "basic_auth" in defined and "purge_offline_workers" in defined
    assert workers.options is options, "Flower no longer reads purge_offline_workers from tornado's global options"


class LiveFlower:
    """``locked_flower()`` served on a loopback port by a tornado HTTP server in a thread of this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self.app: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.url = ""
        self.thread = threading.Thread(target=self._run, daemon=True, name="flower")

    def _run(self) -> None:
        loop = self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self.app, gate, _feed = locked_flower(self.settings, BasicAuth(*AUTH), IOLoop.current())
            assert isinstance(gate, Gate)
            server = HTTPServer(gate)
            sockets = bind_sockets(0, address="127.0.0.1")
            server.add_sockets(sockets)
            self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        except BaseException as exc:
            self.failed = exc
            self.ready.set()
            loop.close()
            raise
        self.ready.set()
        try:
            loop.run_forever()
        finally:
            server.stop()
            loop.run_until_complete(server.close_all_connections())
            self.app.executor.shutdown(wait=False)
            loop.close()

    def __enter__(self) -> LiveFlower:
        self.thread.start()
        assert self.ready.wait(30), "Flower did not build"
        if self.failed is not None:
            raise AssertionError(f"locked_flower() failed: {self.failed!r}") from self.failed
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(15)


@pytest.fixture
def flower(settings: Settings) -> Iterator[LiveFlower]:
    with LiveFlower(settings) as live:
        yield live


def test_locked_flower_builds_with_our_options(flower: LiveFlower) -> None:
    assert flower.app.options.basic_auth == BasicAuth(*AUTH).flower_option()
    assert flower.app.options.purge_offline_workers == PURGE_OFFLINE_WORKERS


def test_flowers_own_basic_auth_accepts_what_the_gate_accepts(flower: LiveFlower) -> None:
    with httpx.Client(base_url=flower.url, timeout=10) as client:
        assert client.get("/healthcheck").text == "OK"
        assert client.get("/workers").status_code == 401
        page = client.get("/workers", auth=AUTH)
        assert page.status_code == 200, page.text[:500]
        assert "<html" in page.text.lower()


def test_flower_is_the_minor_version_we_checked() -> None:
    """Conveyor replaces some of Flower's handlers and overrides parts of its application (the tests here say which):
    a new minor version must be checked against them before pyproject.toml lets it in."""
    from importlib.metadata import version

    assert version("flower").split(".")[:2] == ["2", "2"]


def test_the_broker_parts_we_override_are_flowers() -> None:
    """``conveyor.ops.flower_broker`` overrides ``Flower.broker_uri``/``broker_uri_with_password`` (cached properties
    read by ``BaseHandler.get_broker``), ``Flower.update_workers`` and ``get_active_queue_names`` of the two broker
    handlers; Flower's ``Broker`` must still pick its Redis client for a ``redis://`` URL."""
    from functools import cached_property

    from flower.api.tasks import GetQueueLengths
    from flower.app import Flower
    from flower.utils.broker import Broker, Redis
    from flower.views import BaseHandler
    from flower.views.broker import BrokerView

    assert isinstance(Flower.__dict__["broker_uri"], cached_property)
    assert isinstance(Flower.__dict__["broker_uri_with_password"], cached_property)
    assert "workername" in inspect.signature(Flower.update_workers).parameters
    assert "broker_uri_with_password" in inspect.getsource(BaseHandler.get_broker)
    for handler in (BrokerView, GetQueueLengths):
        assert issubclass(handler, BaseHandler)
        assert "get_active_queue_names" in inspect.getsource(handler.get)
    assert isinstance(Broker("redis://:secret@127.0.0.1:1/0"), Redis)


def test_replaced_handlers_are_conveyors(flower: LiveFlower) -> None:
    from conveyor.ops.flower_broker import HANDLERS, ConveyorFlower

    assert isinstance(flower.app, ConveyorFlower)
    assert flower.app.broker_uri.startswith("redis://")
    assert set(HANDLERS) == {"/broker", "/api/queues/length"}
    with httpx.Client(base_url=flower.url, timeout=10) as client:
        assert client.get("/api/queues/length").status_code == 401
        lengths = client.get("/api/queues/length", auth=AUTH)
        assert lengths.status_code == 200, lengths.text
        assert [queue["name"] for queue in lengths.json()["active_queues"]][:3] == [
            "uploads",
            "notifications",
            "housekeeping",
        ]
