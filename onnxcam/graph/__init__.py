"""ONNX graph work: loading, the tensor catalogue, exposing tensors and reverse-mode rewriting."""
