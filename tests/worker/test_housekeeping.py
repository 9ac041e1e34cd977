"""Housekeeping: stale spool files go, live jobs' files stay."""

from __future__ import annotations

import os
import time

from conveyor.ids import new_id
from tests.worker.conftest import make_job
from worker.housekeeping import purge_spool
from worker.runtime import Runtime


def test_purge_spool_keeps_live_jobs_files(rt: Runtime) -> None:
    spool = rt.settings.spool_dir
    spool.mkdir(parents=True, exist_ok=True)
    live = make_job(rt, kind="upload")
    orphan, partial, fresh = new_id(), new_id() + ".part", new_id()
    old = time.time() - rt.settings.spool_max_age_seconds - 10
    for name in (live.job_id, orphan, partial, fresh):
        (spool / name).write_bytes(b"x")
    for name in (live.job_id, orphan, partial):
        os.utime(spool / name, (old, old))
    assert purge_spool(rt) == 2
    assert sorted(p.name for p in spool.iterdir()) == sorted([live.job_id, fresh])
