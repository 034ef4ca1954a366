"""minilm and ocr built for real, then served: repository contents, gates, tasks and protocol."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from test_service_backpressure import one_patient_worker, send_then_hang_up
from test_service_readme import README, command_id, curl_commands, runnable
from tokenizers import Tokenizer

from build_models.__main__ import main as build_main
from build_models.plugins.sentences import RANKING_SENTENCES
from service.manifest import ModelManifest, TextPreprocessing, file_sha256
from service.processing import encode_texts, load_tokenizer
from service.sessions import open_session

pytestmark = pytest.mark.heavy

MODELS = ("minilm", "ocr")
VARIANTS = {"minilm": ("fp32", "int8", "int8-dynamic"), "ocr": ("fp32", "int8")}
ASSETS = {"minilm": "assets/tokenizer.json", "ocr": "assets/charset.json"}
STATIC = [(model, "int8") for model in MODELS]  # quantize_static in QDQ format
DIMENSION = 384
MINILM_INPUTS = {"input_ids": "ids", "attention_mask": "attention_mask"}
# Paraphrase pairs and unrelated pairs from the hand-written ranking set (topics of five).
PARAPHRASES = [(RANKING_SENTENCES[i], RANKING_SENTENCES[i + 1]) for i in (0, 5, 10, 15)]
UNRELATED = [(RANKING_SENTENCES[i], RANKING_SENTENCES[(i + 25) % 50]) for i in (0, 5, 10, 15)]
SENTENCES = ["The kiosk prints a receipt.", "A camera on the shelf counts the stock.", "Hi."]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """minilm and ocr built exactly as `python -m build_models` does (about 2.5 min)."""
    out = tmp_path_factory.mktemp("heavy-models")
    assert build_main(["--out", str(out), "--models", ",".join(MODELS)]) == 0
    return out


@pytest.fixture(scope="module")
def manifests(repository: Path) -> dict[str, ModelManifest]:
    return {model: ModelManifest.read(repository / model) for model in MODELS}


@pytest.fixture(scope="module")
def server(
    repository: Path, servers: ModuleType, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """One real server process over the built repository, stopped after the module."""
    running = servers.start_server(
        repository, tmp_path_factory.mktemp("heavy-server") / "server.log"
    )
    yield running
    servers.stop_server(running)


@pytest.fixture(scope="module")
def http(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def triton(server: Any) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=server.host_port, network_timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def tokenizer(repository: Path, manifests: dict[str, ModelManifest]) -> Tokenizer:
    """The tokenizer shipped in the repository, set up as the service sets it up."""
    pre = manifests["minilm"].preprocessing
    assert isinstance(pre, TextPreprocessing)
    return load_tokenizer(repository / "minilm" / pre.tokenizer, pre.max_length)


@pytest.fixture(scope="module")
def tokens(tokenizer: Tokenizer) -> dict[str, np.ndarray]:
    """SENTENCES as INT64 input_ids and attention_mask, padded to the longest."""
    return encode_texts(tokenizer, SENTENCES, MINILM_INPUTS)


def variant_path(repository: Path, manifest: ModelManifest, variant: str) -> Path:
    return repository / manifest.name / manifest.variants[variant].file


# --- the repository the build wrote --------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_repository_files(
    repository: Path, manifests: dict[str, ModelManifest], model: str
) -> None:
    """model.json, one ONNX file per variant, the task's asset and the shipped samples."""
    manifest, folder = manifests[model], repository / model
    assert (folder / "model.json").is_file()
    assert set(manifest.variants) == set(VARIANTS[model])
    for variant in VARIANTS[model]:
        assert manifest.variants[variant].file == f"{variant}/model.onnx"
        assert (folder / variant / "model.onnx").is_file()
    assert (folder / ASSETS[model]).is_file()
    json.loads((folder / ASSETS[model]).read_text())
    assert manifest.samples
    for sample in manifest.samples:
        if model == "ocr":
            assert sample.file and sample.label and (folder / sample.file).is_file()
        else:
            assert sample.text


