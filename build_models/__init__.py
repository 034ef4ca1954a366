"""Build-time pipeline: train or obtain models, export FP32 ONNX, quantize to INT8, gate, write."""
