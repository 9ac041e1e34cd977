"""The api as the command-line client sees it: where it is, which key to send, and its answers or one clear error."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from conveyor.settings import Settings

#: Bytes of a file read and sent at a time (and how often the sending bar moves).
CHUNK = 1024 * 1024


class ApiError(Exception):
    """The api refused a request (``status`` is its HTTP status) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.detail}" if self.status else self.detail


def api_url(settings: Settings, given: str | None) -> str:
    """``--api``, else ``CONVEYOR_API_URL``, else the local api ``conveyor run`` serves."""
    if given:
        return given.rstrip("/")
    if settings.api_url:
        return settings.api_url.rstrip("/")
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}.get(settings.api_host, settings.api_host)  # noqa: S104
    return f"http://{host}:{settings.api_port}"


def api_key(settings: Settings, given: str | None) -> str | None:
    """``--key``, else ``CONVEYOR_API_KEY``, else the development key ``conveyor run`` keeps in the data directory."""
    if given:
        return given
    if settings.api_key is not None:
        return settings.api_key.get_secret_value()
    path = settings.data_dir / "dev-api-key"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def detail(response: httpx.Response) -> str:
    """The ``detail`` of an error answer (its text when it is not JSON)."""
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    return detail if isinstance(detail, str) else str(detail)


class Api:
    """An HTTP client for one api and key. Every method raises :class:`ApiError` instead of returning an error."""

    def __init__(self, url: str, key: str | None, timeout: float = 30.0) -> None:
        self.url = url
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of a request (``None`` for an empty one)."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(0, f"cannot reach the api at {self.url}: {exc or type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise ApiError(response.status_code, detail(response))
        return response.json() if response.content else None

    def upload(self, path: Path, sent: Callable[[int], None]) -> dict[str, Any]:
        """Send ``path`` as ``POST /uploads`` (multipart, streamed from disk); ``sent`` is told the bytes of the
        file handed to the connection so far. The 202 body."""
        size = path.stat().st_size
        boundary = secrets.token_hex(16)
        name = quote(path.name, safe=" ._-")
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def body() -> Iterator[bytes]:
            yield head
            done = 0
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    yield chunk
                    done += len(chunk)
                    sent(done)
            yield tail

        headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail)),
        }
        answer: dict[str, Any] = self.call("POST", "/uploads", content=body(), headers=headers)
        return answer
