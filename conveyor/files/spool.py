"""The spool: where the api writes an upload's bytes before a worker stores them."""

from __future__ import annotations

import re
from pathlib import Path

_NAME = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PARTIAL_SUFFIX = ".part"


def spool_path(spool_dir: Path, name: str) -> Path:
    """The spool file called ``name`` (a job id); refuses any other shape of name."""
    if not _NAME.match(name):
        raise ValueError("not a spool name")
    return spool_dir / name
