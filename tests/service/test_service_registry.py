"""Model discovery and loading: old schemas skipped with a reason; one timing pass at load."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from service.config import Settings
from service.manifest import MANIFEST_FILE
from service.registry import Registry


def test_old_schema_is_skipped_not_misread(
    model_repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A v1 model.json (pixels scaled differently) is refused by name; the rest still load."""
    shutil.copytree(model_repository / "digits", tmp_path / "digits")
    shutil.copytree(model_repository / "digits", tmp_path / "old")
    manifest = json.loads((tmp_path / "old" / MANIFEST_FILE).read_text())
    (tmp_path / "old" / MANIFEST_FILE).write_text(
        json.dumps({**manifest, "name": "old", "schema_version": 1})
    )
    registry = Registry(Settings(model_repository=tmp_path))
    with caplog.at_level(logging.ERROR, logger="service.registry"):
        registry.discover()
    assert list(registry.models) == ["digits"]
    assert "skipped old: its model.json is not readable by this version" in caplog.text
    assert "rebuild it with `make models`" in caplog.text


def test_nothing_readable_is_an_error(model_repository: Path, tmp_path: Path) -> None:
    shutil.copytree(model_repository / "digits", tmp_path / "digits")
    (tmp_path / "digits" / MANIFEST_FILE).write_text("{}")
    with pytest.raises(RuntimeError, match="no readable model.json"):
        Registry(Settings(model_repository=tmp_path)).discover()


def test_one_timing_pass_at_load_fills_every_figure(model_repository: Path) -> None:
    """Loading times each variant once, interleaved: on-box medians, row costs, batch gains.

    The batch probe is per model, so a variant near the probe's limit is never left unbatched
    beside its probed siblings; digits (a fraction of a millisecond a row) is probed.
    """
    registry = Registry(Settings(model_repository=model_repository))
    registry.discover()
    registry.load()
    entry = registry.models["digits"]
    assert entry.settled and set(entry.onbox_ms) == set(entry.runtimes)
    for runtime in entry.runtimes.values():
        assert runtime.ready and runtime.facts.row_seconds > 0
        assert runtime.facts.batch_speedup is not None and runtime.facts.batch_speedup > 0
    assert entry.default_reason


def test_onbox_off_still_measures_row_costs(model_repository: Path) -> None:
    """EDGE_ONBOX_SECONDS=0 keeps the build's default, but the scheduler still gets row costs."""
    registry = Registry(Settings(model_repository=model_repository, onbox_seconds=0))
    registry.discover()
    registry.load()
    entry = registry.models["digits"]
    assert entry.onbox_ms == {}
    assert all(rt.facts.row_seconds > 0 for rt in entry.runtimes.values())
