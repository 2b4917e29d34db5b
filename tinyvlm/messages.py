"""OpenAI-style chat messages -> the chat template's (role, text) turns and the pictures they hold.

A message is `{"role": "user" | "assistant" | "system", "content": str | [part, ...]}`, a part being
`{"type": "text", "text": ...}` or `{"type": "image_url", "image_url": {"url": ...}}` (the url may
also be given bare, as a string). A url is a data URL (`data:image/png;base64,...`), bare base64
(as Ollama sends), or a local path (`file://` or plain; `Accept(files=False)` refuses paths, as the
server does). Each picture part becomes an `<image>` slot where it stands in the turn.
Nothing is ever fetched: an http(s) url is refused. A system message has no place in tinyvlm's
template (its models never trained on one), so it is refused rather than silently dropped.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from PIL import Image

from .data.images import MAX_PIXELS, load_image
from .errors import TinyVLMError
from .tokenizer import IMAGE_SLOT

MAX_IMAGE_BYTES = 20 * 2**20  # an encoded picture in a data URL


_BASE64 = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")


@dataclass(frozen=True)
class Accept:
    """What a caller takes in pictures: local files or not (a server must not read its own disk for
    a client), how many pictures a conversation may hold (None = any), and how large each may be:
    encoded bytes, and pixels (checked from the header, before decoding)."""
    files: bool = True
    max_images: int | None = None
    max_image_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_PIXELS


def decode_image_url(url: str, accept: Accept = Accept()) -> "str | Image.Image":
    """A data URL or bare base64 -> a PIL image; a path or file:// URL -> the path (when `accept`
    takes files). Raises TinyVLMError for remote URLs, refused paths and malformed data."""
    if not isinstance(url, str) or not url:
        raise TinyVLMError("an image_url needs a 'url' string")
    scheme = url.split(":", 1)[0].lower() if ":" in url[:12] else ""
    if scheme in ("http", "https", "ftp"):
        raise TinyVLMError(f"tinyvlm never fetches pictures: send the picture itself as a data URL, not {url[:60]}")
    if scheme == "data":
        header, _, payload = url.partition(",")
        if ";base64" not in header or not payload:
            raise TinyVLMError("a data URL picture must be base64: data:image/<type>;base64,<data>")
        return _decode_base64(payload, "the data URL", accept)
    if not accept.files:
        if scheme:
            raise TinyVLMError(f"a picture must be a data URL or base64, not a {scheme}: URL (no files are read)")
        return _decode_base64(url.strip(), "the base64 picture", accept)
    if not scheme and _BASE64.fullmatch(url.strip()) and not os.path.exists(url):
        return _decode_base64(url.strip(), "the base64 picture", accept)
    return unquote(urlparse(url).path) if scheme == "file" else os.fspath(url)


def _decode_base64(payload: str, what: str, accept: Accept) -> Image.Image:
    if len(payload) > accept.max_image_bytes * 4 // 3 + 4:
        raise TinyVLMError(f"the picture in {what} is over the limit of {accept.max_image_bytes:,} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise TinyVLMError(f"{what}'s base64 is malformed") from None
    try:
        im = Image.open(io.BytesIO(data))  # lazily: the pixel limits are checked before decoding
    except Exception as e:  # PIL raises many types on garbage; none may escape as a traceback
        raise TinyVLMError(f"{what} does not hold a readable picture: {e.__class__.__name__}: {e}") from None
    w, h = im.size
    if w * h > accept.max_pixels:
        raise TinyVLMError(f"the picture in {what} is {w}x{h} = {w * h:,} pixels, more than the limit of "
                           f"{accept.max_pixels:,}")
    return load_image(im)


def _parts(content: Any, k: int) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
        raise TinyVLMError(f"message {k + 1}'s content must be a string or a list of parts")
    return content


def parse_messages(messages: Any, accept: Accept = Accept()) -> tuple[list[tuple[str, str]], list["str | Image.Image"]]:
    """OpenAI-style messages -> ((role, text) turns with <image> slots, pictures in slot order),
    taking pictures as `accept` says."""
    if not isinstance(messages, list) or not messages:
        raise TinyVLMError("messages must be a non-empty list of {role, content} objects")
    turns, images = [], []
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "system"):
            raise TinyVLMError(f"message {k + 1} needs a 'role' of 'user' or 'assistant'")
        if m["role"] == "system":
            raise TinyVLMError("tinyvlm's models have no system turn: put the instruction in the user's message")
        text = []
        for part in _parts(m.get("content"), k):
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                if IMAGE_SLOT in part["text"]:
                    raise TinyVLMError(f"message {k + 1}: put pictures in image_url parts, not as {IMAGE_SLOT} text")
                text.append(part["text"])
            elif kind == "image_url" and m["role"] == "user":
                if accept.max_images is not None and len(images) >= accept.max_images:
                    raise TinyVLMError(f"more than {accept.max_images} picture(s) in one request")
                ref = part.get("image_url")
                images.append(decode_image_url(ref.get("url") if isinstance(ref, dict) else ref, accept))
                text.append(IMAGE_SLOT)
            else:
                raise TinyVLMError(f"message {k + 1}: unknown content part {str(part)[:60]} "
                                   "(a user's parts are text or image_url; an assistant's, text)")
        turns.append((m["role"], " ".join(text)))
    return turns, images
