"""Job ids."""

from __future__ import annotations

import uuid

from conveyor.ids import new_id


def test_ids_are_uuid7_and_sort_by_time() -> None:
    ids = []
    for _ in range(50):
        ids.append(new_id())
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert ids == sorted(ids)
    assert len(set(ids)) == 50
