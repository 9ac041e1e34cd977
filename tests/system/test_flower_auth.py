"""Flower and its /metrics without credentials: 401 on every path of Flower's URL table (and on paths it lacks),
whatever the method, with no credentials or wrong ones; the right ones get through; the password is never logged."""

from __future__ import annotations

import base64
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from flower.urls import handlers as flower_handlers
from tornado.routing import URLSpec
from tornado.web import StaticFileHandler
from tornado.websocket import WebSocketHandler
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from conveyor.ops.redis_server import free_port, wait_for_port
from tests.support import Process, base_env, conveyor

pytestmark = pytest.mark.system

USER = "conveyor"
PASSWORD = "flower-auth-" + secrets.token_urlsafe(12)
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "TRACE")
#: Paths that are not in Flower 2's table but must be refused too: Flower 1's websocket and event stream,
#: near-misses of the public /healthcheck, and odd spellings of /metrics.
EXTRA_PATHS = (
    "/update-dashboard",
    "/api/task/events/task-succeeded/",
    "/healthcheck/",
    "/healthcheck%2f",
    "//healthcheck",
    "/metrics/",
    "//metrics",
    "/metrics?format=prometheus",
    "/%6detrics",
)


@dataclass(frozen=True)
class Route:
    pattern: str
    handler: type[Any]
    path: str


def _concrete(pattern: str, handler: type[Any], kwargs: dict[str, Any]) -> str:
    """A path that the pattern matches: groups filled with ``x`` (or a real file for static files)."""
    if pattern == ".*":
        return "/no-such-page"
    fill = "x"
    if issubclass(handler, StaticFileHandler):
        root = Path(kwargs["path"])
        fill = min(path for path in root.rglob("*") if path.is_file()).relative_to(root).as_posix()
    return re.sub(r"\(\.[*+]\)", fill, pattern).replace("/?", "")


def flower_routes() -> list[Route]:
    """One concrete path for every entry of the installed Flower's URL table (what ``conveyor flower`` serves)."""
    routes = []
    for entry in flower_handlers:
        if isinstance(entry, URLSpec):
            assert entry.regex is not None
            pattern, handler, kwargs = entry.regex.pattern.removesuffix("$"), entry.handler_class, entry.kwargs
        else:
            pattern, handler, kwargs = entry[0], entry[1], entry[2] if len(entry) > 2 else {}
        routes.append(Route(pattern, handler, _concrete(pattern, handler, kwargs or {})))
    return routes


ROUTES = flower_routes()
PATHS = [route.path for route in ROUTES]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


#: Credentials that must not open Flower: wrong password, wrong user, the right ones spoiled in each way.
WRONG = {
    "wrong password": basic(USER, "wrong"),
    "wrong user": basic("admin", PASSWORD),
    "password as user": basic(PASSWORD, ""),
    "password prefix": basic(USER, PASSWORD[:-1]),
    "password plus": basic(USER, PASSWORD + "x"),
    "bearer": {"Authorization": f"Bearer {PASSWORD}"},
    "raw pair": {"Authorization": f"Basic {USER}:{PASSWORD}"},
    "bad base64": {"Authorization": "Basic !!!"},
    "no token": {"Authorization": "Basic"},
}


@dataclass
class Flower:
    url: str
    process: Process


@pytest.fixture(scope="module")
def flower(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Flower]:
    """One ``conveyor flower`` process for the module, at DEBUG, with a known password."""
    data_dir = tmp_path_factory.mktemp("flower-auth")
    port = free_port()
    env = base_env(
        data_dir,
        CONVEYOR_REDIS_URL=redis_url,
        CONVEYOR_FLOWER_PORT=str(port),
        CONVEYOR_FLOWER_PASSWORD=PASSWORD,
        CONVEYOR_LOG_LEVEL="DEBUG",
    )
    process = conveyor("flower", ["flower"], env, data_dir / "logs")
    try:
        wait_for_port(port, 30, process.popen)
        yield Flower(f"http://127.0.0.1:{port}", process)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(flower: Flower) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=flower.url, timeout=10) as http:
        yield http


def assert_refused(response: httpx.Response) -> None:
    request = f"{response.request.method} {response.request.url}"
    assert response.status_code == 401, f"{request}: {response.status_code} {response.text[:200]}"
    assert response.headers["WWW-Authenticate"] == 'Basic realm="flower"', request
    assert "flower_" not in response.text and "celery" not in response.text.lower(), request


def test_each_path_reaches_its_own_route() -> None:
    """The concrete paths really stand for their routes (so the tests below cover the whole table)."""
    assert len(ROUTES) >= 30 and "/metrics" in PATHS and "/api/tasks" in PATHS
    for route in ROUTES:
        first = next(other for other in ROUTES if re.fullmatch(other.pattern, route.path))
        assert first.pattern == route.pattern, f"{route.path} is served by {first.pattern}, not {route.pattern}"


