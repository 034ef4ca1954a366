"""The optional MLServer column: Seldon MLServer serving the same file, where it is installed.

MLServer pins its own FastAPI, uvicorn and pydantic, so it lives in a venv of its own (`make
mlserver` makes `.venv-mlserver`); the bench finds it through BENCH_MLSERVER (the `mlserver`
executable), that venv, or PATH. Each variant gets one MLServer process with one model, as the
minimal endpoint does, started with MLServer's defaults but three: loopback ports of its own,
inference in the server process (`parallel_workers: 0`: a worker pool only adds a process hop
on one core) and `debug: false` (debug turns on uvicorn's access log, which the service and the
minimal endpoint run without).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from loadtests.process import ServiceProcess, free_port, wait_for

VENV_EXECUTABLE = Path(".venv-mlserver/bin/mlserver")
# Imported by MLServer's Python only (mlserver is not a dependency of this project).
RUNTIME_FILE = Path(__file__).with_name("mlserver_runtime.py")
RUNTIME_MODULE = "mlserver_runtime"
START_SECONDS = 120.0  # MLServer imports much more than the service: ~5-10 s here


def mlserver_path() -> str | None:
    """The `mlserver` executable to bench against, or None (the column is left out)."""
    named = os.environ.get("BENCH_MLSERVER", "")
    if named.lower() in ("off", "0"):
        return None
    if named:
        if not Path(named).is_file():
            raise RuntimeError(f"BENCH_MLSERVER={named!r} is not a file")
        return named
    if VENV_EXECUTABLE.is_file():
        return str(VENV_EXECUTABLE.resolve())
    return shutil.which("mlserver")


def mlserver_version(executable: str) -> str:
    """`mlserver --version`'s number ("1.7.1"), for the report's versions line."""
    done = subprocess.run([executable, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip().rpartition(" ")[2] or "unknown"


def write_repository(folder: Path, model: str, model_file: Path, threads: int = 1) -> int:
    """MLServer's settings, one model's settings and the runtime module; returns the HTTP port."""
    port = free_port()
    (folder / model).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RUNTIME_FILE, folder / f"{RUNTIME_MODULE}.py")
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": 0,
        "debug": False,
    }
    model_settings: dict[str, Any] = {
        "name": model,
        "implementation": f"{RUNTIME_MODULE}.OnnxModel",
        "parameters": {"uri": str(model_file.resolve()), "extra": {"threads": threads}},
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (folder / model / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return port


def start_mlserver(
    executable: str, folder: Path, model: str, model_file: Path, log: Path, preexec: Any = None
) -> ServiceProcess:
    """`mlserver start` on a repository written for one model file; waits until it is ready."""
    port = write_repository(folder, model, model_file)
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [executable, "start", str(folder)],
            cwd=folder,
            stdout=handle,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )
    server = ServiceProcess(f"http://127.0.0.1:{port}", process, log)
    wait_for(server, "ready", START_SECONDS, interval=0.1)
    return server
