"""/docs renders in headless Chromium with no network: its assets come from the service."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

# As tests/loadtests renders report.html, plus: every host but loopback fails to resolve.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--virtual-time-budget=20000",
]  # fmt: skip
OPERATIONS = (
    "/v2/models/{model}/versions/{version}/infer",
    "/v2/repository/index",
    "/v2/repository/models/{model}/load",
    "/v2/repository/models/{model}/unload",
    "/tasks/{model}/classify",
)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_name_only_local_assets(live_server: Any, page: str) -> None:
    """No CDN: every script, stylesheet and icon is served here, and answers 200."""
    html = httpx.get(f"{live_server.url}{page}").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(url.startswith("/docs/static/") for url in assets), assets
    for url in assets:
        assert httpx.get(f"{live_server.url}{url}").status_code == 200, url


def test_docs_render_offline_in_chromium(live_server: Any, tmp_path: Path) -> None:
    """Swagger UI runs in a browser that can reach nothing but the service, listing operations."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium binary (make sysdeps installs it) to render /docs")
    url = f"{live_server.url}/docs"
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    paths = set(re.findall(r'data-path="([^"]+)"', dom))
    assert set(OPERATIONS) <= paths, sorted(paths)
    shot = tmp_path / "docs.png"
    done = subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1280,2000", url],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    print(f"\n/docs rendered offline: {len(paths)} operation paths; screenshot {shot}")
