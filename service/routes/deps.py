"""Request-scoped access to the app's registry and inference path."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.inference import Inference
from service.registry import Registry


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def _inference(request: Request) -> Inference:
    inference: Inference = request.app.state.inference
    return inference


RegistryDep = Annotated[Registry, Depends(_registry)]
InferenceDep = Annotated[Inference, Depends(_inference)]
