"""Whether a request's client is still connected, so a lane skips work nobody waits for.

Under overload, clients time out and close their connections while their requests wait at a
lane's gate or in its queue; running those would spend a core on answers nobody reads, and
delay the clients still waiting. service.http puts uvicorn's request cycle into each request's
ASGI scope; its `disconnected` flag turns true when the connection closes before the answer.
"""

from __future__ import annotations

from typing import Protocol

from starlette.types import Scope

SCOPE_KEY = "edge.connection"
"""The ASGI extension service.http adds to each scope: {"connection": the request's cycle}."""


class Connection(Protocol):
    """What a lane reads of a request's connection (uvicorn's RequestResponseCycle has it)."""

    disconnected: bool


def connection_of(scope: Scope) -> Connection | None:
    """The request's connection, where the server put one in the scope (None elsewhere)."""
    extension = (scope.get("extensions") or {}).get(SCOPE_KEY)
    return extension["connection"] if extension else None
