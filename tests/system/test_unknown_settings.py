"""A misspelled ``CONVEYOR_`` variable is not silently ignored: the process a person starts warns, naming the
setting it probably meant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import base_env

pytestmark = pytest.mark.system


def test_a_misspelled_setting_is_warned_about_with_the_closest_name(tmp_path: Path) -> None:
    env = base_env(tmp_path / "var", CONVEYOR_API_PROT="1")
    env.pop("CONVEYOR_PROCESS_NAME", None)
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "migrate"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if "unknown setting" in line]
    assert len(warning) == 1 and "CONVEYOR_API_PROT" in warning[0] and "did_you_mean=CONVEYOR_API_PORT" in warning[0]
