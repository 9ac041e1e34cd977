"""The ingest benchmark's baseline: hash a file the way the worker does, timed from inside the process.

``python -m bench.hash_file PATH`` reads PATH in 1 MiB blocks into ``hashlib.sha256`` (the worker's loop in
``worker/ingest.py``, the same OpenSSL implementation) and prints the seconds that took, measured in the process
like the worker's ``job.started`` → ``job.succeeded``, so neither side counts an interpreter's start.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

CHUNK = 1024 * 1024


def hash_seconds(path: Path) -> float:
    """Seconds to read and sha256 ``path``."""
    started = time.perf_counter()
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    digest.hexdigest()
    return time.perf_counter() - started


if __name__ == "__main__":
    print(f"{hash_seconds(Path(sys.argv[1])):.6f}")
