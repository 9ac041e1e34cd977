"""Slow and idle clients on real sockets against ``conveyor api`` processes with short limits: an upload below the
minimum rate gets 408 within its window (one above it goes through several windows); 2,000 idle connections are
closed after the idle timeout; clients trickling headers get 408 and are dropped, headers over 64 KiB 431; one
address holds only so many unauthenticated connections (429), and authenticated ones stop counting; event-stream
clients too slow to read get the error message and 1013 (native ``/ws`` by its send timeout and by its ping, the
ASGI route) or a last SSE error."""

from __future__ import annotations

import contextlib
import json
import re
import selectors
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conveyor.ops.redis_server import free_port
from tests.events_support import OWNER, publish, recv
from tests.support import Process, base_env, bearer, conveyor, create_key, redis_server, wait_until_healthy

pytestmark = [pytest.mark.system, pytest.mark.slow, pytest.mark.timeout(300)]

BOUNDARY = "slow-client-boundary"
WINDOW = 2.0
IDLE = 2.0
HEADERS = 2.0


@dataclass
class Api:
    process: Process
    port: int
    key: str
    redis_url: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 60) -> None:
        """Until ``text`` appears ``count`` times in the process's log."""
        deadline = time.monotonic() + timeout
        while self.process.output().count(text) < count:
            assert self.process.alive(), self.process.output()[-3000:]
            assert time.monotonic() < deadline, f"{text!r} not logged {count}x\n{self.process.output()[-3000:]}"
            time.sleep(0.1)


@contextlib.contextmanager
def api(name: str, data_dir: Path, redis_url: str, key: str, **settings: str) -> Iterator[Api]:
    port = free_port()
    env = base_env(data_dir, CONVEYOR_REDIS_URL=redis_url, CONVEYOR_API_PORT=str(port), **settings)
    process = conveyor(name, ["api"], env, data_dir / "logs")
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", 60, [process])
        yield Api(process, port, key, redis_url)
    finally:
        process.stop()


@dataclass
class Apis:
    edge: Api
    capped: Api
    asgi: Api


@pytest.fixture(scope="module")
def apis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apis]:
    data_dir = tmp_path_factory.mktemp("slow")
    streams = {"CONVEYOR_WS_SEND_QUEUE": "100000", "CONVEYOR_RATE_LIMIT_BURST": "5000"}
    with redis_server(data_dir / "redis") as redis_url:
        key = create_key(base_env(data_dir), OWNER)
        with (
            api(
                "api-edge",
                data_dir,
                redis_url,
                key,
                CONVEYOR_KEEPALIVE_TIMEOUT_SECONDS=str(IDLE),
                CONVEYOR_HEADER_TIMEOUT_SECONDS=str(HEADERS),
                CONVEYOR_MAX_CONNECTIONS_PER_IP="0",
                CONVEYOR_MIN_UPLOAD_BYTES_PER_SECOND="1000",
                CONVEYOR_UPLOAD_RATE_WINDOW_SECONDS=str(WINDOW),
                CONVEYOR_STREAM_SEND_TIMEOUT_SECONDS="1",
                **streams,
            ) as edge,
            api(
                "api-capped",
                data_dir,
                redis_url,
                key,
                CONVEYOR_MAX_CONNECTIONS_PER_IP="20",
                CONVEYOR_KEEPALIVE_TIMEOUT_SECONDS="120",
                CONVEYOR_HEADER_TIMEOUT_SECONDS="120",
                CONVEYOR_STREAM_SEND_TIMEOUT_SECONDS="120",
                CONVEYOR_WS_PING_INTERVAL="1",
                CONVEYOR_WS_PING_TIMEOUT="1",
                **streams,
            ) as capped,
            api(
                "api-asgi",
                data_dir,
                redis_url,
                key,
                CONVEYOR_WS_NATIVE="false",
                CONVEYOR_STREAM_SEND_TIMEOUT_SECONDS="1",
                **streams,
            ) as asgi,  # fmt: skip
        ):
            yield Apis(edge, capped, asgi)


