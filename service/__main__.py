"""`python -m service`: serve the model repository with uvicorn (one worker)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import types
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.config import Settings
from service.http import CoalescingHttpToolsProtocol
from service.registry import EmptyRepository, manifest_paths


def main(argv: list[str] | None = None) -> None:
    """`python -m service`: flags over EDGE_* settings, then uvicorn with the tuned protocol."""
    parser = argparse.ArgumentParser(
        prog="service", description="Serve FP32 and INT8 models (settings also from EDGE_* env)."
    )
    parser.add_argument("--host", help="listen address (EDGE_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (EDGE_PORT, default 8000)")
    parser.add_argument("--repository", type=Path, help="model repository (EDGE_MODEL_REPOSITORY)")
    parser.add_argument("--log-level", help="critical|error|warning|info|debug (EDGE_LOG_LEVEL)")
    args = parser.parse_args(argv)
    overrides = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "model_repository": args.repository,
            "log_level": args.log_level,
        }.items()
        if value is not None
    }
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:  # before uvicorn: an empty repository is one line of advice, not a traceback
        manifest_paths(settings.model_repository)
    except EmptyRepository as exc:
        logging.getLogger("service").error("%s", exc)
        sys.exit(3)  # uvicorn.run's exit code for a failed start-up
    # uvicorn drains on SIGTERM, restores this handler, then re-raises the signal: exit 0 then.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        # uvloop + httptools (dependencies), measured the fastest here; one send per answer;
        # request heads and trailers bounded (httptools alone parses any size, for any time),
        # and what that refuses counted in the app's metrics.
        loop="auto",
        http=CoalescingHttpToolsProtocol.limited(
            settings.max_header_bytes, settings.header_timeout_seconds, app.state.metrics.refused
        ),
        # No X-Forwarded-* rewriting (nothing here reads the client address) and no Server
        # header to advertise: each cost every request a pass over its headers.
        proxy_headers=False,
        server_header=False,
        workers=1,
        # Requests in flight at SIGTERM get this long to finish (deploy/k8s grace period fits it).
        timeout_graceful_shutdown=settings.drain_seconds,
        ssl_certfile=settings.tls_certfile,
        ssl_keyfile=settings.tls_keyfile,
    )
    server = DrainingServer(config, app)
    server.run()
    if not server.started:
        sys.exit(3)  # uvicorn.run's exit code for a failed start-up


class DrainingServer(uvicorn.Server):
    """uvicorn's server; SIGTERM/SIGINT first mark the app as draining (readiness 503)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: types.FrameType | None) -> None:
        """Not ready from the first signal on; uvicorn then stops accepting and drains."""
        self.app.state.draining = True
        super().handle_exit(sig, frame)


def _exit_cleanly(signum: int, frame: types.FrameType | None) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    main()
