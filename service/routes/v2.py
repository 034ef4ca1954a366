"""Open Inference Protocol v2 REST routes, plus Triton's config/stats/repository extensions."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response

from service import __version__
from service.agreement import agreement
from service.bounds import check_finite_inputs, check_json_outputs
from service.connections import connection_of
from service.errors import NotReady
from service.inference import Inference
from service.manifest import TensorSpec
from service.onbox import FP32
from service.protocol import (
    DATATYPES,
    HEADER_LENGTH,
    DecodedRequest,
    InferenceRequest,
    InferenceResponse,
    dumps,
    json_data,
)
from service.routes.deps import InferenceDep, RegistryDep
from service.routes.infer import body_headers, decode_body, infer_response
from service.runtime import ModelRuntime, State

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

EXTENSIONS = [
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "model_repository",
    "compare",
    "classification",
]
# Triton's config names each v2 datatype TYPE_<name>, except BYTES (TYPE_STRING).
_TRITON_TYPES = {
    datatype: "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}" for datatype in DATATYPES
}


def _inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic's schema with its local `#/$defs/...` refs replaced by the definitions.

    Inside the OpenAPI document those refs would point at the document's root, where no
    `$defs` exists, so clients and fuzzers could not resolve the infer body.
    """
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items() if key != "$defs"}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_defs(InferenceRequest.model_json_schema())},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"JSON header of {HEADER_LENGTH} bytes, then binary tensors",
            },
        },
    }
}


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    """The server's name, version and the protocol extensions it implements."""
    return {"name": "edge-inference", "version": __version__, "extensions": EXTENSIONS}


@router.get("/health/live", summary="Liveness")
async def live() -> dict[str, bool]:
    """200 while the process serves HTTP; it never waits behind inference."""
    return {"live": True}


@router.get(
    "/health/ready",
    summary="Readiness: every variant loaded (EDGE_STRICT_READINESS=false: one per model)",
)
async def ready(registry: RegistryDep, request: Request) -> dict[str, Any]:
    """200 lists variants that failed (degraded mode); 503 names what failed and what loads."""
    if request.app.state.draining:
        raise NotReady("not ready: shutting down, finishing the requests in flight")
    failed = [
        {"model": rt.model, "version": rt.variant, "reason": rt.error or "failed"}
        for rt in registry.failures()
    ]
    if not registry.ready:
        problems = [f"{row['model']}/{row['version']} failed: {row['reason']}" for row in failed]
        loading = [
            rt.name
            for rt in registry.all_runtimes()
            if rt.state in (State.REGISTERED, State.LOADING)
        ]
        if loading:
            problems.append(f"{', '.join(loading)} still loading")
        raise NotReady(f"not ready: {'; '.join(problems) or 'no variant loaded'}")
    return {"ready": True, "failed": failed}


@router.get("/models", summary="Every model with its versions (variants) and their state")
async def list_models(registry: RegistryDep) -> dict[str, Any]:
    """Each model's task, default version and the state of every version."""
    return {
        "models": [
            {
                "name": entry.name,
                "task": entry.manifest.task,
                "default_version": entry.default_variant,
                "versions": {v: rt.state.value for v, rt in entry.runtimes.items()},
            }
            for entry in registry.models.values()
        ]
    }


@router.get("/models/stats", summary="Statistics of every variant (Triton extension)")
async def all_stats(registry: RegistryDep) -> dict[str, Any]:
    """Triton's statistics for every loaded version of every model."""
    return {"model_stats": [_stats(rt) for rt in registry.all_runtimes()]}


@router.get("/models/{model}", summary="Model metadata (default version)")
@router.get("/models/{model}/versions/{version}", summary="Model metadata")
async def model_metadata(
    registry: RegistryDep, model: str, version: str | None = None
) -> dict[str, Any]:
    """Inputs, outputs, and why the default version is the default (with latency here)."""
    entry = registry.entry(model)
    registry.runtime(model, version, ready=False)
    return {
        "name": entry.name,
        "versions": list(entry.runtimes),
        "platform": "onnxruntime_onnx",
        "inputs": [spec.model_dump() for spec in entry.manifest.inputs],
        "outputs": [spec.model_dump() for spec in entry.manifest.outputs],
        "parameters": {
            "task": entry.manifest.task,
            "default_version": entry.default_variant,
            "default_reason": entry.default_reason,
            # Batch-1 latency here (after warm-up) beside the build machine's figure.
            "onbox_latency_ms": {name: round(ms, 4) for name, ms in entry.onbox_ms.items()},
            "build_latency_ms": {
                name: variant.latency_ms.get("batch_1")
                for name, variant in entry.manifest.variants.items()
                if name in entry.runtimes
            },
        },
    }


@router.get("/models/{model}/ready", summary="Model readiness (default version)")
@router.get("/models/{model}/versions/{version}/ready", summary="Model readiness")
async def model_ready(
    registry: RegistryDep, model: str, version: str | None = None
) -> dict[str, Any]:
    """200 when the version can serve; 503 (with the reason) while loading or failed."""
    runtime = registry.runtime(model, version)
    return {"name": model, "version": runtime.variant, "ready": True}


