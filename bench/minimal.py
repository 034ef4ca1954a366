"""The baseline every ratio is measured against: a minimal single-file V2 JSON endpoint.

FastAPI + uvicorn + onnxruntime as one would write it in an afternoon: session.run inline on
the event loop, orjson both ways, the same session options as the service (full graph
optimisation, the same intra-op threads, no spinning), no access log. One model file per
process. `python -m bench.minimal MODEL_FILE --port P`.
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32,
          "UINT8": np.uint8, "INT8": np.int8, "BOOL": np.bool_}  # fmt: skip
NAMES = {np.dtype(value): key for key, value in DTYPES.items()}


def create_app(model_file: str, threads: int = 1) -> FastAPI:
    """One session, one POST route, one health route."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    app = FastAPI()

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Response:
        body = orjson.loads(await request.body())
        feed = {
            t["name"]: np.asarray(t["data"], dtype=DTYPES[t["datatype"]]).reshape(t["shape"])
            for t in body["inputs"]
        }
        results = session.run(names, feed)
        outputs = [
            {"name": name, "datatype": NAMES[a.dtype], "shape": list(a.shape), "data": a.ravel()}
            for name, a in zip(names, results, strict=True)
        ]
        return Response(
            orjson.dumps(
                {"model_name": model, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY
            ),
            media_type="application/json",
        )

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.minimal", description=__doc__)
    parser.add_argument("model_file")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    app = create_app(args.model_file, args.threads)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
