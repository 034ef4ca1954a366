"""Requests the HTTP server has started that have not reached the app yet (event loop only).

uvicorn creates one task per request as its bytes arrive and runs them in the next turn of the
event loop, one after the other. A lane deciding whether to run a tiny request at once or to
batch it with others in this turn asks here whether others are about to come.
"""

from __future__ import annotations


class Arrivals:
    """A count of request tasks created but not yet started, never below zero."""

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        self.waiting = 0

    def started(self) -> None:
        """uvicorn created a request's task (it runs in a later turn of the loop)."""
        self.waiting += 1

    def entered(self) -> None:
        """A request reached the app: one fewer on its way."""
        if self.waiting:
            self.waiting -= 1


ARRIVALS = Arrivals()
