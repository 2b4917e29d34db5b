"""Model configuration and the named presets (NanoVLMs, arXiv 2502.07838, Table 1).

Fields are prefixed by component: `vit_` vision encoder, `mp_` connector (modality projector),
`lm_` language decoder. Everything a preset fixes can be overridden, so a 64-px image for a fast
CPU run is a config value, not a fork.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, fields, replace

from .errors import TinyVLMError, UnknownConfigWarning, check_range
from .tokenizer import SPECIALS


STEMS = ("patch", "conv")  # the image encoder's patch embeddings (model/vision.py)

# Every number's allowed range, as check_range's arguments (TrainConfig checks its overrides of
# them by these too). The upper bounds are far beyond a tiny model and keep each size below
# the point where building it would overflow.
_SIZE, _RATIO = dict(lo=1, hi=65536, integer=True), dict(lo=0, hi=64, lo_open=True)
LIMITS = {
    "vit_image_size": dict(lo=1, hi=8192, integer=True, note="pixels"),
    "vit_patch_size": dict(lo=1, hi=8192, integer=True, note="pixels"),
    "vit_width": _SIZE, "vit_depth": dict(lo=1, hi=1024, integer=True), "vit_heads": _SIZE, "vit_mlp_ratio": _RATIO,
    "mp_pixel_shuffle": dict(lo=1, hi=8192, integer=True),
    "mp_summary_tokens": dict(lo=0, hi=8192, integer=True, note="0 = off"),
    "lm_width": _SIZE, "lm_depth": dict(lo=1, hi=1024, integer=True), "lm_heads": _SIZE, "lm_mlp_ratio": _RATIO,
    "lm_vocab_size": dict(lo=len(SPECIALS), hi=2**20, integer=True, note="tokens, the special ones included"),
    "lm_max_len": dict(lo=1, hi=2**20, integer=True, note="tokens"),
    "lm_rope_base": dict(lo=1, hi=1e9, lo_open=True),
    "dropout": dict(lo=0, hi=1, hi_open=True, note="a probability"),
}


@dataclass(frozen=True)
class VLMConfig:
    # vision encoder (ViT): patch embedding + [CLS] + learned positions + pre-LN blocks
    vit_image_size: int = 224
    vit_patch_size: int = 16
    vit_stem: str = "patch"  # patch embedding: "patch" (one linear map per patch) or "conv" (3x3 convs)
    vit_width: int = 400
    vit_depth: int = 1
    vit_heads: int = 8
    vit_mlp_ratio: float = 4.0
    # connector: optional pixel-shuffle (fewer, wider image tokens), then Linear + GELU
    mp_pixel_shuffle: int = 1
    # or K learned queries that summarise the patches (connector.Summariser; 0 = off): K + [CLS] tokens
    mp_summary_tokens: int = 0
    # causal decoder
    lm_width: int = 96
    lm_depth: int = 4
    lm_heads: int = 8
    lm_mlp_ratio: float = 4.0
    lm_vocab_size: int = 12288  # the reference size presets are counted at; set from the tokenizer
    lm_max_len: int = 2048      # the context: image tokens (+ 2 markers a picture) + text tokens
    lm_rope_base: float = 10000.0  # rotary positions (RoPE): no weights, so lm_max_len costs no parameters
    lm_tie_weights: bool = False
    dropout: float = 0.1

    def __post_init__(self):
        for name, limits in LIMITS.items():
            check_range(name, getattr(self, name), **limits)
        if not isinstance(self.lm_tie_weights, bool):
            raise TinyVLMError(f"lm_tie_weights must be true or false; got {self.lm_tie_weights!r}")
        if self.vit_image_size % self.vit_patch_size:
            raise TinyVLMError(f"image size {self.vit_image_size} is not a multiple of patch size {self.vit_patch_size}")
        if self.vit_stem not in STEMS:
            raise TinyVLMError(f"unknown vit_stem '{self.vit_stem}': use {' or '.join(STEMS)}")
        p = self.vit_patch_size
        if self.vit_stem == "conv" and (p < 4 or p & (p - 1)):
            raise TinyVLMError(f"the conv stem halves the picture per layer: its patch size must be a power of 2, >= 4; got {p}")
        grid = self.vit_image_size // self.vit_patch_size
        if grid % self.mp_pixel_shuffle:
            raise TinyVLMError(f"patch grid {grid} is not divisible by pixel-shuffle factor {self.mp_pixel_shuffle}")
        if self.mp_summary_tokens and self.mp_pixel_shuffle > 1:
            raise TinyVLMError("summary tokens replace the patch grid, so pixel-shuffle cannot apply: "
                               "use mp_summary_tokens or mp_pixel_shuffle, not both")
        for name, width, heads in (("vit", self.vit_width, self.vit_heads), ("lm", self.lm_width, self.lm_heads)):
            if width % heads:
                raise TinyVLMError(f"{name}_width {width} is not divisible by {name}_heads {heads}")
        if self.lm_width // self.lm_heads % 2:
            raise TinyVLMError(f"lm_width / lm_heads must be even (RoPE turns channels in pairs); got "
                               f"{self.lm_width} / {self.lm_heads} = {self.lm_width // self.lm_heads}")
        if self.image_tokens + 2 >= self.lm_max_len:
            raise TinyVLMError(f"{self.image_tokens} image tokens do not fit in lm_max_len {self.lm_max_len}")

    @property
    def image_tokens(self) -> int:
        """Tokens one image occupies in the decoder: the patch grid after pixel-shuffle (or the
        summary tokens), plus [CLS]."""
        if self.mp_summary_tokens:
            return self.mp_summary_tokens + 1
        grid = self.vit_image_size // self.vit_patch_size // self.mp_pixel_shuffle
        return grid * grid + 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict, strict: bool = True) -> "VLMConfig":
        """Fields this tinyvlm does not know are an error, or with `strict=False` a warning
        (UnknownConfigWarning) and ignored: a model folder written by a newer tinyvlm still loads."""
        if not isinstance(d, dict):
            raise TinyVLMError(f"the model config must be a JSON object; got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown and strict:
            raise TinyVLMError(f"unknown config field(s): {', '.join(unknown)}")
        if unknown:
            warnings.warn(f"the model config has field(s) this tinyvlm does not know, ignored: {', '.join(unknown)}",
                          UnknownConfigWarning, stacklevel=3)
        return cls(**{k: v for k, v in d.items() if k in known})


PRESETS: dict[str, VLMConfig] = {
    # for unit tests: trains in seconds
    "nano": VLMConfig(vit_image_size=32, vit_patch_size=8, vit_width=64, vit_depth=1, vit_heads=4,
                      lm_width=64, lm_depth=2, lm_heads=4, lm_vocab_size=512, lm_max_len=512),
    # the paper's three sizes (224 px, 16 px patches)
    "mini": VLMConfig(vit_width=400, vit_depth=1, vit_heads=8, lm_width=96, lm_depth=4, lm_heads=8),
    "base": VLMConfig(vit_width=512, vit_depth=3, vit_heads=8, lm_width=128, lm_depth=8, lm_heads=8),
    "large": VLMConfig(vit_width=512, vit_depth=5, vit_heads=8, lm_width=192, lm_depth=10, lm_heads=16),
}
PAPER_PARAMS = {"mini": 5e6, "base": 16e6, "large": 25e6}


def get_preset(name: str, **overrides) -> VLMConfig:
    """A preset by name, with any field overridden (None values are ignored)."""
    if name not in PRESETS:
        raise TinyVLMError(f"unknown preset '{name}': choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
