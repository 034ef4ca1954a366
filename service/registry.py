"""The registry of loaded variants, keyed by (model, variant); every inference starts here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from service.config import Settings
from service.errors import NotFound, NotReady
from service.manifest import MANIFEST_FILE, ModelManifest
from service.processing import Processor
from service.runtime import ModelRuntime, State

log = logging.getLogger(__name__)


@dataclass
class ModelEntry:
    """A model, its processing, and its variants' runtimes."""

    manifest: ModelManifest
    directory: Path
    processor: Processor
    runtimes: dict[str, ModelRuntime]
    default_variant: str

    @property
    def name(self) -> str:
        return self.manifest.name


class Registry:
    """discover() registers every variant (visible as loading); load() readies them in turn."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, ModelEntry] = {}

    def discover(self) -> None:
        """Read every model.json in the repository; fail loudly if there is nothing to serve."""
        root = self.settings.model_repository
        manifests = sorted(root.glob(f"*/{MANIFEST_FILE}")) if root.is_dir() else []
        if not manifests:
            raise RuntimeError(
                f"no models in repository {root.resolve()} (expected <model>/{MANIFEST_FILE}); "
                "build one with `make models` or `python -m build_models --out DIR`"
            )
        for path in manifests:
            try:
                manifest = ModelManifest.read(path.parent)
            except (ValueError, OSError) as exc:  # pydantic's ValidationError is a ValueError
                log.error(
                    "skipped %s: its %s is not readable by this version (%s); rebuild it with "
                    "`make models`",
                    path.parent.name,
                    MANIFEST_FILE,
                    str(exc).splitlines()[0],
                )
                continue
            wanted = self.settings.variants or tuple(manifest.variants)
            runtimes = {
                name: ModelRuntime(
                    manifest.name,
                    name,
                    path.parent / variant.file,
                    variant.sha256,
                    self.settings.threads,
                    manifest.inputs,
                    manifest.outputs,
                )
                for name, variant in manifest.variants.items()
                if name in wanted
            }
            if not runtimes:
                log.warning("model %s has none of the variants %s; skipped", manifest.name, wanted)
                continue
            default = self.settings.default_variant or manifest.default_variant
            if default not in runtimes:
                default = (
                    manifest.default_variant
                    if manifest.default_variant in runtimes
                    else (next(iter(runtimes)))
                )
            self.models[manifest.name] = ModelEntry(
                manifest, path.parent, Processor(manifest, path.parent), runtimes, default
            )
        if not self.models:
            raise RuntimeError(f"no readable model.json in repository {root.resolve()}")
        log.info(
            "registered %s",
            ", ".join(f"{m.name}[{','.join(m.runtimes)}]" for m in self.models.values()),
        )

    def load(self) -> None:
        """Load and warm up every registered variant, one after another (blocking)."""
        for entry in self.models.values():
            try:
                feed = entry.processor.sample_feed()
            except Exception as exc:
                for runtime in entry.runtimes.values():
                    runtime.state, runtime.error = State.FAILED, "no usable warm-up sample"
                log.error("model %s has no usable warm-up sample: %s", entry.name, exc)
                continue
            for runtime in entry.runtimes.values():
                runtime.load(feed, self.settings.warmup_runs)

    def entry(self, model: str) -> ModelEntry:
        try:
            return self.models[model]
        except KeyError:
            raise NotFound(f"unknown model '{model}'") from None

    def runtime(self, model: str, version: str | None = None, ready: bool = True) -> ModelRuntime:
        """The runtime for a model's variant (its default when version is None)."""
        entry = self.entry(model)
        variant = version or entry.default_variant
        runtime = entry.runtimes.get(variant)
        if runtime is None:
            raise NotFound(
                f"unknown version '{variant}' of model '{model}' "
                f"(loaded: {', '.join(entry.runtimes)})"
            )
        if ready and not runtime.ready:
            reason = f": {runtime.error}" if runtime.state is State.FAILED else ""
            raise NotReady(f"model '{model}' version '{variant}' is {runtime.state.value}{reason}")
        return runtime

    def all_runtimes(self) -> list[ModelRuntime]:
        return [rt for entry in self.models.values() for rt in entry.runtimes.values()]

    @property
    def ready(self) -> bool:
        """Strict: every variant ready. Degraded: loading done, every model has a ready one."""
        runtimes = self.all_runtimes()
        if not runtimes:
            return False
        if self.settings.strict_readiness:
            return all(rt.ready for rt in runtimes)
        settled = all(rt.state in (State.READY, State.FAILED) for rt in runtimes)
        return settled and all(
            any(rt.ready for rt in entry.runtimes.values()) for entry in self.models.values()
        )

    def failures(self) -> list[ModelRuntime]:
        """Variants that failed to load (their `error` says why, without file paths)."""
        return [rt for rt in self.all_runtimes() if rt.state is State.FAILED]
