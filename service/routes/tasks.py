"""Task endpoints for people and simple clients: images and sentences in, answers out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Query, Request, UploadFile
from pydantic import BaseModel, Field

from service.config import Settings
from service.connections import Connection, connection_of
from service.errors import BadRequest, NotFound, PayloadTooLarge
from service.inference import Inference
from service.manifest import Task
from service.processing import load_pixels, open_image
from service.registry import ModelEntry, Registry
from service.routes.deps import InferenceDep, RegistryDep
from service.runtime import Feed, ModelRuntime

router = APIRouter(prefix="/tasks", tags=["Tasks"])

TOP_K_DEFAULT = 5
TOP_K_MAX = 100
INLINE_DECODE_PIXELS = 64 * 64
"""Images up to this size are decoded on the event loop: ~0.2 ms, about what handing them to
a worker thread costs (digits' 64x64 PNG: 0.24 ms inline, 0.40 ms through a thread)."""

Precision = Annotated[
    str | None,
    Query(description="Variant to run: fp32, int8, … (default: the model's default variant)"),
]
ImageFile = Annotated[
    UploadFile, File(description="A PNG or JPEG image (up to EDGE_MAX_IMAGE_PIXELS pixels)")
]


class LabelScoreOut(BaseModel):
    label: str
    score: float


class ClassifyResponse(BaseModel):
    model: str
    version: str
    labels: list[LabelScoreOut]
    latency_ms: float


class RecognizeResponse(BaseModel):
    model: str
    version: str
    text: str
    confidence: float
    latency_ms: float


class EmbedRequest(BaseModel):
    sentences: list[str] = Field(
        min_length=1,
        examples=[["A camera on the shelf counts the stock.", "The kiosk prints a receipt."]],
    )


class EmbedResponse(BaseModel):
    model: str
    version: str
    dimension: int
    embeddings: list[list[float]]
    latency_ms: float


ROUTE_TASKS: dict[str, Task] = {
    "classify": "image-classification",
    "recognize": "text-recognition",
    "embed": "text-embedding",
}
"""Each task endpoint and the model.json task it serves."""


def resolve_task(
    registry: Registry, model: str, route: str, variant: str | None
) -> tuple[ModelEntry, ModelRuntime]:
    """The model and variant a task call runs on; 404 for a model of another task."""
    entry = registry.entry(model)
    if entry.manifest.task != ROUTE_TASKS[route]:
        raise NotFound(
            f"model '{model}' is a {entry.manifest.task} model and has no '{route}' task"
        )
    return entry, registry.runtime(model, variant)


async def classify_image(
    inference: Inference,
    entry: ModelEntry,
    runtime: ModelRuntime,
    data: bytes,
    top_k: int,
    connection: Connection | None,
) -> dict[str, Any]:
    """An uploaded image's top_k labels, as ClassifyResponse describes them."""

    def labels(output: np.ndarray) -> dict[str, Any]:
        best = entry.processor.classify(output, top_k)[0]
        return {"labels": [{"label": ls.label, "score": ls.score} for ls in best]}

    feed = partial(_image_feed, inference, entry, data)
    return await _run_task(inference, runtime, connection, feed, labels)


async def recognize_image(
    inference: Inference,
    entry: ModelEntry,
    runtime: ModelRuntime,
    data: bytes,
    connection: Connection | None,
) -> dict[str, Any]:
    """The text in an uploaded image, as RecognizeResponse describes it."""

    def text(output: np.ndarray) -> dict[str, Any]:
        result = entry.processor.recognize(output)[0]
        return {"text": result.text, "confidence": result.confidence}

    feed = partial(_image_feed, inference, entry, data)
    return await _run_task(inference, runtime, connection, feed, text)


async def embed_sentences(
    inference: Inference,
    entry: ModelEntry,
    runtime: ModelRuntime,
    sentences: list[str],
    connection: Connection | None,
) -> dict[str, Any]:
    """One embedding per sentence, as EmbedResponse describes them."""

    def vectors(output: np.ndarray) -> dict[str, Any]:
        return {"dimension": int(output.shape[-1]), "embeddings": output.tolist()}

    # Tokenizing a batch of long sentences takes milliseconds: off the event loop.
    feed = partial(asyncio.to_thread, entry.processor.texts_to_feed, sentences)
    return await _run_task(inference, runtime, connection, feed, vectors)


async def _image_feed(inference: Inference, entry: ModelEntry, data: bytes) -> Feed:
    """The upload decoded and preprocessed as model.json says."""
    image = open_image(data, inference.settings.max_image_pixels)  # the header only

    def feed() -> Feed:
        return entry.processor.images_to_feed([load_pixels(image)])

    if image.width * image.height <= INLINE_DECODE_PIXELS:
        return feed()
    return await asyncio.to_thread(feed)  # decoding a large image must not stall the loop


async def _run_task(
    inference: Inference,
    runtime: ModelRuntime,
    connection: Connection | None,
    feed: Callable[[], Awaitable[Feed]],
    fields: Callable[[np.ndarray], dict[str, Any]],
) -> dict[str, Any]:
    """Prepare the feed and run it; the task's `fields` of the first output inside the
    model/version/latency envelope every task answers with."""
    async with inference.track(runtime):
        started = time.perf_counter()
        outputs = await inference.run(runtime, await feed(), connection=connection)
        body = fields(next(iter(outputs.values())))
    return {
        "model": runtime.model,
        "version": runtime.variant,
        **body,
        "latency_ms": (time.perf_counter() - started) * 1000.0,
    }


def check_sentences(sentences: list[str], settings: Settings) -> None:
    """EDGE_MAX_SENTENCES and EDGE_MAX_SENTENCE_CHARS, before any tokenizing."""
    if len(sentences) > settings.max_sentences:
        raise PayloadTooLarge(
            f"{len(sentences)} sentences, over the limit of {settings.max_sentences} per request "
            "(EDGE_MAX_SENTENCES)"
        )
    longest = max((len(sentence) for sentence in sentences), default=0)
    if longest > settings.max_sentence_chars:
        raise PayloadTooLarge(
            f"a sentence of {longest} characters, over the limit of "
            f"{settings.max_sentence_chars} (EDGE_MAX_SENTENCE_CHARS)"
        )
    for index, sentence in enumerate(sentences):
        if not sentence.isascii() and not _encodable(sentence):
            raise BadRequest(
                f"sentences.{index}: not Unicode text (a lone surrogate such as \\ud800)"
            )


def _encodable(text: str) -> bool:
    """JSON's \\ud800 escapes decode to lone surrogates, which no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@router.post("/{model}/classify", response_model=ClassifyResponse, summary="Classify an image")
async def classify(
    registry: RegistryDep,
    inference: InferenceDep,
    request: Request,
    model: str,
    image: ImageFile,
    precision: Precision = None,
    top_k: Annotated[int, Query(ge=1, le=TOP_K_MAX)] = TOP_K_DEFAULT,
) -> dict[str, Any]:
    """Served by service.routes.uploads.UploadRoute (plain ASGI); declared here for /docs."""
    entry, runtime = resolve_task(registry, model, "classify", variant=precision)
    data = await image.read()
    return await classify_image(
        inference, entry, runtime, data, top_k, connection_of(request.scope)
    )


@router.post(
    "/{model}/recognize", response_model=RecognizeResponse, summary="Read the text in an image"
)
async def recognize(
    registry: RegistryDep,
    inference: InferenceDep,
    request: Request,
    model: str,
    image: ImageFile,
    precision: Precision = None,
) -> dict[str, Any]:
    """Served by service.routes.uploads.UploadRoute (plain ASGI); declared here for /docs."""
    entry, runtime = resolve_task(registry, model, "recognize", variant=precision)
    data = await image.read()
    return await recognize_image(inference, entry, runtime, data, connection_of(request.scope))


@router.post("/{model}/embed", response_model=EmbedResponse, summary="Embed sentences")
async def embed(
    registry: RegistryDep,
    inference: InferenceDep,
    request: Request,
    model: str,
    body: EmbedRequest,
    precision: Precision = None,
) -> dict[str, Any]:
    """One embedding vector per sentence, and their dimension."""
    check_sentences(body.sentences, inference.settings)  # the cheapest refusal first
    entry, runtime = resolve_task(registry, model, "embed", variant=precision)
    return await embed_sentences(
        inference, entry, runtime, body.sentences, connection_of(request.scope)
    )
