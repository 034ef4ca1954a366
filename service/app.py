"""The app factory: settings in, a FastAPI app out; models load in the background at startup."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from service import __version__
from service.arrivals import ARRIVALS
from service.auth import BearerAuth, load_api_keys
from service.body_limits import BodyLimit
from service.config import Settings
from service.docs import install_docs
from service.errors import install_error_handlers
from service.inference import Inference
from service.metrics import Metrics, RejectedRequests, new_registry
from service.registry import Registry
from service.repository import install_repository
from service.routes import tasks, v2
from service.routes.infer import InferRoute
from service.routes.uploads import UploadRoute

log = logging.getLogger(__name__)


class EdgeApp(FastAPI):
    """FastAPI behind the service's own ASGI layers, which answer the hot calls themselves.

    Those are v2 infer (service.routes.infer) and the image tasks (service.routes.uploads).

    Built in front of the framework rather than as its middleware, so the hot path skips
    FastAPI's and Starlette's per-request layers (5% of the event loop's time on digits under
    load, py-spy); every other request still passes auth and the body limit, then FastAPI.
    """

    edge: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the lifespan stays inside for the app's whole life
            await self.framework(scope, receive, send)
            return
        ARRIVALS.entered()
        try:
            await (self.edge or self.framework)(scope, receive, send)
        finally:
            ARRIVALS.left()

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The FastAPI app itself: routing, docs, error handlers."""
        await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> EdgeApp:
    """A fresh app with its own model registry and metrics registry."""
    registry = Registry(settings)
    prometheus = new_registry()
    metrics = Metrics(prometheus)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry.discover()
        metrics.register_variants(registry, app.state.inference.in_flight)
        # Load in a worker thread so liveness answers (and readiness says 503) while loading.
        loading = asyncio.create_task(asyncio.to_thread(registry.load))
        yield
        if not loading.done():
            log.info("shutting down while models are still loading")
        await asyncio.shield(loading)
        app.state.inference.close()

    app = EdgeApp(
        title="Edge inference service",
        version=__version__,
        description=(
            "FP32 and INT8 ONNX models side by side over the Open Inference Protocol (v2), "
            "with task endpoints for images and sentences. The variant is the model version."
        ),
        lifespan=lifespan,
        # /metrics is this service's telemetry. FastAPI's native OpenTelemetry hook looks up
        # the global providers on every request: 6% of the event loop's time under load (py-spy).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.draining = False  # set on SIGTERM (service/__main__.py): readiness says 503
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.inference = inference = Inference(metrics, settings)
    install_error_handlers(app)
    app.include_router(v2.router)
    app.include_router(tasks.router)
    install_repository(app, metrics)  # load/unload/index, EDGE_REPOSITORY_POLL_SECONDS
    install_docs(app)  # Swagger UI and ReDoc from local assets: /docs works offline

    @app.get("/metrics", include_in_schema=False)
    def scrape() -> Response:
        """Prometheus text format; a plain route, so /metrics answers without a redirect."""
        return Response(generate_latest(prometheus), media_type=CONTENT_TYPE_LATEST)

    # The service's own layers, in front of the framework (EdgeApp): outermost the rejected-
    # request counter (it also sees the body limit's early 413s), then auth and the body limit,
    # then the lean v2 infer and image task routes; every other request goes on to FastAPI.
    edge: ASGIApp = UploadRoute(app.framework, registry=registry, inference=inference)
    edge = InferRoute(edge, registry=registry, inference=inference)
    edge = BodyLimit(
        edge,
        limit=settings.max_request_bytes,
        timeout=settings.body_timeout_seconds,
        # Room for every sentence at its longest, each character \uXXXX-escaped, plus the envelope.
        embed_limit=settings.max_sentences * (settings.max_sentence_chars * 6 + 8) + 1024,
    )
    edge = BearerAuth(edge, keys=load_api_keys(settings), protect_metrics=settings.protect_metrics)
    app.edge = RejectedRequests(edge, counter=metrics.rejected)
    return app
