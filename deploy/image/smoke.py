"""Smoke test of a running edge-inference container (used by deploy/image/test.sh).

Waits for /v2/health/ready, then: model metadata, v2 JSON infer on every variant with a
sample digit from the model repository, the digits classify task endpoint with the sample
PNG, and /metrics. Standard library plus Pillow and numpy (the service's own deps).
Exit status 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def request(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout=30.0
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def wait_ready(base: str, timeout: float, started: float) -> float:
    deadline = time.time() + timeout
    last = "no answer"
    while time.time() < deadline:
        try:
            status, _, body = request(base + "/v2/health/ready", timeout=5)
            if status == 200:
                return time.time() - started
            last = f"{status} {body[:80]!r}"
        except (OSError, urllib.error.URLError) as err:
            last = str(err)
        time.sleep(0.5)
    raise SystemExit(f"not ready after {timeout:.0f}s (last: {last})")


def png_to_digits_input(png: Path) -> list[float]:
    """The 64x64 dark-on-white sample back to load_digits' 8x8 ink values (0..16)."""
    gray = Image.open(png).convert("L").resize((8, 8), Image.Resampling.BOX)
    ink = (255.0 - np.asarray(gray, dtype=np.float32)) * (16.0 / 255.0)
    return [round(float(v), 4) for v in ink.reshape(-1)]


def multipart(field: str, filename: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--models", required=True, type=Path, help="the model repository")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--started", type=float, default=time.time())
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    base = args.url.rstrip("/")
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    ready_s = wait_ready(base, args.timeout, args.started)
    print(f"ready after {ready_s:.1f}s ({args.label})")

    status, _, _ = request(base + "/v2/health/live")
    check(status == 200, f"GET /v2/health/live -> {status}")

    manifest: dict[str, Any] = json.loads((args.models / args.model / "model.json").read_text())
    status, _, body = request(f"{base}/v2/models/{args.model}")
    check(status == 200, f"GET /v2/models/{args.model} -> {status}")
    if status == 200:  # the precision chosen on this box, beside the build machine's figures
        params = json.loads(body).get("parameters", {})
        onbox, build = params.get("onbox_latency_ms", {}), params.get("build_latency_ms", {})
        figures = ", ".join(
            f"{name} {ms:.3f} ms (build machine {build.get(name, float('nan')):.3f} ms)"
            for name, ms in sorted(onbox.items())
        )
        default, reason = params.get("default_version"), params.get("default_reason", "")
        print(f"on-box latency ({args.label}): {figures or 'not measured'}; default {default}")
        print(f"  why: {reason}")
        check(bool(onbox), "each variant timed on this box at start-up")

    sample = manifest["samples"][0]
    png = args.models / args.model / sample["file"]
    expected = str(sample["label"])
    values = png_to_digits_input(png)
    top: dict[str, int] = {}
    for variant in sorted(manifest["variants"]):
        payload = {
            "id": f"smoke-{variant}",
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": values}
            ],
        }
        t = time.perf_counter()
        status, _, body = request(
            f"{base}/v2/models/{args.model}/versions/{variant}/infer",
            json.dumps(payload).encode(),
            {"Content-Type": "application/json"},
        )
        ms = (time.perf_counter() - t) * 1000
        ok = status == 200
        detail = body[:200].decode(errors="replace")
        if ok:
            out = {o["name"]: o for o in json.loads(body)["outputs"]}
            logits = out.get("logits", {})
            data = [float(v) for v in logits.get("data", [])]
            ok = logits.get("shape") == [1, 10] and len(data) == 10
            ok = ok and all(map(math.isfinite, data))
            if ok:
                top[variant] = max(range(10), key=data.__getitem__)
                detail = f"argmax {top[variant]} (label {expected}), {ms:.0f} ms"
        check(ok, f"POST infer {args.model}/{variant} -> {status}: {detail}")
    if len(set(top.values())) > 1:
        print(f"note: variants disagree on this sample: {top}")

    body, ctype = multipart("image", png.name, png.read_bytes(), "image/png")
    for precision in sorted(manifest["variants"]):
        url = f"{base}/tasks/{args.model}/classify?precision={precision}"
        status, _, resp = request(url, body, {"Content-Type": ctype})
        detail = resp[:200].decode(errors="replace")
        ok = status == 200
        if ok:
            labels = json.loads(resp).get("labels") or []
            ok = bool(labels) and {"label", "score"} <= set(labels[0])
            if ok:
                best = labels[0]
                detail = f"{best['label']} ({float(best['score']):.3f}), label {expected}"
        check(ok, f"POST /tasks/{args.model}/classify?precision={precision} -> {status}: {detail}")

    status, headers, resp = request(base + "/metrics")
    text = resp.decode(errors="replace")
    ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    check(
        status == 200 and ctype.startswith("text/plain") and "# TYPE " in text,
        f"GET /metrics -> {status}, {ctype}, {series} samples",
    )
    print(f"{args.label}: {'all checks passed' if not failures else f'{len(failures)} failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
