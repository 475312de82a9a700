"""The gRPC decision service (grpcio + onnxruntime, never torch): see docs/serving.md. Imports nothing itself."""
