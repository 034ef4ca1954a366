"""Triton's model-repository extension: load, unload, index, and optional polling.

A load re-reads the model's folder into a fresh entry, loads and warms it in a worker thread
while the old entry keeps serving, and swaps it in only if it meets the readiness rule: a
bad new version never replaces a good running one. Requests that resolved the old entry
finish on it; its lanes close once no request is in flight on it (Inference.in_flight). An
unload stops new requests at once and waits for those in flight before it answers.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from fastapi import FastAPI

from service.errors import BadRequest, NotFound
from service.inference import Inference
from service.manifest import MANIFEST_FILE, file_sha256
from service.metrics import Metrics
from service.registry import ModelEntry, Registry
from service.runtime import ModelRuntime, State

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Status:
    """A model folder that is not being served: why (Triton's state and reason)."""

    state: str
    reason: str


class Repository:
    """Load, unload and index models of the repository folder while the server runs."""

    def __init__(self, registry: Registry, inference: Inference, metrics: Metrics) -> None:
        self.registry = registry
        self.inference = inference
        self.metrics = metrics
        self.root = registry.settings.model_repository
        self._status: dict[str, Status] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._seen: dict[str, str] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    # --- the API ---------------------------------------------------------------------------

    async def load(self, model: str) -> None:
        """(Re)read the model's folder and serve it; BadRequest keeps the old one serving."""
        directory = self._folder(model)
        async with self._lock(model):
            await self._load(model, directory)

    async def unload(self, model: str) -> None:
        """Stop serving the model; answers once requests in flight on it have finished."""
        known = model in self.registry.models or model in self._status
        if not known and not (_NAME.match(model) and (self.root / model / MANIFEST_FILE).is_file()):
            raise NotFound(f"unknown model '{model}'")  # before a lock is kept for the name
        async with self._lock(model):
            entry = self.registry.remove(model)
            if entry is None:
                return  # Triton: unloading a model that is not loaded is not an error
            self._status[model] = Status("UNAVAILABLE", "unloaded")
            log.info("unloading %s: draining requests in flight", model)
            await self._drain(entry)
            log.info("unloaded %s", model)

    async def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model folder and loaded variant with Triton's state and reason."""
        folders = await asyncio.to_thread(self._folders)
        rows: list[dict[str, str]] = []
        models = self.registry.models
        for name in sorted(set(folders) | set(models) | set(self._status)):
            entry = models.get(name)
            if entry is not None:
                rows.extend(_variant_row(rt) for rt in entry.runtimes.values())
                continue
            status = self._status.get(name, Status("UNAVAILABLE", "not loaded"))
            rows.append({"name": name, "version": "", **_status_fields(status)})
        return [row for row in rows if row["state"] == "READY"] if ready_only else rows

    # --- polling ---------------------------------------------------------------------------

    async def poll(self, every: float) -> None:
        """Load added folders, reload changed ones (model.json or files), unload removed ones."""
        await self._settled()
        self._seen = await asyncio.to_thread(self._fingerprints)
        log.info("polling %s every %.1f s for model changes", self.root, every)
        while True:
            await asyncio.sleep(every)
            try:
                await self.scan()
            except Exception:  # a bad scan must not end the polling
                log.exception("repository poll failed")

    async def scan(self) -> None:
        """One polling pass; a failed load is retried only once its folder changes again."""
        now = await asyncio.to_thread(self._fingerprints)
        for name, fingerprint in sorted(now.items()):
            if self._seen.get(name) == fingerprint:
                continue
            self._seen[name] = fingerprint
            log.info("repository poll: %s %s", name, "changed" if name in self.registry.models
                     else "added")  # fmt: skip
            try:
                await self.load(name)
            except (BadRequest, NotFound) as exc:
                log.error("repository poll: %s not loaded: %s", name, exc.message)
        for name in sorted(set(self._seen) - set(now)):
            del self._seen[name]
            if name in self.registry.models:
                log.info("repository poll: %s removed", name)
                await self.unload(name)
            self._status.pop(name, None)

    # --- inside ----------------------------------------------------------------------------

    async def _load(self, model: str, directory: Path) -> None:
        old = self.registry.models.get(model)
        if old is None:
            self._status[model] = Status("LOADING", "")
        try:
            entry = await asyncio.to_thread(self.registry.read_entry, directory)
            if entry.name != model:
                raise ValueError(f"its {MANIFEST_FILE} names the model '{entry.name}'")
        except (ValueError, OSError) as exc:
            self._refuse(model, old, str(exc))
        if (
            old is not None
            and old.manifest_sha256 == entry.manifest_sha256
            and all(rt.ready for rt in old.runtimes.values())
        ):
            log.info("load %s: unchanged and ready; kept", model)
            return
        models = max(len(self.registry.models), 1)
        budget = self.registry.settings.onbox_seconds / models
        await asyncio.to_thread(self.registry.load_entry, entry, budget)
        if not self.registry.acceptable(entry):
            failed = [f"{rt.variant}: {rt.error or 'failed'}" for rt in entry.runtimes.values()
                      if not rt.ready]  # fmt: skip
            self._refuse(model, old, "; ".join(failed))
        for runtime in entry.runtimes.values():
            self.metrics.variant(runtime.model, runtime.variant)  # series from the first scrape
        replaced = self.registry.install(entry)
        self._status.pop(model, None)
        states = ", ".join(f"{rt.variant} {rt.state.value}" for rt in entry.runtimes.values())
        log.info("%s %s (%s)", "reloaded" if replaced else "loaded", model, states)
        if replaced is not None:
            task = asyncio.create_task(self._drain(replaced))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def _refuse(self, model: str, old: ModelEntry | None, reason: str) -> NoReturn:
        """Raise the failed load's reason; the running entry (if any) stays as it is."""
        if old is None:
            self._status[model] = Status("UNAVAILABLE", f"failed to load: {reason}")
        kept = "; the loaded version keeps serving" if old is not None else ""
        log.error("load %s failed: %s%s", model, reason, kept)
        raise BadRequest(f"failed to load '{model}': {reason}{kept}")

    async def _drain(self, entry: ModelEntry) -> None:
        """Wait until no request is in flight on the entry's runtimes, then close their lanes.

        The wait is bounded by EDGE_DRAIN_SECONDS, as the drain after SIGTERM is.
        """
        runtimes = list(entry.runtimes.values())
        loop = asyncio.get_running_loop()
        drain_seconds = self.registry.settings.drain_seconds
        deadline = loop.time() + drain_seconds
        while any(self.inference.in_flight.get(rt, 0) for rt in runtimes):
            if loop.time() > deadline:
                log.warning("%s: requests still in flight after %.0f s", entry.name, drain_seconds)
                break
            await asyncio.sleep(0.01)
        for runtime in runtimes:
            self.inference.retire(runtime)

    async def _settled(self) -> None:
        """Wait for the start-up load (a worker thread) to finish before changing models."""
        while any(
            rt.state in (State.REGISTERED, State.LOADING) for rt in self.registry.all_runtimes()
        ):
            await asyncio.sleep(0.1)

    def _lock(self, model: str) -> asyncio.Lock:
        return self._locks.setdefault(model, asyncio.Lock())

    def _folder(self, model: str) -> Path:
        if not _NAME.match(model):
            raise NotFound(f"unknown model '{model}'")
        directory = self.root / model
        if not (directory / MANIFEST_FILE).is_file():
            raise NotFound(f"no model '{model}' in the repository (no {model}/{MANIFEST_FILE})")
        return directory

    def _folders(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [path.parent.name for path in self.root.glob(f"*/{MANIFEST_FILE}")]

    def _fingerprints(self) -> dict[str, str]:
        """Per folder: model.json's sha256 plus each ONNX file's size and mtime (cheap stats)."""
        prints: dict[str, str] = {}
        for name in self._folders():
            directory = self.root / name
            try:
                stats = sorted(
                    f"{p.relative_to(directory)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                    for p in directory.glob("*/*.onnx")
                )
                prints[name] = f"{file_sha256(directory / MANIFEST_FILE)}|{'|'.join(stats)}"
            except OSError:  # removed while we looked: the next pass sees it gone
                continue
        return prints


def _variant_row(runtime: ModelRuntime) -> dict[str, str]:
    state = {State.READY: "READY", State.FAILED: "UNAVAILABLE"}.get(runtime.state, "LOADING")
    return {"name": runtime.model, "version": runtime.variant, "state": state,
            "reason": runtime.error or ""}  # fmt: skip


def _status_fields(status: Status) -> dict[str, str]:
    return {"state": status.state, "reason": status.reason}


def install_repository(app: FastAPI, metrics: Metrics) -> Repository:
    """Add the repository routes, and polling (EDGE_REPOSITORY_POLL_SECONDS) to the lifespan."""
    from service.routes.repository import router

    repository = Repository(app.state.registry, app.state.inference, metrics)
    app.state.repository = repository
    app.include_router(router)
    every = app.state.settings.repository_poll_seconds
    if every is None:
        return repository
    inner: Callable[[FastAPI], AbstractAsyncContextManager[object]]
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with inner(app):
            polling = asyncio.create_task(repository.poll(every))
            yield
            polling.cancel()

    app.router.lifespan_context = lifespan
    return repository
