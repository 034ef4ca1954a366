"""Bearer tokens and TLS over real sockets: what is open, what is protected, and tritonclient."""

from __future__ import annotations

import io
import json
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from loadtests.process import start_service

ENV_TOKEN = "env-token-0123456789abcdef"
FILE_TOKEN = "file-token-fedcba9876543210"
ONE_DIGIT = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": [0.0] * 64}]
}
OPEN = ["/v2/health/live", "/v2/health/ready", "/v2", "/openapi.json", "/docs"]
# (method, path): every kind of route that must need a token.
PROTECTED = [
    ("POST", "/v2/models/digits/infer"),
    ("POST", "/v2/models/digits/versions/fp32/infer"),
    ("POST", "/v2/models/digits/compare"),
    ("POST", "/v2/repository/index"),
    ("GET", "/v2/models/stats"),
    ("GET", "/v2/models/digits/versions/fp32/stats"),
    ("GET", "/v2/models"),
    ("GET", "/v2/models/digits"),
    ("GET", "/v2/models/digits/config"),
    ("POST", "/tasks/digits/classify"),
    ("GET", "/v2/no/such/route"),  # default deny: unknown paths say 401, not 404
]


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 255).save(buffer, format="PNG")
    return buffer.getvalue()


def request(client: httpx.Client, method: str, path: str, token: str | None) -> httpx.Response:
    """A well-formed request to `path`, with or without a bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if path.startswith("/tasks/"):
        files = {"image": ("d.png", png(), "image/png")}
        return client.request(method, path, headers=headers, files=files)
    content = json.dumps(ONE_DIGIT).encode() if method == "POST" else None
    return client.request(method, path, headers=headers, content=content)


def assert_401(response: httpx.Response, challenge: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == challenge
    payload = response.json()
    assert list(payload) == ["error"] and "bearer token" in payload["error"]


@pytest.fixture(scope="module")
def secured(
    servers: ModuleType, model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A server with one token from EDGE_API_KEYS and one from EDGE_API_KEYS_FILE."""
    folder = tmp_path_factory.mktemp("auth")
    keys = folder / "keys"
    keys.write_text(f"# one token per line\n\n{FILE_TOKEN}\n")
    server = servers.start_server(
        model_repository,
        folder / "server.log",
        EDGE_API_KEYS=f"{ENV_TOKEN}, ",
        EDGE_API_KEYS_FILE=str(keys),
    )
    yield server
    assert servers.stop_server(server) == 0
    log = (folder / "server.log").read_text()
    assert ENV_TOKEN not in log and FILE_TOKEN not in log, "tokens must never be logged"


@pytest.fixture(scope="module")
def client(secured: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secured.url, timeout=10) as http:
        yield http


@pytest.mark.parametrize("path", [*OPEN, "/metrics"])
def test_probes_metadata_docs_and_metrics_are_open(client: httpx.Client, path: str) -> None:
    """Kubelet probes, Prometheus and a browser on /docs need no token by default."""
    assert client.get(path).status_code == 200


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_routes_need_a_valid_token(client: httpx.Client, method: str, path: str) -> None:
    """No token and a wrong token are 401 with a Bearer challenge; either real token passes."""
    assert_401(request(client, method, path, None), "Bearer")
    assert_401(request(client, method, path, "wrong"), 'Bearer error="invalid_token"')
    assert_401(request(client, method, path, ENV_TOKEN + "x"), 'Bearer error="invalid_token"')
    for token in (ENV_TOKEN, FILE_TOKEN):
        response = request(client, method, path, token)
        expected = 404 if path == "/v2/no/such/route" else 200
        assert response.status_code == expected, response.text


def test_other_schemes_are_refused(client: httpx.Client) -> None:
    """Basic auth carrying a valid token is still not a bearer token."""
    response = client.get("/v2/models", headers={"Authorization": f"Basic {ENV_TOKEN}"})
    assert_401(response, "Bearer")


def test_refusals_are_counted(client: httpx.Client) -> None:
    """401s on inference routes show up in edge_rejected_requests_total{status="401"}."""

    def refused() -> float:
        text = client.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "edge_rejected_requests_total" and sample.labels == {
                    "status": "401"
                }:
                    return sample.value
        return 0.0

    before = refused()
    for _ in range(3):
        assert client.post("/v2/models/digits/infer", json=ONE_DIGIT).status_code == 401
    assert refused() == before + 3


