"""Export to ONNX, verified in onnxruntime."""
from convformer.export.onnx import export_onnx, onnx_session

__all__ = ["export_onnx", "onnx_session"]
