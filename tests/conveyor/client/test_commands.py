"""The client's arguments: notification bodies from flags, plain progress lines, where the api and key come from."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydantic import SecretStr

from conveyor.client.commands import UsageError, submit_body
from conveyor.client.display import Display
from conveyor.client.http import api_key, api_url
from conveyor.ops.cli import parser
from conveyor.settings import Settings


def _body(*argv: str) -> dict[str, object]:
    return submit_body(parser().parse_args(["submit", *argv]))


def test_flags_make_the_body_of_each_channel() -> None:
    assert _body("log", "--message", "hi") == {"channel": "log", "message": "hi"}
    assert _body("webhook", "--url", "https://example.com/h", "--data", '{"a": 1}') == {
        "channel": "webhook",
        "url": "https://example.com/h",
        "data": {"a": 1},
    }
    assert _body("email", "--to", "a@example.com", "--to", "b@example.com", "--subject", "s", "--text", "t") == {
        "channel": "email",
        "to": ["a@example.com", "b@example.com"],
        "subject": "s",
        "text": "t",
    }
    assert _body("websocket", "--topic", "t", "--message", '{"x": 1}')["message"] == {"x": 1}
    assert _body("websocket", "--topic", "t", "--message", "plain words")["message"] == "plain words"
    assert _body("http", "--url", "https://example.com", "--header", "X-A=1=2")["headers"] == {"X-A": "1=2"}


def test_json_body_with_flags_over_it() -> None:
    body = _body("log", "--json", '{"message": "from json", "level": "warning"}', "--message", "flag wins")
    assert body == {"channel": "log", "message": "flag wins", "level": "warning"}


@pytest.mark.parametrize(
    "argv", [("log", "--json", "{nope"), ("log", "--json", "[1]"), ("log", "--data", "x"), ("http", "--header", "X")]
)
def test_unusable_arguments_are_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises(UsageError):
        _body(*argv)


def test_piped_progress_is_a_line_per_status_and_per_ten_percent() -> None:
    out = io.StringIO()
    display = Display(out, terminal=False)
    display.add("f", "sending f.bin", 1_000_000, in_bytes=True)
    for done in range(0, 1_000_001, 50_000):
        display.update("f", done)
    display.update("f", 1_000_000, "sent")
    display.add("j", "processing f.bin")
    display.update("j", 0, "queued")
    display.update("j", 55.0, "started")
    display.update("j", 100, "succeeded")
    lines = out.getvalue().splitlines()
    assert lines == [
        *(f"sending f.bin {n}% ({n / 100:.1f} of 1.0 MB)" for n in range(0, 101, 10)),
        "sending f.bin sent",
        "processing f.bin 0%",
        "processing f.bin queued",
        "processing f.bin 50%",
        "processing f.bin started",
        "processing f.bin 100%",
        "processing f.bin succeeded",
    ]
    assert "\x1b" not in out.getvalue()


def test_the_api_and_key_come_from_flags_settings_or_the_development_key_file(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, api_port=8123)  # type: ignore[call-arg]
    assert api_url(settings, None) == "http://127.0.0.1:8123"
    assert api_url(settings, "http://elsewhere:1/") == "http://elsewhere:1"
    assert api_key(settings, None) is None
    (tmp_path / "dev-api-key").write_text("cvk_dev\n")
    assert api_key(settings, None) == "cvk_dev"
    configured = settings.model_copy(update={"api_key": SecretStr("cvk_env"), "api_url": "http://configured:2"})
    assert api_key(configured, None) == "cvk_env" and api_key(configured, "cvk_flag") == "cvk_flag"
    assert api_url(configured, None) == "http://configured:2"