@router.get("/models/{model}/config", summary="Model configuration (Triton extension)")
@router.get("/models/{model}/versions/{version}/config", summary="Model configuration")
async def model_config(
    registry: RegistryDep, inference: InferenceDep, model: str, version: str | None = None
) -> dict[str, Any]:
    """Triton's model configuration, dynamic batching included where this service batches."""
    entry = registry.entry(model)
    runtime = registry.runtime(model, version, ready=False)
    max_batch = inference.settings.max_batch_size
    batch_rows = inference.batch_rows(runtime)

    def tensors(specs: list[TensorSpec]) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "data_type": _TRITON_TYPES.get(s.datatype, s.datatype),
             "dims": s.shape[1:]}
            for s in specs
        ]  # fmt: skip

    config: dict[str, Any] = {
        "name": entry.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": max_batch,
        "input": tensors(entry.manifest.inputs),
        "output": tensors(entry.manifest.outputs),
        "version_policy": {"specific": {"versions": list(entry.runtimes)}},
        "parameters": {"default_version": {"string_value": entry.default_variant}},
    }
    if batch_rows > 1:  # Triton's field; zero delay: queued requests only, no waiting window
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": 0,
            "preferred_batch_size": [batch_rows],
        }
    return config


@router.get("/models/{model}/stats", summary="Statistics (Triton extension, default version)")
@router.get("/models/{model}/versions/{version}/stats", summary="Statistics")
async def model_stats(
    registry: RegistryDep, model: str, version: str | None = None
) -> dict[str, Any]:
    """Triton's statistics: every version of the model, or the one named."""
    entry = registry.entry(model)
    if version is None:
        runtimes = list(entry.runtimes.values())
    else:
        runtimes = [registry.runtime(model, version, ready=False)]
    return {"model_stats": [_stats(rt) for rt in runtimes]}


@router.post(
    "/models/{model}/infer",
    summary="Inference on the default version",
    response_model=InferenceResponse,
    openapi_extra=_INFER_BODY,
)
@router.post(
    "/models/{model}/versions/{version}/infer",
    summary="Inference (JSON or binary tensors)",
    response_model=InferenceResponse,
    openapi_extra=_INFER_BODY,
)
async def infer(
    registry: RegistryDep,
    inference: InferenceDep,
    request: Request,
    model: str,
    version: str | None = None,
) -> Response:
    """Served by service.routes.infer.InferRoute (plain ASGI); declared here for /docs."""
    body, headers = await infer_response(
        registry, inference, model, version, await request.body(), *body_headers(request.scope),
        connection_of(request.scope),
    )  # fmt: skip
    return Response(content=b"".join(body), headers=headers)


@router.post(
    "/models/{model}/compare",
    summary="Run one input through every loaded version and compare their outputs",
    openapi_extra=_INFER_BODY,
)
async def compare(
    registry: RegistryDep, inference: InferenceDep, request: Request, model: str
) -> Response:
    """Every version on one input: outputs, latency and agreement with FP32, side by side."""
    entry = registry.entry(model)
    runtimes = [registry.runtime(model, variant) for variant in entry.runtimes]
    decoded = await _decode(request, inference)
    check_finite_inputs(decoded.inputs, "compare's agreement figures would mean nothing")
    results: dict[str, dict[str, np.ndarray]] = {}
    latency: dict[str, float] = {}
    for runtime in runtimes:
        async with inference.track(runtime):
            started = time.perf_counter()
            results[runtime.variant] = await inference.run(runtime, decoded.inputs, decoded.outputs)
            latency[runtime.variant] = (time.perf_counter() - started) * 1000.0
    limits = inference.limits
    every = {f"{v}/{n}": a for v, outputs in results.items() for n, a in outputs.items()}
    check_json_outputs(
        every, lambda _: False, limits, "compare answers in JSON only: send fewer rows"
    )
    reference = FP32 if FP32 in results else next(iter(results))
    # orjson, not JSONResponse: a NaN a model computes leaves as null, never as a 500.
    return Response(
        dumps(
            {
                "model_name": model,
                "id": decoded.id,
                "reference": reference,
                "versions": {
                    variant: {
                        "latency_ms": round(latency[variant], 4),
                        "outputs": [
                            {"name": n, "shape": list(a.shape), "data": json_data(a)}
                            for n, a in outputs.items()
                        ],
                    }
                    for variant, outputs in results.items()
                },
                "agreement": {
                    variant: agreement(entry.manifest.task, outputs, results[reference])
                    for variant, outputs in results.items()
                    if variant != reference
                },
            }
        ),
        media_type="application/json",
    )


async def _decode(request: Request, inference: Inference) -> DecodedRequest:
    return await decode_body(await request.body(), *body_headers(request.scope), inference.limits)


def _stats(rt: ModelRuntime) -> dict[str, Any]:
    s = rt.stats
    with s.lock:
        return {
            "name": rt.model,
            "version": rt.variant,
            "last_inference": s.last_inference_ms,
            "inference_count": s.inference_count,
            "execution_count": s.success_count,
            "inference_stats": {
                "success": {"count": s.success_count, "ns": s.success_ns},
                "fail": {"count": s.fail_count, "ns": s.fail_ns},
                "queue": {"count": s.success_count, "ns": s.queue_ns},
                "compute_input": {"count": s.success_count, "ns": 0},
                "compute_infer": {"count": s.success_count, "ns": s.compute_ns},
                "compute_output": {"count": s.success_count, "ns": 0},
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [],
        }
