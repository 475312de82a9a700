"""Dispatch policies: networks over (courier, candidate) features, log batching, ONNX export."""
