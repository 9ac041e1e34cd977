"""Spool file names."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.files.spool import spool_path
from conveyor.ids import new_id


def test_spool_names_are_job_ids_only(tmp_path: Path) -> None:
    assert spool_path(tmp_path, new_id()).parent == tmp_path
    for bad in ("../x", "a/b", "", "01a207a2-fb69-7023-9247-baa030751cb3/../x"):
        with pytest.raises(ValueError):
            spool_path(tmp_path, bad)
