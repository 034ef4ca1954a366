"""MLServer's side of the bench's optional MLServer column: one ONNX file as a custom runtime.

This module runs inside the user's own MLServer install (its Python, not this project's venv):
`bench.mlserver` copies it into the model repository it writes for `mlserver start`. It is the
runtime MLServer's documentation has users write (decode with NumpyCodec, run, encode with
NumpyCodec), with the session options of the service and the minimal endpoint (full graph
optimisation, the given intra-op threads, no spinning), so the column measures the server.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    """session.run behind MLServer's V2 REST front end."""

    async def load(self) -> bool:
        """Open the session named by model-settings.json's `parameters.uri`."""
        extra = (self.settings.parameters.extra or {}) if self.settings.parameters else {}
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(extra.get("threads", 1))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = await get_model_uri(self.settings)
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._names = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        """Inputs decoded by MLServer's codec, outputs encoded by it: as MLServer users write it."""
        feed = {item.name: NumpyCodec.decode_input(item) for item in payload.inputs}
        results = self._session.run(self._names, feed)
        return InferenceResponse(
            model_name=self.name,
            outputs=[
                NumpyCodec.encode_output(name, array)
                for name, array in zip(self._names, results, strict=True)
            ],
        )
