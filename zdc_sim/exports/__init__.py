"""The model outside this process: one ONNX graph, and a Triton model repository around it."""
