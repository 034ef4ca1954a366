"""`python -m build_models`: build models from YAML configs into the repository, with a report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from build_models.config import ConfigError, ModelConfig, PluginSource, json_schema, load_config
from build_models.pipeline import BuildResult, build_model
from build_models.plugins import lookup
from build_models.report import write_report

BUILTIN_CONFIGS = Path(__file__).parent / "configs"


def _log(message: str) -> None:
    print(message, flush=True)


def _named(exc: Exception) -> str:
    """An unexpected error with its type, which often says more than its message."""
    return f"{type(exc).__name__}: {exc}"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_CONFIGS.glob("*.yaml"))


def config_paths(configs: list[Path], models: str | None) -> list[Path]:
    """Config files from --config (files or folders of *.yaml) and --models (built-in names)."""
    paths: list[Path] = []
    for path in configs:
        if path.is_dir():
            found = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            if not found:
                raise ConfigError(f"{path}: no *.yaml configs in this folder")
            paths.extend(found)
        else:
            paths.append(path)
    names = [n.strip() for n in (models or "").split(",") if n.strip()]
    unknown = sorted(set(names) - set(builtin_names()))
    if unknown:
        known = ", ".join(builtin_names())
        raise ConfigError(f"unknown built-in model(s) {', '.join(unknown)}; choose from {known}")
    paths.extend(BUILTIN_CONFIGS / f"{name}.yaml" for name in names)
    return paths


def validate(paths: list[Path]) -> list[tuple[Path, ModelConfig, Path]]:
    """Every config checked whole (schema, files, plugin names) before any work starts."""
    loaded: list[tuple[Path, ModelConfig, Path]] = []
    problems: list[str] = []
    names: dict[str, Path] = {}
    for path in paths:
        try:
            config, base = load_config(path)
            _check_plugins(path, config)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if config.name in names:
            problems.append(
                f"{path}: model name {config.name!r} is also used by {names[config.name]}"
            )
        names[config.name] = path
        loaded.append((path, config, base))
    if problems:
        raise ConfigError("\n".join(problems))
    return loaded


def _check_plugins(path: Path, config: ModelConfig) -> None:
    wanted = []
    if isinstance(config.source, PluginSource):
        wanted.append(("source", config.source.plugin, "source.plugin"))
    for key, data in (("calibration", config.calibration), ("evaluation", config.evaluation)):
        if data is not None and data.plugin:
            wanted.append(("data", data.plugin, f"{key}.plugin"))
    for i, recipe in enumerate(config.quantization.candidates or []):
        if recipe.exclude_rule:
            wanted.append(
                ("rule", recipe.exclude_rule, f"quantization.candidates.{i}.exclude_rule")
            )
        if recipe.post_quantize:
            wanted.append(
                ("edit", recipe.post_quantize, f"quantization.candidates.{i}.post_quantize")
            )
    for kind, name, where in wanted:
        try:
            lookup(kind, name)
        except KeyError as exc:
            raise ConfigError(f"{path}: invalid config\n  {where}: {exc.args[0]}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_models", description=__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        action="append",
        default=[],
        help="a model.yaml, or a folder of them (repeatable)",
    )
    parser.add_argument(
        "--models",
        help=f"comma-separated built-in configs: {', '.join(builtin_names())}",
    )
    parser.add_argument("--out", type=Path, default=Path("models"), help="repository folder")
    parser.add_argument("--force", action="store_true", help="rebuild unchanged models too")
    parser.add_argument("--schema", action="store_true", help="print the config JSON Schema")
    args = parser.parse_args(argv)
    if args.schema:
        print(json.dumps(json_schema(), indent=2))
        return 0
    try:
        paths = config_paths(args.config, args.models)
        if not paths:
            parser.error("name at least one --config or --models")
        configs = validate(paths)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, BuildResult] = {}
    for path, config, base in configs:
        try:
            results[config.name] = build_model(path, config, base, args.out, _log, args.force)
        except Exception as exc:  # one model's failure (bad data, ORT's own errors) is reported
            message = str(exc) if isinstance(exc, ValueError | OSError) else _named(exc)
            _log(f"[{config.name}] build failed: {message}")
            results[config.name] = BuildResult(None, [f"{config.name}: {message}"])

    write_report(args.out, results)
    print((args.out / "report.md").read_text(), flush=True)
    failures = [f for result in results.values() for f in result.failures]
    if failures:
        print("build FAILED (the repository keeps the previous build of these):", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
