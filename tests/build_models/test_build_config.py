"""Model configs: validated whole before any work, errors that name the key path, the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import build_models.__main__ as cli
from build_models.config import SCHEMA_FILE, ConfigError, json_schema, load_config
from tests.build_models.rigs import tensor_project


def _write(folder: Path, config: dict[str, object]) -> Path:
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_shipped_schema_is_generated_from_the_model() -> None:
    """The JSON Schema in the repo is the pydantic model's, not a hand-kept copy."""
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema()


@pytest.mark.parametrize("name", cli.builtin_names())
def test_builtin_configs_are_valid(name: str) -> None:
    """The built-in models are configs like any user's."""
    config, _ = load_config(cli.BUILTIN_CONFIGS / f"{name}.yaml")
    assert config.name == name


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"task": "detection"}, "task: Input should be 'image-classification', "),
        ({"calibration": {"tensors": "calib.npz", "count": 0}},
         "calibration.count: Input should be greater than or equal to 1"),
        ({"calibration": {"tensors": "calib.npz", "text": "x.txt"}},
         "calibration: Value error, give exactly one of images, tensors, text, plugin"),
        ({"budget": {"metric": "top1"}},
         "budget: Value error, top1 is better higher: give min_value or max_drop"),
        ({"budget": {"metric": "accuracy", "max_drop": 1}},
         "budget: Value error, unknown metric 'accuracy'; choose from top1, "),
        ({"budget": {"metric": "top1", "min_value": 0.99}},
         "top1 is a percentage (0-100): min_value 0.99 means 0.99%; write 99 for 99%"),
        ({"budget": {"metric": "max_abs_diff", "max_drop": 5}},
         "max_abs_diff is an error, better lower: give max_value or max_rise"),
        ({"budget": {"metric": "top1", "max_drop": "x"}},
         "budget.max_drop: Input should be a valid number"),
        ({"name": "Bad Name"}, "name: String should match pattern"),
        ({"quantization": {"candidates": [{"name": "a", "activation_type": "QInt4"}]}},
         "quantization.candidates.0.activation_type"),
        ({"preprocessing": {"size": [8, 8]}}, "a tensor model has no pre/post-processing"),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_bad_config_names_the_key_path(
    tmp_path: Path, change: dict[str, object], words: str
) -> None:
    """Each mistake is reported with where it is and what was expected."""
    path = tensor_project(tmp_path)
    config = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**config, **change}))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value)
    assert words in str(error.value)
    assert "Input should be a valid list" not in str(error.value)  # the union's other shape


def test_missing_files_are_listed_before_any_work(tmp_path: Path) -> None:
    path = tensor_project(tmp_path)
    config = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**config, "source": {"onnx": "nope.onnx"}}))
    with pytest.raises(ConfigError, match=r"file\(s\) not found .*: nope.onnx"):
        load_config(path)


def test_cli_checks_every_config_and_plugin_before_building(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2, nothing built: an unknown plugin in one config stops the whole run up front."""
    good = tensor_project(tmp_path / "good")
    bad = _write(
        tmp_path,
        {
            "name": "bad",
            "task": "tensor",
            "source": {"plugin": "no-such-plugin"},
            "calibration": {"tensors": "good/calib.npz"},
        },
    )
    out = tmp_path / "out"
    assert cli.main(["--config", str(good), "--config", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    known = "(known: digits, minilm, pp-ocrv4-rec)"
    assert f"source.plugin: no source plugin named 'no-such-plugin' {known}" in err
    assert not out.exists()


def test_cli_takes_a_folder_of_configs(tmp_path: Path) -> None:
    """--config DIR builds every *.yaml in it (names must not clash)."""
    tensor_project(tmp_path / "a")
    (tmp_path / "a" / "copy.yaml").write_text((tmp_path / "a" / "model.yaml").read_text())
    with pytest.raises(ConfigError, match="model name 'dead-unit' is also used by"):
        cli.validate(cli.config_paths([tmp_path / "a"], None))
