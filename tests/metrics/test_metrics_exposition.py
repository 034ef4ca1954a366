"""/metrics of a fresh in-process app over digits: label sets, counts, errors, memory, build."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.config import Settings

VARIANTS = ("fp32", "int8")
STAGES = ("loaded", "warm")
LIMIT = 4096  # small body limit, so a 413 is cheap to provoke
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def digits_request(batch: int = 1) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [batch, 1, 8, 8],
                "data": [float(i % 17) for i in range(batch * 64)],
            }
        ]
    }


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), color=200).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(model_repository: Path) -> Iterator[TestClient]:
    """One fresh app per module: its /metrics holds exactly what these tests sent."""
    settings = Settings(model_repository=model_repository, max_request_bytes=LIMIT)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 60
        while client.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "digits did not load in 60 s"
            time.sleep(0.05)
        yield client


@pytest.fixture(scope="module")
def before(client: TestClient) -> Samples:
    """The exposition before any inference request."""
    return scrape(client)


def test_label_sets_exist_before_any_traffic(before: Samples) -> None:
    for version in VARIANTS:
        labels = {"model": "digits", "version": version}
        for status in ("200", "400", "499", "500", "503"):
            assert value(before, "edge_requests_total", **labels, status=status) == 0
        for histogram in (
            "edge_request_duration_seconds",
            "edge_inference_queue_duration_seconds",
            "edge_inference_compute_duration_seconds",
            "edge_inference_batch_size",
        ):
            assert value(before, f"{histogram}_count", **labels) == 0
            assert value(before, f"{histogram}_bucket", **labels, le="+Inf") == 0
        assert value(before, "edge_inference_run_seconds_total", **labels) == 0
        assert value(before, "edge_requests_in_flight", **labels) == 0
        assert value(before, "edge_variant_ready", **labels) == 1
        assert value(before, "edge_model_file_bytes", **labels) > 0
    for status in ("400", "404", "413", "422", "503"):
        assert value(before, "edge_rejected_requests_total", status=status) == 0
    for status in ("400", "408", "431"):
        assert value(before, "edge_refused_requests_total", status=status) == 0


def test_latency_buckets_go_from_50_us_to_10_s(before: Samples) -> None:
    bounds = sorted(
        float(dict(labels)["le"])
        for name, labels in before
        if name == "edge_request_duration_seconds_bucket" and dict(labels)["version"] == "int8"
    )
    assert bounds[0] == 0.00005
    assert bounds[-2:] == [10.0, float("inf")]


def test_memory_build_info_and_process_metrics(before: Samples) -> None:
    rss_growth = []
    for version in VARIANTS:
        labels = {"model": "digits", "version": version}
        rss = [value(before, "edge_variant_memory_bytes", **labels, stage=s) for s in STAGES]
        heap = [value(before, "edge_variant_heap_bytes", **labels, stage=s) for s in STAGES]
        assert rss[1] >= rss[0] and heap[1] >= heap[0]  # warm counts from the same start
        # A session keeps its weights and kernels on the heap whatever the load order; RSS
        # growth can be 0 for a variant that reuses heap freed earlier in this process (here:
        # after building the models in-process), so it is only required of one variant.
        assert min(heap) > 100_000, f"heap of digits/{version}: {heap}"
        rss_growth.append(max(rss))
        for stage in ("load", "warmup"):
            assert value(before, "edge_variant_load_seconds", **labels, stage=stage) > 0
    assert max(rss_growth) > 0
    assert value(before, "process_resident_memory_bytes") > 0
    assert (
        value(before, "edge_process_peak_resident_memory_bytes")
        >= value(before, "process_resident_memory_bytes") * 0.9
    )
    builds = [labels for name, labels in before if name == "edge_build_info"]
    assert len(builds) == 1
    build = dict(builds[0])
    assert value(before, "edge_build_info", **build) == 1
    assert set(build) == {"version", "onnxruntime", "python", "machine", "cpu_features"}


def test_traffic_moves_counts_and_sums_per_variant(
    client: TestClient, before: Samples, model_repository: Path
) -> None:
    sent = {"fp32": 5, "int8": 3}
    for version, count in sent.items():
        for _ in range(count):
            url = f"/v2/models/digits/versions/{version}/infer"
            assert client.post(url, json=digits_request()).status_code == 200
    # The default version (model.json's, picked by the build), a batch of 4, and the
    # classify task on fp32.
    assert client.post("/v2/models/digits/infer", json=digits_request(4)).status_code == 200
    response = client.post(
        "/tasks/digits/classify",
        params={"precision": "fp32"},
        files={"image": ("d.png", png(), "image/png")},
    )
    assert response.status_code == 200
    # The default is chosen on this box at start-up (service.onbox): ask the server.
    default = client.get("/v2/models/digits").json()["parameters"]["default_version"]
    expected = {"fp32": [6, 6], "int8": [3, 3]}  # [requests, rows]
    expected[default][0] += 1
    expected[default][1] += 4
    after = scrape(client)
    for version, (requests, rows) in expected.items():
        labels = {"model": "digits", "version": version}

        def delta(name: str, **extra: str) -> float:
            return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)  # noqa: B023

        assert delta("edge_requests_total", status="200") == requests
        assert delta("edge_request_duration_seconds_count") == requests
        assert delta("edge_inference_compute_duration_seconds_count") == requests
        assert delta("edge_inference_queue_duration_seconds_count") == requests
        assert delta("edge_inference_batch_size_sum") == rows
        assert delta("edge_request_duration_seconds_bucket", le="+Inf") == requests
        request_sum = delta("edge_request_duration_seconds_sum")
        compute_sum = delta("edge_inference_compute_duration_seconds_sum")
        assert 0 < compute_sum <= request_sum < 5.0
        # one request a run here, so the runs' own time is the requests' compute time
        assert delta("edge_inference_run_seconds_total") == pytest.approx(compute_sum)
        assert value(after, "edge_requests_in_flight", **labels) == 0


def test_in_flight_is_the_inference_paths_own_count(client: TestClient) -> None:
    """edge_requests_in_flight reads the count a reload drains, at scrape time."""
    inference = client.app.state.inference
    runtime = client.app.state.registry.runtime("digits", "int8")
    inference.in_flight[runtime] = inference.in_flight.get(runtime, 0) + 2
    try:
        samples = scrape(client)
    finally:
        inference.in_flight[runtime] -= 2
    assert value(samples, "edge_requests_in_flight", model="digits", version="int8") == 2
    assert value(samples, "edge_requests_in_flight", model="digits", version="fp32") == 0


def test_errors_count_with_their_status(client: TestClient) -> None:
    before = scrape(client)
    wrong_shape = digits_request()
    wrong_shape["inputs"][0]["shape"] = [1, 64]
    url = "/v2/models/digits/versions/fp32/infer"
    assert client.post(url, json=wrong_shape).status_code == 400
    assert client.post(url, content=b"{not json").status_code == 400
    after = scrape(client)
    labels = {"model": "digits", "version": "fp32"}

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **labels, **extra) - value(before, name, **labels, **extra)

    assert delta("edge_requests_total", status="400") == 2
    assert delta("edge_requests_total", status="200") == 0
    assert delta("edge_request_duration_seconds_count") == 2  # latency of errors is observed
    assert delta("edge_inference_compute_duration_seconds_count") == 0  # never reached ORT
    # Nothing about int8 moved.
    assert value(after, "edge_requests_total", model="digits", version="int8", status="400") == (
        value(before, "edge_requests_total", model="digits", version="int8", status="400")
    )


def test_unknown_names_never_become_labels(client: TestClient) -> None:
    before = scrape(client)
    assert client.post("/v2/models/nosuchmodel/infer", json=digits_request()).status_code == 404
    url = "/v2/models/digits/versions/fp16bogus/infer"
    assert client.post(url, json=digits_request()).status_code == 404
    response = client.post(
        "/tasks/nosuchmodel/classify", files={"image": ("d.png", png(), "image/png")}
    )
    assert response.status_code == 404
    assert client.post("/v2/models/digits/infer", content=b"x" * (LIMIT + 1)).status_code == 413
    # A body of the wrong type is FastAPI's 422 before the route runs.
    assert client.post("/tasks/digits/embed", json={"sentences": "x"}).status_code in (404, 422)
    text = client.get("/metrics").text
    assert "nosuchmodel" not in text
    assert "fp16bogus" not in text
    after = scrape(client)
    assert (
        value(after, "edge_rejected_requests_total", status="404")
        - value(before, "edge_rejected_requests_total", status="404")
        >= 3
    )
    assert (
        value(after, "edge_rejected_requests_total", status="413")
        - value(before, "edge_rejected_requests_total", status="413")
        == 1
    )
    versions = {dict(labels).get("version") for name, labels in after if name.startswith("edge_")}
    assert versions - {None} <= {*VARIANTS, build_version(after)}
    # Nothing rejected was counted under a variant.
    for version in VARIANTS:
        for status in ("404", "413", "422"):
            key = ("edge_requests_total", frozenset(
                {"model": "digits", "version": version, "status": status}.items()
            ))  # fmt: skip
            assert key not in after


def build_version(samples: Samples) -> str:
    return next(dict(labels)["version"] for name, labels in samples if name == "edge_build_info")


def test_successful_requests_are_not_rejected(client: TestClient) -> None:
    before = scrape(client)
    url = "/v2/models/digits/versions/int8/infer"
    assert client.post(url, json=digits_request()).status_code == 200
    assert client.get("/v2/models/nosuchmodel").status_code == 404  # metadata, not inference
    after = scrape(client)
    rejected = {
        labels: v for (name, labels), v in after.items() if name == "edge_rejected_requests_total"
    }
    assert rejected == {
        labels: v for (name, labels), v in before.items() if name == "edge_rejected_requests_total"
    }
