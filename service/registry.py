"""The registry of loaded variants, keyed by (model, variant); every inference starts here."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from service.allocator import trim_heaps
from service.config import Settings
from service.errors import NotFound, NotReady
from service.manifest import MANIFEST_FILE, ModelManifest
from service.onbox import choose_default, measure
from service.processing import Processor
from service.runtime import ModelRuntime, State

log = logging.getLogger(__name__)


@dataclass
class ModelEntry:
    """A model, its processing, and its variants' runtimes."""

    manifest: ModelManifest
    processor: Processor
    runtimes: dict[str, ModelRuntime]
    default_variant: str
    manifest_sha256: str = ""
    """sha256 of the model.json this entry was read from: polling reloads when it changes."""
    default_reason: str = ""
    """Why default_variant serves unversioned requests (the build's rule, re-run on this box)."""
    onbox_ms: dict[str, float] = field(default_factory=dict)
    """Batch-1 latency of each ready variant measured here after warm-up (empty: not measured)."""
    settled: bool = False
    """Loading, timing and the choice of default are done: readiness waits for this."""

    @property
    def name(self) -> str:
        return self.manifest.name


class EmptyRepository(RuntimeError):
    """Nothing to serve: the service refuses to start (a deployment mistake, not a request's)."""


def manifest_paths(root: Path) -> list[Path]:
    """Every model.json in the repository; EmptyRepository, with what to do, when none."""
    manifests = sorted(root.glob(f"*/{MANIFEST_FILE}")) if root.is_dir() else []
    if not manifests:
        raise EmptyRepository(
            f"no models in repository {root.resolve()} (expected <model>/{MANIFEST_FILE}); "
            "build one with `make models` or `python -m build_models --out DIR`"
        )
    return manifests