@pytest.mark.parametrize("path", [p for p in PATHS if p != "/healthcheck"] + list(EXTRA_PATHS))
def test_every_path_without_credentials_is_refused(client: httpx.Client, path: str) -> None:
    for method in METHODS:
        assert_refused(client.request(method, path))
    for name, headers in WRONG.items():
        for method in ("GET", "POST"):
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401, f"{name}: {method} {path} -> {response.status_code}"


def test_metrics_need_credentials_and_then_are_prometheus_text(client: httpx.Client) -> None:
    """The acceptance test: Flower's /metrics (open in Flower even with --basic-auth) is 401 without credentials."""
    assert_refused(client.get("/metrics"))
    assert_refused(client.get("/metrics", headers=basic(USER, "wrong")))
    response = client.get("/metrics", headers=basic(USER, PASSWORD))
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE flower_events_total counter" in response.text


@pytest.mark.parametrize("route", ROUTES, ids=[route.pattern for route in ROUTES])
def test_every_route_opens_with_the_right_credentials(client: httpx.Client, route: Route) -> None:
    response = client.get(route.path, headers=basic(USER, PASSWORD))
    # Past the gate Flower answers for itself: 200, or 404/400/405/503 for a made-up id, a GET to a POST-only
    # route or a feature Conveyor's broker lacks; never 401/403 (Flower's own check agrees) and never a crash.
    assert response.status_code not in (401, 403, 500), f"{route.path}: {response.status_code} {response.text[:300]}"
    if route.path in ("/", "/workers", "/tasks", "/api/workers", "/api/tasks", "/metrics", "/healthcheck"):
        assert response.status_code == 200
    if issubclass(route.handler, StaticFileHandler):
        assert response.status_code == 200 and response.content


def test_healthcheck_is_the_one_public_path_and_says_only_ok(client: httpx.Client) -> None:
    response = client.get("/healthcheck")
    assert response.status_code == 200 and response.text == "OK"
    assert_refused(client.post("/healthcheck"))


def test_websocket_handshakes_without_credentials_are_refused(flower: Flower) -> None:
    """Flower 2 has no websocket route (Flower 1 had /update-dashboard); any handshake meets the gate first."""
    websocket_paths = [route.path for route in ROUTES if issubclass(route.handler, WebSocketHandler)]
    for path in ["/update-dashboard", "/", "/metrics", *websocket_paths]:
        for headers in ({}, basic(USER, "wrong")):
            with pytest.raises(InvalidStatus) as refused:
                connect(flower.url.replace("http://", "ws://") + path, additional_headers=headers, open_timeout=5)
            assert refused.value.response.status_code == 401, path


def test_the_password_is_in_no_log_line_and_not_on_the_command_line(client: httpx.Client, flower: Flower) -> None:
    assert client.get("/api/tasks", headers=basic(USER, PASSWORD)).status_code == 200
    output = flower.process.output()
    assert "level=debug" in output  # DEBUG really was on
    token = basic(USER, PASSWORD)["Authorization"].split()[1]
    for secret in (PASSWORD, token):
        assert secret not in output
    assert PASSWORD.encode() not in Path(f"/proc/{flower.process.pid}/cmdline").read_bytes()


def test_a_generated_password_locks_flower_in_development(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    env = base_env(tmp_path / "var", CONVEYOR_REDIS_URL=redis_url, CONVEYOR_FLOWER_PORT=str(port))
    process = conveyor("flower", ["flower"], env, tmp_path / "logs")
    try:
        wait_for_port(port, 30, process.popen)
        password = (tmp_path / "var" / "flower-password").read_text().strip()
        url = f"http://127.0.0.1:{port}/metrics"
        assert_refused(httpx.get(url, timeout=10))
        assert httpx.get(url, headers=basic(USER, password), timeout=10).status_code == 200
    finally:
        process.stop()
    assert password not in process.output()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"CONVEYOR_ENVIRONMENT": "production"}, "CONVEYOR_FLOWER_PASSWORD must be set"),
        ({"CONVEYOR_FLOWER_USER": "a:b", "CONVEYOR_FLOWER_PASSWORD": "pw"}, "without ':'"),
        ({"CONVEYOR_FLOWER_PASSWORD": "pässword"}, "printable ASCII"),
    ],
    ids=["production without password", "user with colon", "non-ascii password"],
)
def test_flower_does_not_start_without_usable_credentials(
    tmp_path: Path, redis_url: str, settings: dict[str, str], message: str
) -> None:
    port = free_port()
    env = base_env(tmp_path / "var", CONVEYOR_REDIS_URL=redis_url, CONVEYOR_FLOWER_PORT=str(port), **settings)
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "flower"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "pässword" not in done.stderr
