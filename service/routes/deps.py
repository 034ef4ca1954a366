"""Request-scoped access to the app's registry, inference path and repository.

async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per
dependency per request for what is an attribute read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.inference import Inference
from service.registry import Registry
from service.repository import Repository


async def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


async def _inference(request: Request) -> Inference:
    inference: Inference = request.app.state.inference
    return inference


async def _repository(request: Request) -> Repository:
    repository: Repository = request.app.state.repository
    return repository


RegistryDep = Annotated[Registry, Depends(_registry)]
InferenceDep = Annotated[Inference, Depends(_inference)]
RepositoryDep = Annotated[Repository, Depends(_repository)]
