"""Secret files and private directories, on a real file system."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conveyor.private import private_dir, restrict, secret


def test_a_secret_is_made_once_whole_and_private_even_when_raced(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "flower-password"
    values = iter(range(1000))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: secret(path, lambda: f"value-{next(values)}"), range(32)))
    assert len({text for text, _new in results}) == 1
    assert sum(new for _text, new in results) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == results[0][0]
    assert [p.name for p in path.parent.iterdir()] == ["flower-password"]  # no temporary file left
    assert secret(path, lambda: "another") == (results[0][0], False)


def test_a_private_directory_is_for_its_owner_only(tmp_path: Path) -> None:
    shared = tmp_path / "var"
    shared.mkdir(mode=0o755)
    private_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700


def test_restrict_makes_existing_files_private_and_skips_missing_ones(tmp_path: Path) -> None:
    old = tmp_path / "conveyor.db"
    old.write_text("rows")
    old.chmod(0o644)
    restrict([old, tmp_path / "missing"])
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
