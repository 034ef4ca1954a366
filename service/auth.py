"""Optional bearer-token authentication as pure ASGI middleware (works under any route style)."""

from __future__ import annotations

import hashlib
import hmac
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from service.config import Settings
from service.errors import Unauthorized, error_response

log = logging.getLogger(__name__)

# Open without a token: probes, server metadata and the API docs. Everything else is
# protected (default deny), so a route added later is never open by accident.
OPEN_PATHS = frozenset(
    {"/v2", "/v2/health/live", "/v2/health/ready", "/openapi.json", "/docs", "/redoc"}
)
OPEN_PREFIXES = ("/docs/",)
METRICS_PATH = "/metrics"


def load_api_keys(settings: Settings) -> tuple[bytes, ...]:
    """Tokens from EDGE_API_KEYS and EDGE_API_KEYS_FILE; a configured file must hold one."""
    keys = [key.get_secret_value() for key in settings.api_keys]
    if settings.api_keys_file is not None:
        lines = settings.api_keys_file.read_text().splitlines()
        from_file = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if not from_file:
            # A mounted but empty secret must not silently turn authentication off.
            raise ValueError(f"EDGE_API_KEYS_FILE {settings.api_keys_file} holds no tokens")
        keys += from_file
    return tuple(_digest(key.encode()) for key in keys if key)


class BearerAuth:
    """401 unless `Authorization: Bearer <token>` matches a key; no keys means no auth."""

    def __init__(self, app: ASGIApp, keys: tuple[bytes, ...], protect_metrics: bool) -> None:
        self.app = app
        self.keys = keys
        self.protect_metrics = protect_metrics
        if keys:
            log.info(
                "bearer-token authentication on (%d tokens); /metrics %s",
                len(keys),
                "protected" if protect_metrics else "open",
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or self._is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        token = _bearer_token(scope)
        if token is not None and self._accepts(token):
            await self.app(scope, receive, send)
            return
        message = "missing bearer token" if token is None else "invalid bearer token"
        challenge = "Bearer" if token is None else 'Bearer error="invalid_token"'
        error = Unauthorized(f"{message} (send Authorization: Bearer <token>)", challenge)
        await error_response(error)(scope, receive, send)

    def _is_open(self, path: str) -> bool:
        if path == METRICS_PATH:
            return not self.protect_metrics
        return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)

    def _accepts(self, token: bytes) -> bool:
        """Compare against every key in constant time (equal-length digests, no early exit)."""
        digest = _digest(token)
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(digest, key)
        return matched


def _digest(token: bytes) -> bytes:
    # Hashing first makes every comparison the same length, so timing leaks no key length.
    return hashlib.sha256(token).digest()


def _bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return bytes(token.strip())
            return None
    return None
