"""The one image path: open a file (clear error if it is missing, corrupt or too large), bring any
pixel format to 8-bit RGB, fit it to a square of the model's size (pad or centre-crop), optionally
augment, and normalise to a float tensor.

Every source (picture-book world, photos, the API, the server) goes through `load_image` and
`preprocess`, so a model sees the same pixels in training and in use.

What any picture becomes (`to_rgb`), whether it comes as a path or as a PIL image:
- EXIF orientation is applied, so the pixels are upright as the camera meant them.
- Transparency (RGBA, LA, PA, premultiplied RGBa/La, palette or RGB/L with a transparent colour) is
  composited on one background, `BACKGROUND` (white): colours under transparent pixels never reach
  the model, and a picture and its twin flattened on white give the same pixels.
- Formats that are not 8 bits per channel are scaled to 0-255 by their true range: 16-bit greyscale
  (I;16, I;16B, ...) by 0-65535; 32-bit integer (I) and float (F) by the first of 0-1 (float only),
  0-255 and 0-65535 that holds all their values, else by their own min..max (a constant image then
  becomes black; NaN counts as the minimum). Bilevel (1) is 0 or 255.
- A file that declares more than `MAX_PIXELS` pixels is refused before it is decoded.
"""
from __future__ import annotations

import os
import random
import re
import warnings
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import TinyVLMError
from ..text import words

Fit = Literal["pad", "crop"]
MEAN, STD = 0.5, 0.5  # maps [0, 1] to [-1, 1]; we train from scratch, so ImageNet stats buy nothing
# The one pixel limit: a file declaring more (e.g. a 69-byte PNG that claims 20000x20000) is refused
# before decoding. 2**27 = 134,217,728 pixels (16384 x 8192; 400 MB as RGB) holds any camera photo.
# It is checked here for every image, whatever PIL's own per-process Image.MAX_IMAGE_PIXELS says.
MAX_PIXELS = 2 ** 27
BACKGROUND = (255, 255, 255)  # what transparent pixels become: white, as browsers show a PNG
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def load_image(source: "str | os.PathLike | Image.Image") -> Image.Image:
    """Open an image as 8-bit RGB (see `to_rgb`), fully decoded, or raise a TinyVLMError that names
    the file. Every failure of the image library on open, decode or convert becomes that one error."""
    if isinstance(source, Image.Image):
        name = f"the given PIL image{f' ({source.filename})' if getattr(source, 'filename', '') else ''}"
        with _image_errors(name):
            return to_rgb(_within_limit(source, name))
    path = os.fspath(source)
    if not os.path.exists(path):
        raise TinyVLMError(f"image not found: {path}")
    with _image_errors(path), Image.open(path) as im:
        return to_rgb(_within_limit(im, path))  # converting forces a full decode: truncation fails here


def _within_limit(im: Image.Image, name: str) -> Image.Image:
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise TinyVLMError(f"cannot read image {name}: it declares {w}x{h} = {w * h:,} pixels, more than "
                           f"the limit of {MAX_PIXELS:,} (tinyvlm.data.images.MAX_PIXELS)")
    return im


