"""Triton's model-repository extension through tritonclient: models change without a restart."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

Reference = Any


def start(
    servers: ModuleType, started: list[Any], root: Path, **env: str
) -> tuple[Any, httpclient.InferenceServerClient]:
    server = servers.start_server(root, root / "server.log", **env)
    started.append(server)
    return server, httpclient.InferenceServerClient(url=server.host_port)


def repository_copy(model_repository: Path, root: Path) -> Path:
    """A repository of our own to change: digits copied from the session's build."""
    shutil.copytree(model_repository / "digits", root / "digits")
    return root


def add_model(root: Path, name: str, source: Path) -> None:
    """A new model folder: digits' files under another name (model.json names it)."""
    shutil.copytree(source, root / name)
    manifest = json.loads((root / name / "model.json").read_text())
    manifest["name"] = name
    (root / name / "model.json").write_text(json.dumps(manifest, indent=2))


def touch_manifest(directory: Path, description: str) -> None:
    """A changed model.json (another sha256), as a rebuild with new metadata writes it."""
    manifest = json.loads((directory / "model.json").read_text())
    manifest["description"] = description
    (directory / "model.json").write_text(json.dumps(manifest, indent=2))


def infer(
    client: httpclient.InferenceServerClient, model: str, x: np.ndarray, version: str = ""
) -> np.ndarray:
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor], model_version=version)
    logits = result.as_numpy("logits")
    assert logits is not None
    return logits


def states(client: httpclient.InferenceServerClient) -> dict[tuple[str, str], tuple[str, str]]:
    return {
        (row["name"], row.get("version", "")): (row.get("state", ""), row.get("reason", ""))
        for row in client.get_model_repository_index()
    }


def test_unload_then_load_and_a_new_folder(
    servers: ModuleType,
    started: list[Any],
    model_repository: Path,
    tmp_path: Path,
    held_out: tuple[np.ndarray, np.ndarray],
    reference: Reference,
) -> None:
    """unload -> not ready (index: UNAVAILABLE, unloaded); a folder added later -> load -> infer."""
    root = repository_copy(model_repository, tmp_path)
    _, client = start(servers, started, root)
    x = held_out[0][:2]
    assert client.is_model_ready("digits")
    assert states(client)[("digits", "int8")] == ("READY", "")

    client.unload_model("digits")
    assert not client.is_model_ready("digits")
    assert states(client)[("digits", "")] == ("UNAVAILABLE", "unloaded")
    with pytest.raises(InferenceServerException, match="unknown model"):
        infer(client, "digits", x)

    client.load_model("digits")
    assert client.is_model_ready("digits")
    np.testing.assert_allclose(infer(client, "digits", x, "fp32"), reference("fp32", x), atol=1e-4)

    with pytest.raises(InferenceServerException, match="no model 'digits2'"):
        client.load_model("digits2")
    add_model(root, "digits2", root / "digits")
    assert states(client)[("digits2", "")] == ("UNAVAILABLE", "not loaded")
    client.load_model("digits2")
    assert client.is_model_ready("digits2")
    assert client.is_model_ready("digits2", "int8")
    np.testing.assert_allclose(infer(client, "digits2", x, "fp32"), reference("fp32", x), atol=1e-4)
    assert client.is_server_ready()


def test_a_bad_new_version_never_replaces_a_good_one(
    servers: ModuleType,
    started: list[Any],
    model_repository: Path,
    tmp_path: Path,
    held_out: tuple[np.ndarray, np.ndarray],
) -> None:
    """A changed model whose int8 file is corrupt: load fails with the reason, the old serves."""
    root = repository_copy(model_repository, tmp_path)
    _, client = start(servers, started, root)
    x = held_out[0][:1]
    before = infer(client, "digits", x, "int8")
    touch_manifest(root / "digits", "a rebuild gone wrong")
    onnx_file = root / "digits" / "int8" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[100:108] = bytes(b ^ 0xFF for b in data[100:108])
    onnx_file.write_bytes(bytes(data))

    with pytest.raises(InferenceServerException, match="sha256 mismatch.*keeps serving"):
        client.load_model("digits")
    assert client.is_model_ready("digits", "int8")
    np.testing.assert_array_equal(infer(client, "digits", x, "int8"), before)
    assert states(client)[("digits", "int8")] == ("READY", "")


def test_reload_under_load_fails_no_request(
    servers: ModuleType,
    started: list[Any],
    model_repository: Path,
    tmp_path: Path,
    held_out: tuple[np.ndarray, np.ndarray],
) -> None:
    """Clients keep inferring while the model is reloaded three times: every request answers."""
    root = repository_copy(model_repository, tmp_path)
    server, client = start(servers, started, root)
    x = held_out[0][:1]
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def hammer() -> None:
        own = httpclient.InferenceServerClient(url=server.host_port)
        try:
            while not stop.is_set():
                for version in ("", "fp32", "int8"):
                    try:
                        infer(own, "digits", x, version)
                        outcome = "ok"
                    except InferenceServerException as exc:
                        outcome = "failed"
                        errors.append(str(exc))
                    with lock:
                        counts[outcome] += 1
        finally:
            own.close()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for attempt in range(3):
            time.sleep(0.3)
            touch_manifest(root / "digits", f"rebuilt {attempt}")
            client.load_model("digits")
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert counts["failed"] == 0, errors[:5]
    assert counts["ok"] > 0
    log = (root / "server.log").read_text()
    assert log.count("reloaded digits") == 3, log[-3000:]
    print(f"\nreload under load: {counts['ok']} requests answered, {counts['failed']} failed")


def test_polling_adds_reloads_and_removes(
    servers: ModuleType,
    started: list[Any],
    model_repository: Path,
    tmp_path: Path,
    held_out: tuple[np.ndarray, np.ndarray],
) -> None:
    """EDGE_REPOSITORY_POLL_SECONDS: a folder added is served, changed reloaded, removed gone."""
    root = repository_copy(model_repository, tmp_path)
    _, client = start(servers, started, root, EDGE_REPOSITORY_POLL_SECONDS="0.2")
    x = held_out[0][:1]

    def until(check: Any, what: str) -> None:
        deadline = time.monotonic() + 60
        while not check():
            assert time.monotonic() < deadline, f"polling never {what}"
            time.sleep(0.1)

    staging = tmp_path / "staging"
    staging.mkdir()
    add_model(staging, "digits3", root / "digits")
    (staging / "digits3").rename(root / "digits3")  # an atomic move, as deploys should do
    until(lambda: client.is_model_ready("digits3"), "loaded the new folder")
    assert infer(client, "digits3", x).shape == (1, 10)

    touch_manifest(root / "digits3", "changed")
    until(lambda: "reloaded digits3" in (root / "server.log").read_text(), "reloaded the change")
    assert client.is_model_ready("digits3")

    shutil.rmtree(root / "digits3")
    until(lambda: not client.is_model_ready("digits3"), "unloaded the removed folder")
    assert ("digits3", "") not in states(client)
    assert client.is_model_ready("digits")
