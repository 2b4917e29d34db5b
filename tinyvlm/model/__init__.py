"""The model, one file per component: vision.py -> connector.py -> decoder.py, joined in vlm.py."""
from .vlm import IGNORE, VisionLanguageModel

__all__ = ["VisionLanguageModel", "IGNORE"]
