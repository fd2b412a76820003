"""Stage 5: the gated segmenter as ONNX and TensorRT engines, verified against PyTorch."""
