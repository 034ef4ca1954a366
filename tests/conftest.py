"""Shared fixtures: one digits model repository built per test session (~30 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from build_models.__main__ import main as build_main


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model repository holding `digits` (FP32 + static INT8), built like `make models`."""
    out = tmp_path_factory.mktemp("models")
    assert build_main(["--out", str(out), "--models", "digits"]) == 0
    return out
