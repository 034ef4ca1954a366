"""Errors modelled once: a status code per kind, one mapping to what clients see, {"error": ...}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with the HTTP status the client should see and a message safe to show."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def headers(self) -> dict[str, str] | None:
        """Headers the answer carries besides its JSON body (None for most errors)."""
        return None


class BadRequest(ServiceError):
    """The request is malformed or inconsistent with the model."""

    status_code = 400


class Unauthorized(ServiceError):
    """No bearer token, or one that matches no key; the challenge says which (RFC 6750)."""

    status_code = 401

    def __init__(self, message: str, challenge: str) -> None:
        super().__init__(message)
        self.challenge = challenge

    @property
    def headers(self) -> dict[str, str] | None:
        return {"www-authenticate": self.challenge}


class NotFound(ServiceError):
    """Unknown model or variant."""

    status_code = 404


class PayloadTooLarge(ServiceError):
    """The request body is over the configured limit."""

    status_code = 413


class Unprocessable(ServiceError):
    """A well-formed request whose fields are not what the route takes (FastAPI's 422)."""

    status_code = 422


class UnsupportedMediaType(ServiceError):
    """An upload in a format the service does not decode (task images: PNG or JPEG)."""

    status_code = 415


class InferenceFailed(ServiceError):
    """ONNX Runtime failed on an input the model's spec accepts: the server's fault."""

    status_code = 500


class NotReady(ServiceError):
    """The model (or the server) is still loading, or failed to load."""

    status_code = 503


class Overloaded(ServiceError):
    """The variant's queue is full or the request waited past its deadline: retry soon."""

    status_code = 503
    retry_after = 1

    @property
    def headers(self) -> dict[str, str] | None:
        """Retry-After, so well-behaved clients back off."""
        return {"retry-after": str(self.retry_after)}


class ClientGone(ServiceError):
    """The client closed its connection while its request waited: the request is not run.

    499, nginx's "client closed request": nobody reads it, but it counts in the metrics.
    """

    status_code = 499


def error_response(exc: BaseException) -> JSONResponse:
    """The one error body, {"error": message}, as an ASGI response for FastAPI and middleware."""
    status_code, message, headers = client_view(exc)
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def client_view(exc: BaseException) -> tuple[int, str, dict[str, str] | None]:
    """Status, message and headers a client sees for an exception: the one mapping of them all.

    Starlette's HTTPException counts as modelled: the body limit raises it for its 413 and 408
    because FastAPI's form parsing passes HTTPException on and turns anything else into a 400.
    Anything else is the server's fault: a 500 that says nothing internal (log it first).
    """
    if isinstance(exc, ServiceError):
        return exc.status_code, exc.message, exc.headers
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail), None
    if isinstance(exc, ClientDisconnect):
        return ClientGone.status_code, "the client closed the connection mid-body", None
    return 500, "internal server error", None


def is_modelled(exc: BaseException) -> bool:
    """Whether an exception is one of the errors a client is told about (not a server bug)."""
    return isinstance(exc, ServiceError | HTTPException | ClientDisconnect)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as {"error": ...}; nothing internal reaches the client."""

    async def modelled_error(request: Request, exc: Exception) -> JSONResponse:
        if not is_modelled(exc):
            log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(exc)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
            for err in exc.errors()
        )
        return error_response(Unprocessable(problems or "invalid request"))

    app.add_exception_handler(RequestValidationError, validation_error)
    # Starlette re-raises what reaches the Exception handler (uvicorn logs it as a crash): a
    # client that hung up mid-body (a route's request.body()) is handled before that.
    for kind in (ServiceError, HTTPException, ClientDisconnect, Exception):
        app.add_exception_handler(kind, modelled_error)
