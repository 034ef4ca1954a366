"""The one settings object: every knob, from EDGE_* environment variables or flags."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings; env prefix EDGE_ (e.g. EDGE_MODEL_REPOSITORY=/models)."""

    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="ignore")

    model_repository: Path = Path("models")
    """Folder written by `python -m build_models`: <model>/model.json and one folder per variant."""

    variants: Annotated[tuple[str, ...], NoDecode] = ()
    """Variants to load (comma-separated, e.g. "fp32,int8"); empty loads every variant built."""

    default_variant: str | None = None
    """Variant used when a request names no version; unset uses each model's own default."""

    threads: int = Field(1, ge=1, le=64)
    """ONNX Runtime intra-op threads per session (1 measured best for batch 1 on 2 cores)."""

    warmup_runs: int = Field(3, ge=1, le=100)
    """Runs of a real sample through each session before it is reported ready."""

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

    @field_validator("variants", mode="before")
    @classmethod
    def _split_variants(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


@lru_cache
def get_settings() -> Settings:
    """Settings read once from the environment."""
    return Settings()