def answer(sock: socket.socket, timeout: float = 30) -> tuple[int, bytes]:
    """Read one HTTP response (head and a ``Content-Length`` body): its status and body."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        rest += chunk
    return int(head.split(b" ", 2)[1]), rest[:length]


def closed_by_server(sock: socket.socket, timeout: float = 30) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def upload_head(key: str, length: int) -> bytes:
    return (
        f"POST /uploads HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {key}\r\nContent-Length: {length}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="slow.bin"\r\n\r\n'
    ).encode()


def test_an_upload_below_the_minimum_rate_gets_408_within_its_window(apis: Apis) -> None:
    with socket.create_connection(("127.0.0.1", apis.edge.port), timeout=30) as sock:
        sock.sendall(upload_head(apis.edge.key, 100_000))
        started = time.monotonic()
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ)
        while not selector.select(timeout=0.2):  # 5 bytes/s, until the api answers
            with contextlib.suppress(OSError):
                sock.send(b"x")
            assert time.monotonic() - started < 60, "no answer to an upload at 5 bytes/s"
        status, body = answer(sock)
    elapsed = time.monotonic() - started
    assert status == 408 and "1000 bytes/s" in json.loads(body)["detail"]
    assert elapsed < WINDOW + 10, f"answered after {elapsed:.1f}s, the window is {WINDOW}s"


def test_an_upload_above_the_minimum_rate_goes_through_several_windows(apis: Apis) -> None:
    content = b"y" * 20_000
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    head = upload_head(apis.edge.key, 0)
    length = len(head.partition(b"\r\n\r\n")[2]) + len(content) + len(tail)
    with socket.create_connection(("127.0.0.1", apis.edge.port), timeout=30) as sock:
        sock.sendall(upload_head(apis.edge.key, length))
        for start in range(0, len(content), 500):  # 5,000 bytes/s for 4 s: two windows and more
            sock.sendall(content[start : start + 500])
            time.sleep(0.1)
        sock.sendall(tail)
        status, body = answer(sock)
    assert status == 202, body


def test_two_thousand_idle_connections_are_closed_after_the_idle_timeout(apis: Apis) -> None:
    sockets = [socket.create_connection(("127.0.0.1", apis.edge.port), timeout=30) for _ in range(2000)]
    selector = selectors.DefaultSelector()
    try:
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        open_ = set(sockets)
        deadline = time.monotonic() + 60
        while open_:
            assert time.monotonic() < deadline, f"{len(open_)} idle connections still open after 60 s"
            for selected, _ in selector.select(timeout=1):
                idle = selected.fileobj
                assert isinstance(idle, socket.socket)
                try:
                    data = idle.recv(4096)
                except ConnectionResetError:
                    data = b""
                assert data == b"", f"an idle connection got {data!r}"
                selector.unregister(idle)
                open_.discard(idle)
    finally:
        selector.close()
        for sock in sockets:
            sock.close()
    with socket.create_connection(("127.0.0.1", apis.edge.port), timeout=30) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: api\r\n\r\n")
        assert answer(sock)[0] == 200


def test_clients_trickling_headers_get_408_and_are_dropped(apis: Apis) -> None:
    sockets = [socket.create_connection(("127.0.0.1", apis.edge.port), timeout=30) for _ in range(300)]
    replies: dict[socket.socket, bytes] = {}
    try:
        for sock in sockets:
            sock.sendall(b"GET /jobs HTTP/1.1\r\nHost: api\r\n")
            sock.setblocking(False)
        deadline = time.monotonic() + 60
        while len(replies) < len(sockets):
            assert time.monotonic() < deadline, f"{len(sockets) - len(replies)} tricklers still held after 60 s"
            for sock in sockets:
                if sock in replies:
                    continue
                with contextlib.suppress(BlockingIOError, OSError):
                    sock.send(b"X")  # one byte of a header name, now and then: the headers never end
                with contextlib.suppress(BlockingIOError):
                    try:
                        replies[sock] = sock.recv(65536)
                    except ConnectionResetError:
                        replies[sock] = b""
            time.sleep(0.25)
        for sock, reply in replies.items():
            assert reply.startswith(b"HTTP/1.1 408"), reply
            sock.setblocking(True)
            assert closed_by_server(sock)
    finally:
        for sock in sockets:
            sock.close()


def test_headers_over_64_kib_get_431_and_the_connection_is_closed(apis: Apis) -> None:
    with socket.create_connection(("127.0.0.1", apis.capped.port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: api\r\n")
        with contextlib.suppress(OSError):  # the api may close while the rest is on its way
            for n in range(100):
                sock.sendall(f"X-Filler-{n}: {'f' * 1000}\r\n".encode())
                time.sleep(0.005)  # separate reads: each counts
        status, body = answer(sock)
        assert status == 431 and "65536 bytes" in json.loads(body)["detail"]
        assert closed_by_server(sock)


def _get(sock: socket.socket, path: str, key: str | None = None) -> int:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: api\r\n{auth}\r\n".encode())
    return answer(sock)[0]


def _status_of_health(port: int) -> int:
    """``GET /health`` on a new connection: 200, or 429 when the connection was refused (whatever was sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            return _get(sock, "/health")
        except OSError:  # refused and closed before the request went out
            return 429


def test_one_address_holds_a_capped_number_of_unauthenticated_connections(apis: Apis) -> None:
    port, key = apis.capped.port, apis.capped.key
    held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(20)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as refused:
            status, body = answer(refused)
            assert status == 429 and "too many connections" in json.loads(body)["detail"]
            assert closed_by_server(refused)
        for sock in held[:5]:
            assert _get(sock, "/jobs?limit=1", key) == 200  # authenticated: no longer counted
        more = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(5)]
        held += more
        for sock in more:
            assert _get(sock, "/health") == 200
        assert _status_of_health(port) == 429
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 30
    while _status_of_health(port) != 200:  # closed connections stop counting once the api sees them go
        assert time.monotonic() < deadline, "closed connections still count"
        time.sleep(0.1)


