"""Request bodies for one model: V2 JSON and V2 binary, from the model's own warm-up sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from service.manifest import ModelManifest
from service.processing import Processor
from service.protocol import HEADER_LENGTH, datatype_of


@dataclass(frozen=True)
class Payload:
    """One request body with the headers it needs."""

    body: bytes
    headers: dict[str, str]


def sample_feed(repository: Path, model: str) -> dict[str, np.ndarray]:
    """The sample the service warms up with: a realistic input of realistic size."""
    directory = repository / model
    return Processor(ModelManifest.read(directory), directory).sample_feed()


def json_payload(feed: dict[str, np.ndarray]) -> Payload:
    """Inputs and outputs as JSON tensors (what a plain HTTP client sends)."""
    inputs = [
        {"name": name, "shape": list(array.shape), "datatype": datatype_of(array),
         "data": array.ravel().tolist()}
        for name, array in feed.items()
    ]  # fmt: skip
    return Payload(orjson.dumps({"inputs": inputs}), {"Content-Type": "application/json"})


def binary_payload(feed: dict[str, np.ndarray]) -> Payload:
    """Inputs and outputs as binary tensors (tritonclient with binary_data=True)."""
    inputs, chunks = [], []
    for name, array in feed.items():
        raw = np.ascontiguousarray(array).tobytes()
        inputs.append(
            {"name": name, "shape": list(array.shape), "datatype": datatype_of(array),
             "parameters": {"binary_data_size": len(raw)}}
        )  # fmt: skip
        chunks.append(raw)
    header = orjson.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}})
    return Payload(
        header + b"".join(chunks),
        {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))},
    )