@pytest.mark.parametrize(("model", "variant"), STATIC)
def test_static_int8_has_qdq_nodes(
    repository: Path, manifests: dict[str, ModelManifest], model: str, variant: str
) -> None:
    """Static variants are QDQ graphs: both QuantizeLinear and DequantizeLinear are present."""
    graph = onnx.load(str(variant_path(repository, manifests[model], variant))).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    counts = manifests[model].variants[variant].op_counts
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > 0


@pytest.mark.parametrize("model", MODELS)
def test_every_variant_passed_its_gate(manifests: dict[str, ModelManifest], model: str) -> None:
    """Each quantized variant was checked against every budget and passed; FP32 has none."""
    manifest = manifests[model]
    for name, variant in manifest.variants.items():
        if name == "fp32":
            assert variant.gate == []
            continue
        assert variant.gate, name
        assert all(check.passed and check.value >= check.bound for check in variant.gate), name


def test_ocr_int8_is_at_most_035x_fp32(
    repository: Path, manifests: dict[str, ModelManifest]
) -> None:
    """Most of the recogniser's weights are in wide Convs and MatMuls, so INT8 is small."""
    manifest = manifests["ocr"]
    int8 = variant_path(repository, manifest, "int8").stat().st_size
    fp32 = variant_path(repository, manifest, "fp32").stat().st_size
    assert int8 <= 0.35 * fp32, f"{int8 / fp32:.3f}x"


def test_minilm_default_is_the_fastest_passing_variant(
    manifests: dict[str, ModelManifest],
) -> None:
    """The build's rule, checked against the figures it recorded (no timing here)."""
    manifest = manifests["minilm"]
    passing = {name: v for name, v in manifest.variants.items() if v.passed}
    fastest = min(passing, key=lambda name: passing[name].latency_ms["batch_1"])
    assert manifest.default_variant == fastest


@pytest.mark.parametrize("model", MODELS)
def test_sha256_and_size_match_the_files(
    repository: Path, manifests: dict[str, ModelManifest], model: str
) -> None:
    """The service refuses a file whose hash differs, so the build must record the right one."""
    for variant in manifests[model].variants.values():
        path = repository / model / variant.file
        assert file_sha256(path) == variant.sha256, variant.precision
        assert path.stat().st_size == variant.size_bytes


# --- the live server -----------------------------------------------------------------------


