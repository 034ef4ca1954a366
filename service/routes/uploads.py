"""The image task calls as plain ASGI: POST /tasks/{model}/classify and /recognize.

FastAPI solves a multipart request's dependencies, validates the response model and passes the
request through its router: a digits classify cost 2.2 ms of CPU in-process, against 1.0 ms for
the same work done here (bench/README.md). UploadRoute answers these two calls itself, with
Starlette's multipart parser and the bounds FastAPI gives it (1000 files, 1000 fields, 1 MB a
text field); FastAPI still documents both routes in /docs, and its handlers do the same work.
"""

from __future__ import annotations

import re

from starlette.datastructures import QueryParams, UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope

from service.connections import connection_of
from service.errors import BadRequest, Unprocessable
from service.protocol import dumps
from service.routes.answer import JSON, Answer, PlainRoute, number_or_zero
from service.routes.tasks import (
    TOP_K_DEFAULT,
    TOP_K_MAX,
    classify_image,
    recognize_image,
    resolve_task,
)

UPLOAD_PATH = re.compile(r"^/tasks/(?P<model>[^/]+)/(?P<route>classify|recognize)$")
IMAGE_FIELD = "image"


class UploadRoute(PlainRoute):
    """ASGI middleware: the image task calls answered here, everything else passed on."""

    path = UPLOAD_PATH

    async def handle(self, scope: Scope, receive: Receive, match: re.Match[str]) -> Answer:
        model, route = match["model"], match["route"]
        # The cheapest refusals first: a bad query or an unknown model costs no form parsing.
        query = QueryParams(scope["query_string"])
        top_k = _top_k(query.get("top_k")) if route == "classify" else TOP_K_DEFAULT
        entry, runtime = resolve_task(self.registry, model, route, variant=query.get("precision"))
        data = await _upload(Request(scope, receive))
        if data is None:
            return None
        connection = connection_of(scope)
        if route == "classify":
            result = await classify_image(self.inference, entry, runtime, data, top_k, connection)
        else:
            result = await recognize_image(self.inference, entry, runtime, data, connection)
        return [dumps(result)], JSON


def _top_k(text: str | None) -> int:
    """The top_k query parameter: an integer from 1 to TOP_K_MAX (422 otherwise)."""
    if text is None:
        return TOP_K_DEFAULT
    value = number_or_zero(text.strip())
    if not 1 <= value <= TOP_K_MAX:
        raise Unprocessable(f"query.top_k: an integer from 1 to {TOP_K_MAX}, not {text!r}")
    return value


async def _upload(request: Request) -> bytes | None:
    """The bytes of the form's image file (None if the client disconnected first)."""
    try:
        async with request.form() as form:
            upload = form.get(IMAGE_FIELD)
            if not isinstance(upload, UploadFile):
                raise Unprocessable(
                    f"body.{IMAGE_FIELD}: a multipart/form-data file upload named "
                    f"'{IMAGE_FIELD}' is required"
                )
            return await upload.read()
    except MultiPartException as exc:
        raise BadRequest(f"cannot parse the multipart body: {exc.message}") from None
    except ClientDisconnect:
        return None