@contextmanager
def _image_errors(name: str):
    """Turn whatever the image library raises into one TinyVLMError naming the file."""
    try:
        with warnings.catch_warnings():  # MAX_PIXELS replaces PIL's bomb warning, and its warnings
            warnings.simplefilter("ignore")  # about corrupt EXIF or palettes are not the user's lines
            yield
    except TinyVLMError:
        raise
    except Image.DecompressionBombError as e:  # PIL's per-process check, which fires inside open()
        n = re.search(r"\((\d+) pixels\)", str(e))
        declared = f"{int(n.group(1)):,} pixels" if n else "too many pixels"
        raise TinyVLMError(f"cannot read image {name}: it declares {declared}, more than the limit of "
                           f"{MAX_PIXELS:,} (tinyvlm.data.images.MAX_PIXELS)") from None
    except Exception as e:  # noqa: BLE001 - PIL's plugins raise OSError (UnidentifiedImageError),
        # SyntaxError, ValueError, struct.error, EOFError, IndexError, KeyError, TypeError,
        # ZeroDivisionError, MemoryError... on files they cannot read: all mean "not a usable picture"
        detail = f"{e.__class__.__name__}: {e}" if str(e) else e.__class__.__name__
        raise TinyVLMError(f"cannot read image {name}: {detail}") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image -> a new 8-bit RGB image, upright, transparency on BACKGROUND, high bit depths
    scaled by their true range (the rules are in this module's docstring). `im` is not changed."""
    im = ImageOps.exif_transpose(im)  # always a copy
    if im.mode in ("La", "RGBa"):  # premultiplied alpha
        im = im.convert(im.mode.upper())
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")  # palette, L and RGB with a transparent colour get their alpha here
        return Image.alpha_composite(Image.new("RGBA", im.size, BACKGROUND + (255,)), rgba).convert("RGB")
    return im.convert("RGB")


def _to_8bit(im: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float greyscale image -> mode L (keeping a transparent value as
    an alpha channel, mode LA)."""
    a = np.asarray(im).astype(np.float64)
    finite = np.isfinite(a)
    lo, hi = (a[finite].min(), a[finite].max()) if finite.any() else (0.0, 0.0)
    a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    if im.mode.startswith("I;16"):
        top, bottom = 65535.0, 0.0
    else:
        ranges = ([(0.0, 1.0)] if im.mode == "F" else []) + [(0.0, 255.0), (0.0, 65535.0)]
        bottom, top = next(((b, t) for b, t in ranges if b <= lo and hi <= t), (lo, hi if hi > lo else lo + 1))
    grey = Image.fromarray(np.rint((a - bottom) / (top - bottom) * 255).clip(0, 255).astype(np.uint8), "L")
    key = im.info.get("transparency")
    if isinstance(key, (int, float)):
        grey.putalpha(Image.fromarray(np.where(np.asarray(im) == key, 0, 255).astype(np.uint8), "L"))
    return grey


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


# Words that name a colour, for `augment`'s rule "jitter colour only where the text names none":
# Berlin & Kay's eleven basic colour terms of English (Basic Color Terms, 1969), their spellings
# and plurals, the words that ask for or describe colour, and the other colours common in
# Flickr8k's captions. An English language fact, not a dataset's: the core keeps it.
BASIC_COLOURS = ("black", "white", "red", "green", "yellow", "blue", "brown", "orange", "pink", "purple",
                 "grey", "gray")
COLOUR_WORDS = frozenset(BASIC_COLOURS) | frozenset("""
    blacks whites reds greens yellows blues browns oranges pinks purples greys grays
    bluish purplish whitish orangish
    colour color colours colors coloured colored colourful colorful multicoloured multicolored
    blond blonde blondes brunette brunettes auburn gold golden silver copper bronze tan beige khaki
    maroon burgundy violet navy turquoise teal aqua cyan magenta fuchsia lavender crimson scarlet
    emerald lime peach cream neon rainbow camouflage
""".split())
AUGMENTS = ("light", "colour")  # --augment MODE; bare --augment is light


def names_colour(text: str) -> bool:
    """Does `text` name a colour? True when a word (case and punctuation ignored; English, ASCII
    letters) is one of COLOUR_WORDS or starts with a basic term: "RED." and "Grey-ish" count, and
    so do "reddish", "redheaded", "bluejeans" and "bluebird" (a bluebird turned orange makes its
    caption false). The rule errs toward yes: a wrong yes ("greenhouse", "reduce") only skips one
    colour jitter, a wrong no teaches the model a false caption."""
    return any(w in COLOUR_WORDS or w.startswith(BASIC_COLOURS) for w in words(text))


def augment(img: Image.Image, rng: random.Random, mode: str = "light", text: str = "",
            colour_rng: random.Random | None = None) -> Image.Image:
    """Meaning-preserving jitter, drawn from `rng`: small scale/shift and brightness. No flips: the
    captions say 'left of' and 'right of', and a flip would make them false.

    `mode="colour"` (--augment colour) also rotates the hue by a uniform draw of the whole circle
    and scales the saturation by 0.6-1.4 (SimCLR's colour distortion, Chen et al. 2020, without
    its greyscale draw), so that what the encoder learns about a thing holds across its colours;
    but only when `text`, what the picture is read with this time (the caption, the question and
    answer, the conversation; "" for none), names no colour (`names_colour`): "a red ball" stays
    red. Grey, black and white stay as they are (no saturation to rotate). Otherwise the draws
    and the result are exactly those of the light jitter.

    `colour_rng`, when given, draws the hue and saturation instead of `rng`. The collator passes
    one seeded per example, so that all its pictures turn alike: two red things of an in-context
    "Do they match? yes" stay one colour.

    Any PIL image (greyscale, palette, RGBA, 16-bit ...) is read as `to_rgb` reads it; the result
    is 8-bit RGB. An unknown `mode` raises TinyVLMError."""
    if mode not in AUGMENTS:
        raise TinyVLMError(f"unknown augment mode {mode!r}: use {' or '.join(AUGMENTS)}")
    if img.mode != "RGB":  # brightness scales values: a palette's indices or 16-bit levels are not colours
        img = to_rgb(img)
    w, h = img.size
    s = rng.uniform(0.9, 1.0)
    cw, ch = int(w * s), int(h * s)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.9, 1.1)
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    if mode == "colour" and not names_colour(text):
        hsv = np.asarray(img.convert("HSV"), dtype=np.float32)
        draw = colour_rng or rng
        hsv[..., 0] = (hsv[..., 0] + draw.uniform(0, 256)) % 256
        hsv[..., 1] *= draw.uniform(0.6, 1.4)
        img = Image.fromarray(hsv.clip(0, 255).astype(np.uint8), "HSV").convert("RGB")
    return img


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
