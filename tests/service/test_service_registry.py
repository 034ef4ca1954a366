"""Model discovery: a model.json from another schema version is skipped with a reason."""

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
