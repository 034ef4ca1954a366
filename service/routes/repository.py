"""Triton's model-repository extension over HTTP: index, load, unload (service.repository)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request

from service.errors import BadRequest
from service.routes.deps import RepositoryDep

router = APIRouter(prefix="/v2/repository", tags=["Model repository (Triton extension)"])


async def _body(request: Request) -> dict[str, Any]:
    """The optional JSON body ({} when empty); anything else is a 400."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON ({exc.msg})") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


@router.post("/index", summary="Every model in the repository with its state and reason")
async def index(repository: RepositoryDep, request: Request) -> list[dict[str, str]]:
    """Triton's states: READY, LOADING, UNAVAILABLE (with the reason); {"ready": true} filters."""
    body = await _body(request)
    return await repository.index(ready_only=bool(body.get("ready", False)))


@router.post("/models/{model}/load", summary="Load or reload a model from its folder")
async def load(repository: RepositoryDep, request: Request, model: str) -> dict[str, Any]:
    """Re-reads <repository>/<model>; a version that fails to load never replaces a good one."""
    body = await _body(request)
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("parameters must be an object")
    if any(key == "config" or key.startswith("file:") for key in parameters):
        raise BadRequest(
            "config and file overrides are not supported: build the model into the repository "
            "folder with build_models, then load it"
        )
    await repository.load(model)
    return {}


@router.post("/models/{model}/unload", summary="Unload a model once its requests finish")
async def unload(repository: RepositoryDep, request: Request, model: str) -> dict[str, Any]:
    """Requests in flight on the model finish first; then it is not ready (404)."""
    await _body(request)
    await repository.unload(model)
    return {}
