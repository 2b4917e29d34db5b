"""Export a model for other runtimes: ONNX graphs (fp32 or int8 weights) and an onnxruntime
backend for the one decoding loop. Needs the `export` extra: pip install 'tinyvlm[export]'."""
from .graphs import export_onnx
from .runtime import OnnxBackend, is_export, load_onnx

__all__ = ["export_onnx", "OnnxBackend", "is_export", "load_onnx"]
