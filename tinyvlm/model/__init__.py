"""The model, one file per component: vision.py -> connector.py -> decoder.py, joined in vlm.py."""
from ..tokenizer import IGNORE
from .vlm import DecodeState, Trace, VisionLanguageModel

__all__ = ["VisionLanguageModel", "DecodeState", "Trace", "IGNORE"]
