"""The HTTP requests in the process: those on their way into the app, and those inside it.

uvicorn creates one task per request as its bytes arrive and runs them in the next turn of the
event loop, one after the other. A lane deciding whether to run a tiny request at once or to
batch it with others in this turn asks here whether others are about to come; the HTTP
protocol (service.http), whether an answer is the only one it owes and so can leave at once.
Event loop only.
"""

from __future__ import annotations


class Arrivals:
    """Request tasks created but not started (`waiting`), and requests in the app (`inside`)."""

    __slots__ = ("inside", "waiting")

    def __init__(self) -> None:
        self.waiting = 0
        self.inside = 0

    def started(self) -> None:
        """uvicorn created a request's task (it runs in a later turn of the loop)."""
        self.waiting += 1

    def entered(self) -> None:
        """A request reached the app: one fewer on its way."""
        if self.waiting:
            self.waiting -= 1
        self.inside += 1

    def left(self) -> None:
        """A request's app call returned (answered, failed, or its client gone)."""
        self.inside -= 1

    @property
    def alone(self) -> bool:
        """One request in the app and none on its way: nothing to wait for."""
        return self.inside <= 1 and not self.waiting


ARRIVALS = Arrivals()
