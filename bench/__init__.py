"""`make bench`: the service against ONNX Runtime's floor and a minimal endpoint, same core."""
