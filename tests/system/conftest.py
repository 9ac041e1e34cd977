"""Fixtures of the whole-stack tests that several modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.devstack import DevStack
from tests.devstack import dev_stack as _dev_stack


@pytest.fixture(scope="session")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """One ``conveyor run`` for the console's and the command-line client's tests (tests/devstack.py)."""
    with _dev_stack(tmp_path_factory.mktemp("devstack")) as running:
        yield running
