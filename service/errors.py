"""Errors modelled once: a base with a status code, one handler, body {"error": message}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with the HTTP status the client should see and a message safe to show."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    """The request is malformed or inconsistent with the model."""

    status_code = 400


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


class ClientGone(ServiceError):
    """The client closed its connection while its request waited: the request is not run.

    499, nginx's "client closed request": nobody reads it, but it counts in the metrics.
    """

    status_code = 499


def error_response(
    status_code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def error_headers(exc: ServiceError) -> dict[str, str] | None:
    """Retry-After on an overload 503, so well-behaved clients back off."""
    return {"retry-after": str(exc.retry_after)} if isinstance(exc, Overloaded) else None


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as {"error": ...}; nothing internal reaches the client."""

    async def service_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return error_response(exc.status_code, exc.message, error_headers(exc))

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
            for err in exc.errors()
        )
        return error_response(422, problems or "invalid request")

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, str(exc.detail))

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error")

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