def test_tritonclient_passes_the_token_in_headers(
    secured: Any, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    """tritonclient users add headers={"Authorization": "Bearer ..."}; without it, 401."""
    images, labels = held_out
    triton = httpclient.InferenceServerClient(url=secured.host_port)
    try:
        assert triton.is_server_live() and triton.is_server_ready()
        x = images[:8]
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        with pytest.raises(InferenceServerException) as refused:
            triton.infer("digits", [tensor])
        assert refused.value.status() == "401"
        for token in (ENV_TOKEN, FILE_TOKEN):
            headers = {"Authorization": f"Bearer {token}"}
            result = triton.infer("digits", [tensor], model_version="fp32", headers=headers)
            logits = result.as_numpy("logits")
            assert logits is not None and logits.shape == (8, 10)
            assert np.mean(logits.argmax(1) == labels[:8]) >= 0.75
            stats = triton.get_inference_statistics("digits", "fp32", headers=headers)
            assert stats["model_stats"][0]["inference_stats"]["success"]["count"] >= 1
    finally:
        triton.close()


def test_empty_keys_file_stops_start_up(
    servers: ModuleType, model_repository: Path, tmp_path: Path
) -> None:
    """A mounted but empty secret must not silently leave the API open."""
    keys = tmp_path / "keys"
    keys.write_text("# nothing yet\n")
    with pytest.raises(RuntimeError, match="holds no tokens"):
        servers.start_server(
            model_repository, tmp_path / "server.log", EDGE_API_KEYS_FILE=str(keys)
        )


# --- TLS, with /metrics behind the token --------------------------------------------------


def trusting(cert: Path) -> ssl.SSLContext:
    """A client context that trusts only the test's self-signed certificate."""
    return ssl.create_default_context(cafile=str(cert))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made now with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def tls_server(
    servers: ModuleType,
    model_repository: Path,
    certificate: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """HTTPS only, one token, /metrics protected; yields the https:// base URL."""
    cert, key = certificate
    log = tmp_path_factory.mktemp("tls-server") / "server.log"
    server = start_service(
        model_repository,
        log,
        env={
            "EDGE_TLS_CERTFILE": str(cert),
            "EDGE_TLS_KEYFILE": str(key),
            "EDGE_API_KEYS": ENV_TOKEN,
            "EDGE_PROTECT_METRICS": "true",
        },
    )
    url = server.url.replace("http://", "https://")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.process.poll() is None, log.read_text()
            try:
                if (
                    httpx.get(
                        f"{url}/v2/health/ready",
                        verify=trusting(cert),
                    ).status_code
                    == 200
                ):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url
    finally:
        assert servers.stop_server(server) == 0


def test_tls_serves_https_only(tls_server: str, certificate: tuple[Path, Path]) -> None:
    """The certificate verifies for 127.0.0.1; plain HTTP on the same port gets no answer."""
    cert, _ = certificate
    with httpx.Client(base_url=tls_server, verify=trusting(cert), timeout=10) as client:
        response = client.post(
            "/v2/models/digits/versions/fp32/infer",
            json=ONE_DIGIT,
            headers={"Authorization": f"Bearer {ENV_TOKEN}"},
        )
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["shape"] == [1, 10]
    plain = tls_server.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/v2/health/live", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_server}/v2/health/live", verify=ssl.create_default_context(), timeout=5)


def test_metrics_can_be_protected(tls_server: str, certificate: tuple[Path, Path]) -> None:
    """EDGE_PROTECT_METRICS=true puts /metrics behind the token; health stays open."""
    cert, _ = certificate
    with httpx.Client(base_url=tls_server, verify=trusting(cert), timeout=10) as client:
        assert_401(client.get("/metrics"), "Bearer")
        scraped = client.get("/metrics", headers={"Authorization": f"Bearer {ENV_TOKEN}"})
        assert scraped.status_code == 200 and "edge_variant_ready" in scraped.text
        assert client.get("/v2/health/ready").status_code == 200


def test_tritonclient_over_tls_with_token(tls_server: str, certificate: tuple[Path, Path]) -> None:
    """tritonclient's ssl=True with the self-signed CA, and the token in headers."""
    cert, _ = certificate
    triton = httpclient.InferenceServerClient(
        url=tls_server.removeprefix("https://"),
        ssl=True,
        ssl_context_factory=lambda: trusting(cert),
    )
    try:
        x = np.zeros((2, 1, 8, 8), np.float32)
        tensor = httpclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = triton.infer("digits", [tensor], headers={"Authorization": f"Bearer {ENV_TOKEN}"})
        logits = result.as_numpy("logits")
        assert logits is not None and logits.shape == (2, 10)
    finally:
        triton.close()
