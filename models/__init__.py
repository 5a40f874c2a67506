"""Model specs, parameter manifests and ONNX artifact building."""
