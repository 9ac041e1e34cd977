"""Dependencies routes declare, as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from api.state import AppState
from conveyor.store.apikeys import Principal

#: Declares the bearer scheme in the OpenAPI document; :class:`api.guard.Guard` has already checked the key.
_scheme = HTTPBearer(auto_error=False, description="An API key: `conveyor keys create --owner NAME`")


# Both are ``async`` so that FastAPI calls them on the event loop, not through the thread pool.
async def get_state(connection: HTTPConnection) -> AppState:
    state: AppState = connection.state.conveyor
    return state


async def get_principal(
    connection: HTTPConnection, _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_scheme)]
) -> Principal:
    """The caller, as the guard authenticated it (every route but the public ones passes the guard)."""
    principal: Principal = connection.state.principal
    return principal


StateDep = Annotated[AppState, Depends(get_state)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
#: The ``Idempotency-Key`` header of a submission: the same key (per owner) returns the same job.
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", description="Repeat a submission safely: the same key, the same job")
]
