"""Edge inference service: FP32 and INT8 ONNX variants side by side over HTTP."""

__version__ = "0.1.0"