def _slow_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def _slow_websocket(target: Api) -> ClientConnection:
    """A client that reads nothing until told: its library stops reading the socket once one message waits."""
    return connect(
        f"{target.ws_url}/ws",
        sock=_slow_socket(target.port),
        open_timeout=10,
        max_queue=1,
        max_size=2**20,
        additional_headers=bearer(target.key),
    )


def _read_to_the_close(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    got: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            got.append(recv(ws, 30))
    return got, closed.value.rcvd.code if closed.value.rcvd is not None else None


@pytest.mark.parametrize("which", ["edge", "asgi", "capped"], ids=["native-send-timeout", "asgi-route", "native-ping"])
def test_a_websocket_client_too_slow_to_read_gets_the_error_then_1013(apis: Apis, which: str) -> None:
    target: Api = getattr(apis, which)
    logged = target.process.output().count("event stream too slow")
    with _slow_websocket(target) as ws:
        ids = publish(target.redis_url, 150, size=64 * 1024, job=f"slow-{which}-")
        target.wait_for_log("event stream too slow", logged + 1)
        got, code = _read_to_the_close(ws)
    assert code == 1013, got[-1:]
    assert got[-1]["type"] == "error" and "too slow" in got[-1]["detail"]
    events = [m["event_id"] for m in got[:-1]]
    assert events == ids[: len(events)] and len(events) < len(ids)


def _dechunk(raw: bytes) -> bytes:
    body, rest = b"", raw
    while rest:
        size, _, rest = rest.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            break
        body, rest = body + rest[:length], rest[length + 2 :]
    return body


def test_an_sse_client_too_slow_to_read_gets_a_last_error_message(apis: Apis) -> None:
    edge = apis.edge
    logged = edge.process.output().count("event stream too slow; ended")
    with _slow_socket(edge.port) as sock:
        sock.sendall(f"GET /events HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {edge.key}\r\n\r\n".encode())
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += sock.recv(4096)
        assert raw.startswith(b"HTTP/1.1 200"), raw
        ids = publish(edge.redis_url, 150, size=64 * 1024, job="slow-sse-")
        edge.wait_for_log("event stream too slow; ended", logged + 1)
        sock.settimeout(30)
        while not raw.endswith(b"\r\n0\r\n\r\n"):  # the response's last chunk
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            raw += chunk
    stream = _dechunk(raw.partition(b"\r\n\r\n")[2]).decode()
    data = [json.loads(line[6:]) for line in stream.split("\n") if line.startswith("data: ")]
    assert data[-1]["type"] == "error" and "too slow" in data[-1]["detail"]
    events = [m["event_id"] for m in data[:-1]]
    assert events == ids[: len(events)] and len(events) < len(ids)
