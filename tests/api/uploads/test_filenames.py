"""File-name sanitising and the download header: pure functions, hostile inputs."""

from __future__ import annotations

import pytest

from api.uploads.filenames import MAX_NAME_BYTES, content_disposition, safe_filename


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("/etc/shadow", "shadow"),
        ("C:\\Windows\\system32\\cmd.exe", "cmd.exe"),
        ("a\x00b.txt", "ab.txt"),
        ("line\nbreak.txt", "linebreak.txt"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),
        ("..", None),
        ("   ", None),
        ("", None),
        (None, None),
        ("...hidden...", "hidden"),
        ("caf\u0065\u0301.txt", "caf\u00e9.txt"),
    ],
)
def test_safe_filename(name: str | None, expected: str | None) -> None:
    assert safe_filename(name) == expected


def test_very_long_names_are_cut_to_255_bytes_keeping_the_extension() -> None:
    cut = safe_filename("\u00e9" * 400 + ".tar.gz")
    assert cut is not None and cut.endswith(".gz")
    assert len(cut.encode()) <= MAX_NAME_BYTES
    assert safe_filename("x" * 1000) == "x" * 255


def test_content_disposition_has_an_ascii_fallback() -> None:
    assert content_disposition(None) == "attachment"
    header = content_disposition('r\u00e9sum\u00e9 "final".pdf')
    assert header.startswith('attachment; filename="r?sum? _final_.pdf"'.replace("?", "_"))
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.pdf" in header
