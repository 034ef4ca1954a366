"""The one settings object: every knob, from EDGE_* environment variables or flags."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings; env prefix EDGE_ (e.g. EDGE_MODEL_REPOSITORY=/models)."""

    # hide_input_in_errors: a bad setting must not echo EDGE_API_KEYS into the log.
    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="ignore", hide_input_in_errors=True)

    model_repository: Path = Path("models")
    """Folder written by `python -m build_models`: <model>/model.json and one folder per variant."""

    variants: Annotated[tuple[str, ...], NoDecode] = ()
    """Variants to load (comma-separated, e.g. "fp32,int8"); empty loads every variant built."""

    default_variant: str | None = None
    """Variant used when a request names no version; unset uses each model's own default."""

    onbox_seconds: float = Field(0.5, ge=0, le=120)
    """Time budget for measuring every variant's latency here after warm-up (all models).

    Among the variants that passed the build's accuracy gate, the fastest on this box becomes
    the default (unless default_variant is set): the build machine's figures may not hold here.
    0 does not skip the measurement: the few rounds (and the batch probe) that the scheduler's
    row costs need still run, but their latencies are neither kept (metadata's
    onbox_latency_ms stays empty) nor used, so each model keeps the build's default.
    """

    repository_poll_seconds: float | None = Field(None, gt=0)
    """Rescan the repository this often: model folders added, changed or removed are loaded,
    reloaded or unloaded without a restart. Unset: only POST /v2/repository/... changes models."""

    threads: int = Field(1, ge=1, le=64)
    """ONNX Runtime intra-op threads per session (1 measured best for batch 1 on 2 cores)."""

    warmup_runs: int = Field(1, ge=1, le=100)
    """Runs of a real sample through each session before it is timed (at least 3 more runs)."""

    max_request_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Largest request body accepted; larger ones get 413."""

    max_batch_size: int = Field(64, ge=1)
    """Largest batch (first tensor axis) one request may carry."""

    host: str = "127.0.0.1"
    """Address to listen on (containers set 0.0.0.0)."""

    port: int = Field(8000, ge=1, le=65535)
    """TCP port to listen on."""

    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    """Log level for the service and uvicorn."""

    access_log: bool = False
    """One log line per HTTP request (uvicorn's access log); off by default: it costs ~10%."""

    max_concurrency: int | None = Field(None, ge=1, le=64)
    """session.run calls in flight per variant; unset: the usable cores / threads (at least 1)."""

    max_queue: int = Field(128, ge=1)
    """Requests waiting per variant for a place in its queue; one more gets a 503 at once."""

    queue_deadline_ms: float | None = Field(None, gt=0)
    """Longest wait for a place in the queue, then 503 + Retry-After; unset: 10 runs (>= 50 ms)."""

    batching: Literal["auto", "on", "off"] = "auto"
    """Zero-delay batching of queued requests: auto where timing at load shows it pays."""

    batch_rows: int = Field(32, ge=1)
    """Most rows one batched session.run combines from queued requests."""

    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    """Bearer tokens accepted (comma-separated); with none here or in api_keys_file, no auth."""

    api_keys_file: Path | None = None
    """File of bearer tokens, one per line (# comments allowed), e.g. a mounted Secret."""

    protect_metrics: bool = False
    """Require a token for /metrics too (Prometheus then sends one via `authorization`)."""

    tls_certfile: Path | None = None
    """PEM certificate (chain) to serve HTTPS; needs tls_keyfile."""

    tls_keyfile: Path | None = None
    """PEM private key of tls_certfile."""

    strict_readiness: bool = True
    """Ready only when every variant loaded (Triton's default); false: each model has one."""

    # --- bounds on what one request may make the server hold (service/bounds.py) ----------

    max_tensor_rank: int = Field(8, ge=1, le=32)
    """Most dimensions one input tensor may declare (numpy's own limit is 64)."""

    max_tensor_elements: int = Field(4 * 1024 * 1024, ge=1)
    """Most elements one input tensor may declare, checked from its shape before allocation."""

    max_tensor_bytes: int = Field(32 * 1024 * 1024, ge=1)
    """Most bytes one decoded input tensor may take (elements x datatype size)."""

    max_json_values: int = Field(2 * 1024 * 1024, ge=1)
    """Most values a JSON request body may hold, counted before it is parsed into Python objects."""

    max_json_output_values: int = Field(1024 * 1024, ge=1)
    """Most values one response may write as JSON; larger outputs must be asked for as binary."""

    max_sentences: int = Field(64, ge=1)
    """Most sentences one /tasks/{model}/embed request may send."""

    max_sentence_chars: int = Field(10_000, ge=1)
    """Longest sentence (in characters) /tasks/{model}/embed accepts."""

    max_image_pixels: int = Field(16_000_000, ge=1)
    """Largest image (width x height) a task endpoint decodes, read from its header first."""

    body_timeout_seconds: float = Field(30.0, gt=0)
    """Longest time a client may take to send its request body; then 408."""

    max_header_bytes: int = Field(64 * 1024, ge=1024)
    """Largest request line + headers accepted; larger ones get 431 and the connection closes.

    Twice nginx's default total (4 x 8 KB buffers), room for long bearer tokens and a proxy's
    headers; nothing past it is parsed or kept (service.http).
    """

    header_timeout_seconds: float = Field(10.0, gt=0)
    """Longest time a client may take to send its request line and headers, from connecting
    (or from a kept-alive request's first byte); then 408 and the connection closes."""

    drain_seconds: int = Field(30, ge=1, le=600)
    """After SIGTERM: how long in-flight requests may take before the process exits anyway.

    Also how long an unload or a reload waits for requests in flight on the old model.
    """

    @field_validator("variants", "api_keys", mode="before")
    @classmethod
    def _split_variants(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        """A certificate without its key (or the reverse) is a mistake, not plain HTTP."""
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("set both EDGE_TLS_CERTFILE and EDGE_TLS_KEYFILE, or neither")
        return self


@lru_cache
def get_settings() -> Settings:
    """Settings read once from the environment."""
    return Settings()