def embed(http: httpx.Client, sentences: list[str], precision: str) -> np.ndarray:
    response = http.post(
        "/tasks/minilm/embed", params={"precision": precision}, json={"sentences": sentences}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"], body["dimension"]) == ("minilm", precision, DIMENSION)
    return np.asarray(body["embeddings"], dtype=np.float64)


@pytest.mark.parametrize("precision", VARIANTS["minilm"])
def test_embed_returns_unit_vectors(http: httpx.Client, precision: str) -> None:
    """Pooling and the L2 norm are inside the graph, for every precision."""
    vectors = embed(http, SENTENCES, precision)
    assert vectors.shape == (len(SENTENCES), DIMENSION)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("precision", VARIANTS["minilm"])
def test_paraphrases_score_above_unrelated_pairs(http: httpx.Client, precision: str) -> None:
    """Every paraphrase pair is closer than every unrelated pair, quantized or not."""

    def cosines(pairs: list[tuple[str, str]]) -> np.ndarray:
        vectors = embed(http, [s for pair in pairs for s in pair], precision)
        return np.sum(vectors[0::2] * vectors[1::2], axis=1)

    paraphrase, unrelated = cosines(PARAPHRASES), cosines(UNRELATED)
    assert paraphrase.min() > unrelated.max(), (paraphrase, unrelated)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("version", VARIANTS["minilm"])
def test_triton_infer_equals_onnx_runtime(
    triton: httpclient.InferenceServerClient,
    repository: Path,
    manifests: dict[str, ModelManifest],
    tokens: dict[str, np.ndarray],
    version: str,
    binary: bool,
) -> None:
    """INT64 token tensors through tritonclient give what ONNX Runtime gives on the same file."""
    inputs = []
    for name in MINILM_INPUTS:
        tensor = httpclient.InferInput(name, list(tokens[name].shape), "INT64")
        tensor.set_data_from_numpy(tokens[name], binary_data=binary)
        inputs.append(tensor)
    output = httpclient.InferRequestedOutput("embedding", binary_data=binary)
    result = triton.infer("minilm", inputs, model_version=version, outputs=[output])
    got = result.as_numpy("embedding")
    assert got is not None and got.dtype == np.float32
    session = open_session(variant_path(repository, manifests["minilm"], version))
    expected = session.run(["embedding"], tokens)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", VARIANTS["ocr"])
def test_recognize_reads_the_shipped_samples(
    http: httpx.Client, repository: Path, manifests: dict[str, ModelManifest], precision: str
) -> None:
    """At least 80% of the sample lines come back as their exact label text."""
    samples = manifests["ocr"].samples
    exact = 0
    for sample in samples:
        assert sample.file is not None
        image = (repository / "ocr" / sample.file).read_bytes()
        response = http.post(
            "/tasks/ocr/recognize",
            params={"precision": precision},
            files={"image": (Path(sample.file).name, image, "image/png")},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model"], body["version"]) == ("ocr", precision)
        exact += body["text"] == sample.label
    assert exact >= 0.8 * len(samples), f"{exact}/{len(samples)} exact"


def test_recognize_requests_of_clients_that_hung_up_are_not_run(
    repository: Path,
    manifests: dict[str, ModelManifest],
    servers: ModuleType,
    tmp_path: Path,
) -> None:
    """The task endpoints skip work nobody waits for too: 30 uploads, 24 clients hang up."""
    with one_patient_worker(servers, repository, tmp_path / "server.log") as server:
        sample = manifests["ocr"].samples[0]
        assert sample.file is not None
        request = httpx.Request(
            "POST",
            f"{server.url}/tasks/ocr/recognize?precision=fp32",
            files={"image": ("line.png", (repository / "ocr" / sample.file).read_bytes())},
        )
        send_then_hang_up(server.url, request, "ocr", "fp32", sent=30, kept=6)


def v2_body(feed: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": "INT64", "data": a.ravel().tolist()}
            for n, a in feed.items()
        ]
    }


def test_compare_agreement_of_quantized_minilm(
    http: httpx.Client, tokens: dict[str, np.ndarray]
) -> None:
    """Both INT8 variants agree with FP32 on the embeddings (mean cosine above 0.98)."""
    response = http.post("/v2/models/minilm/compare", json=v2_body(tokens))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["reference"] == "fp32"
    assert set(result["versions"]) == set(VARIANTS["minilm"])
    for variant in ("int8", "int8-dynamic"):
        figures = result["agreement"][variant]["embedding"]
        assert figures["cosine_mean"] > 0.98, (variant, figures)
        assert figures["cosine_min"] <= figures["cosine_mean"]


@pytest.mark.parametrize("version", VARIANTS["minilm"])
def test_out_of_vocabulary_token_is_a_400(
    http: httpx.Client, tokenizer: Tokenizer, tokens: dict[str, np.ndarray], version: str
) -> None:
    """A token id past the vocabulary is the client's mistake, answered as JSON, not a 500."""
    feed = {name: array.copy() for name, array in tokens.items()}
    feed["input_ids"][0, 1] = tokenizer.get_vocab_size() + 1000
    response = http.post(f"/v2/models/minilm/versions/{version}/infer", json=v2_body(feed))
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert set(response.json()) == {"error"} and response.json()["error"]
    assert http.get("/v2/health/ready").status_code == 200  # the server is still fine


HEAVY_README = [c for c in curl_commands(README.read_text()) if re.search(r"/(minilm|ocr)\b", c)]


def test_readme_has_minilm_and_ocr_examples() -> None:
    """The README shows both large models in its shell examples."""
    assert any("/minilm/" in c for c in HEAVY_README)
    assert any("/ocr/" in c for c in HEAVY_README)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("command", HEAVY_README, ids=[command_id(c) for c in HEAVY_README])
def test_readme_example_works(command: str, server: Any, repository: Path, tmp_path: Path) -> None:
    """A user pasting the README's minilm/ocr examples gets a success."""
    argv = runnable(command, server.url, repository)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, f"{shlex.join(argv)}\nexit {done.returncode}\n{done.stderr}"
    body, status = done.stdout.rstrip().rsplit("HTTP ", 1)
    assert int(status) < 400, done.stdout
    result = json.loads(body)
    assert result["model"] in MODELS
