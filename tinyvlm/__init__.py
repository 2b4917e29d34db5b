"""tinyvlm: small vision-language models you can train on a CPU."""
from .api import TinyVLM
from .config import PRESETS, VLMConfig, get_preset
from .errors import TinyVLMError
from .generate import Sampling

__version__ = "0.2.0"
__all__ = ["TinyVLM", "VLMConfig", "PRESETS", "get_preset", "Sampling", "TinyVLMError"]