class Registry:
    """discover() registers every variant (visible as loading); load() readies them in turn."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, ModelEntry] = {}

    def discover(self) -> None:
        """Read every model.json in the repository; fail loudly if there is nothing to serve."""
        root = self.settings.model_repository
        models: dict[str, ModelEntry] = {}
        for path in manifest_paths(root):
            try:
                entry = self.read_entry(path.parent)
            except (ValueError, OSError) as exc:  # pydantic's ValidationError is a ValueError
                log.error("skipped %s: %s", path.parent.name, exc)
                continue
            models[entry.name] = entry
        self.models = models
        if not self.models:
            raise EmptyRepository(f"no readable model.json in repository {root.resolve()}")
        log.info(
            "registered %s",
            ", ".join(f"{m.name}[{','.join(m.runtimes)}]" for m in self.models.values()),
        )

    def read_entry(self, directory: Path) -> ModelEntry:
        """One model folder as a registered (not yet loaded) entry; ValueError says why not."""
        try:
            raw = (directory / MANIFEST_FILE).read_bytes()
            manifest = ModelManifest.model_validate_json(raw)
        except (ValueError, OSError) as exc:
            raise ValueError(
                f"its {MANIFEST_FILE} is not readable by this version "
                f"({str(exc).splitlines()[0]}); rebuild it with `make models`"
            ) from None
        wanted = self.settings.variants or tuple(manifest.variants)
        runtimes = {
            name: ModelRuntime(
                manifest.name,
                name,
                directory / variant.file,
                variant.sha256,
                self.settings.threads,
                manifest.inputs,
                manifest.outputs,
            )
            for name, variant in manifest.variants.items()
            if name in wanted
        }
        if not runtimes:
            raise ValueError(f"it has none of the variants {', '.join(wanted)}")
        # Until the variants are timed here: the override, else the build's, else the first.
        default, _ = choose_default(manifest, runtimes, {}, self.settings.default_variant)
        return ModelEntry(
            manifest,
            Processor(manifest, directory),
            runtimes,
            default,
            manifest_sha256=hashlib.sha256(raw).hexdigest(),  # of the bytes parsed above
            default_reason=manifest.default_reason,
        )

    def load(self) -> None:
        """Load, warm up and time every registered model in turn (blocking).

        The on-box timing budget is shared: what a quick model leaves goes to the next ones.
        """
        entries = list(self.models.values())
        deadline = time.perf_counter() + self.settings.onbox_seconds
        for left, entry in zip(range(len(entries), 0, -1), entries, strict=True):
            self.load_entry(entry, max(deadline - time.perf_counter(), 0.0) / left)
        trim_heaps()  # loading's scratch memory (graph optimisation, warm-up) back to the OS

    def load_entry(self, entry: ModelEntry, onbox_seconds: float) -> None:
        """Load, warm up and time one model's variants on this box, then pick its default."""
        try:
            feed = entry.processor.sample_feed()
        except Exception as exc:
            for runtime in entry.runtimes.values():
                runtime.state, runtime.error = State.FAILED, "no usable warm-up sample"
            log.error("model %s has no usable warm-up sample: %s", entry.name, exc)
            entry.settled = True
            return
        for runtime in entry.runtimes.values():
            runtime.load(feed, self.settings.warmup_runs)
        timed = measure(entry.runtimes, feed, onbox_seconds)
        if self.settings.onbox_seconds > 0:
            entry.onbox_ms = timed
        entry.default_variant, entry.default_reason = choose_default(
            entry.manifest, entry.runtimes, entry.onbox_ms, self.settings.default_variant
        )
        build = {name: v.latency_ms.get("batch_1") for name, v in entry.manifest.variants.items()}
        log.info(
            "%s on this box: %s; default %s (%s)",
            entry.name,
            ", ".join(
                f"{name} {ms:.3f} ms (build machine {_ms(build.get(name))}, batch gain "
                f"{_gain(entry.runtimes[name].facts.batch_speedup)})"
                for name, ms in timed.items()
            )
            or "not timed",
            entry.default_variant,
            entry.default_reason,
        )
        entry.settled = True

    def install(self, entry: ModelEntry) -> ModelEntry | None:
        """Serve entry from now on; returns the entry it replaced (its requests finish on it).

        Copy-on-write: threads iterating the old dict (metrics, readiness) never see it change.
        """
        old = self.models.get(entry.name)
        self.models = {**self.models, entry.name: entry}
        return old

    def remove(self, model: str) -> ModelEntry | None:
        """Stop serving a model (copy-on-write, as install); returns its entry."""
        old = self.models.get(model)
        self.models = {name: e for name, e in self.models.items() if name != model}
        return old

    def acceptable(self, entry: ModelEntry) -> bool:
        """The readiness rule for one model: strict, every variant; degraded, at least one."""
        states = [rt.ready for rt in entry.runtimes.values()]
        return all(states) if self.settings.strict_readiness else any(states)

    def entry(self, model: str) -> ModelEntry:
        """A registered model, or the 404 a client gets for an unknown one."""
        try:
            return self.models[model]
        except KeyError:
            raise NotFound(f"unknown model '{model}'") from None

    def runtime(self, model: str, variant: str | None = None, ready: bool = True) -> ModelRuntime:
        """The runtime for a model's variant (its default when variant is None)."""
        entry = self.entry(model)
        variant = variant or entry.default_variant
        runtime = entry.runtimes.get(variant)
        if runtime is None:
            raise NotFound(
                f"unknown version '{variant}' of model '{model}' "
                f"(loaded: {', '.join(entry.runtimes)})"
            )
        if ready and not runtime.ready:
            reason = f": {runtime.error}" if runtime.state is State.FAILED else ""
            raise NotReady(f"{runtime.label} is {runtime.state.value}{reason}")
        return runtime

    def all_runtimes(self) -> list[ModelRuntime]:
        """Every variant of every model, for metrics and statistics."""
        return [rt for entry in self.models.values() for rt in entry.runtimes.values()]

    @property
    def ready(self) -> bool:
        """Strict: every variant ready. Degraded: loading done, every model has a ready one."""
        models = self.models  # one snapshot: a load or unload swaps the dict meanwhile
        runtimes = [rt for entry in models.values() for rt in entry.runtimes.values()]
        if not runtimes or not all(entry.settled for entry in models.values()):
            return False  # the default is chosen after warm-up: it must not change once ready
        if not self.settings.strict_readiness and any(
            rt.state not in (State.READY, State.FAILED) for rt in runtimes
        ):
            return False  # degraded: still loading something that may yet come up
        return all(self.acceptable(entry) for entry in models.values())

    def failures(self) -> list[ModelRuntime]:
        """Variants that failed to load (their `error` says why, without file paths)."""
        return [rt for rt in self.all_runtimes() if rt.state is State.FAILED]


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} ms"


def _gain(speedup: float | None) -> str:
    return "not probed" if speedup is None else f"x{speedup:.2f}"
