"""The live OpenAPI document is self-contained: every $ref resolves, the infer body is visible."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest


@pytest.fixture(scope="module")
def document(live_server: Any) -> dict[str, Any]:
    response = httpx.get(f"{live_server.url}/openapi.json", timeout=10)
    assert response.status_code == 200
    openapi: dict[str, Any] = response.json()
    return openapi


def refs(node: Any, where: str = "#") -> Iterator[tuple[str, str]]:
    """Every ($ref value, location of the ref) in the document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value, where
            else:
                yield from refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from refs(item, f"{where}/{index}")


def resolve(document: dict[str, Any], ref: str) -> Any:
    """A local JSON pointer (RFC 6901) into the document; KeyError if it points nowhere."""
    assert ref.startswith("#/"), f"not a local ref: {ref}"
    node: Any = document
    for token in ref[2:].split("/"):
        token = unquote(token).replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def test_every_ref_resolves(document: dict[str, Any]) -> None:
    found = list(refs(document))
    assert found, "the document has no $ref at all (response models should produce some)"
    broken = []
    for ref, where in found:
        try:
            target = resolve(document, ref)
        except (KeyError, IndexError, ValueError):
            broken.append(f"{where}: {ref}")
            continue
        assert isinstance(target, dict), f"{where}: {ref} is not a schema"
    assert not broken, broken


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/{model}/infer",
        "/v2/models/{model}/versions/{version}/infer",
        "/v2/models/{model}/compare",
    ],
)
def test_infer_body_schema_shows_the_tensors(document: dict[str, Any], path: str) -> None:
    """Generated clients and fuzzers see the input tensor fields, not a dangling reference."""
    body = document["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == {"application/json", "application/octet-stream"}
    schema = body["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = resolve(document, schema["$ref"])
    tensor = schema["properties"]["inputs"]["items"]
    if "$ref" in tensor:
        tensor = resolve(document, tensor["$ref"])
    assert {"name", "shape", "datatype", "data"} <= set(tensor["properties"])
    assert set(tensor["required"]) == {"name", "shape", "datatype"}
