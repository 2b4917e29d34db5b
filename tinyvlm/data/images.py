"""The one image path: open a file (clear error if it is missing or corrupt), fit it to a square of
the model's size (pad or centre-crop), optionally augment, and normalise to a float tensor.

Every source (picture-book world, photos, the API, the server) goes through `load_image` and
`preprocess`, so a model sees the same pixels in training and in use.
"""
from __future__ import annotations

import os
import random
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import TinyVLMError

Fit = Literal["pad", "crop"]
MEAN, STD = 0.5, 0.5  # maps [0, 1] to [-1, 1]; we train from scratch, so ImageNet stats buy nothing


def load_image(source: "str | os.PathLike | Image.Image") -> Image.Image:
    """Open an image as RGB, fully decoded, or raise a TinyVLMError that names the file."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    path = os.fspath(source)
    if not os.path.exists(path):
        raise TinyVLMError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return im.convert("RGB")  # convert() forces a full decode, so truncated files fail here
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise TinyVLMError(f"cannot read image {path}: {e.__class__.__name__}: {e}") from None


def fit_square(img: Image.Image, size: int, fit: Fit = "pad") -> Image.Image:
    """Resize to size x size: 'pad' keeps the whole picture (letterbox, grey fill), 'crop' fills the
    square and cuts the longer side's edges."""
    if fit not in ("pad", "crop"):
        raise TinyVLMError(f"unknown fit '{fit}': use 'pad' or 'crop'")
    w, h = img.size
    if (w, h) == (size, size):
        return img
    if fit == "crop":
        return ImageOps.fit(img, (size, size), Image.BICUBIC)
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (size, size), (128, 128, 128))
    canvas.paste(img.resize((nw, nh), Image.BICUBIC), ((size - nw) // 2, (size - nh) // 2))
    return canvas


def augment(img: Image.Image, rng: random.Random) -> Image.Image:
    """Light, meaning-preserving jitter: small scale/shift and brightness. No flips: the captions
    say 'left of' and 'right of', and a flip would make them false."""
    w, h = img.size
    s = rng.uniform(0.9, 1.0)
    cw, ch = int(w * s), int(h * s)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.9, 1.1)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor (3, H, W), normalised."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return (torch.from_numpy(arr).permute(2, 0, 1) - MEAN) / STD


def preprocess(source: "str | os.PathLike | Image.Image", size: int, fit: Fit = "pad",
               rng: random.Random | None = None) -> torch.Tensor:
    """File or PIL image -> model input (3, size, size). Pass `rng` to augment (training only)."""
    img = fit_square(load_image(source), size, fit)
    if rng is not None:
        img = augment(img, rng)
    return to_tensor(img)
