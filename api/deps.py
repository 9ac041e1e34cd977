"""Dependencies routes declare, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from api.state import AppState


def get_state(connection: HTTPConnection) -> AppState:
    state: AppState = connection.state.conveyor
    return state


StateDep = Annotated[AppState, Depends(get_state)]
