"""How the plain-ASGI routes answer: one 200 or one {"error": ...}, sent in two messages.

The routes that skip FastAPI (service.routes.infer, service.routes.uploads) still owe clients
the error shape and statuses FastAPI's handlers give (service.errors); they are written here
once instead of in each route.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.types import Scope, Send

from service.errors import ServiceError, error_headers
from service.protocol import dumps

log = logging.getLogger(__name__)

RawHeaders = list[tuple[bytes, bytes]]
JSON: RawHeaders = [(b"content-type", b"application/json")]

Produce = Callable[[], Awaitable[tuple[bytes, RawHeaders] | None]]
"""A route's work: the body and headers of its 200, or None when the client has gone."""


async def answer(scope: Scope, send: Send, produce: Produce) -> None:
    """Run `produce` and send its 200, or the error it raised as {"error": ...}."""
    extra: dict[str, str] | None = None
    try:
        result = await produce()
        if result is None:
            return  # the client went away; nothing to answer
        status = 200
        content, headers = result
    except ServiceError as exc:
        status, content, headers = exc.status_code, dumps({"error": exc.message}), JSON
        extra = error_headers(exc)
    except HTTPException as exc:  # the body limit's 413 or 408 while the body streams in
        status, content, headers = exc.status_code, dumps({"error": str(exc.detail)}), JSON
    except Exception:
        log.exception("unhandled error on %s %s", scope["method"], scope["path"])
        status, content, headers = 500, dumps({"error": "internal server error"}), JSON
    if extra:
        headers = [*headers, *((k.encode(), v.encode()) for k, v in extra.items())]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(content)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": content})
