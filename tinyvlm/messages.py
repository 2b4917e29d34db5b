"""OpenAI-style chat messages -> the chat template's (role, text) turns and the pictures they hold.

A message is `{"role": "user" | "assistant" | "system", "content": str | [part, ...]}`, a part being
`{"type": "text", "text": ...}` or `{"type": "image_url", "image_url": {"url": ...}}` (the url may
also be given bare, as a string). A url is a data URL (`data:image/png;base64,...`) or a local path
(`file://` or plain). Each picture part becomes an `<image>` slot where it stands in the turn.
Nothing is ever fetched: an http(s) url is refused. A system message has no place in tinyvlm's
template (its models never trained on one), so it is refused rather than silently dropped.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
from typing import Any
from urllib.parse import unquote, urlparse

from PIL import Image

from .data.images import load_image
from .errors import TinyVLMError
from .tokenizer import IMAGE_SLOT

MAX_IMAGE_BYTES = 20 * 2**20  # an encoded picture in a data URL


def decode_image_url(url: str) -> "str | Image.Image":
    """A data URL -> a PIL image; a path or file:// URL -> the path. Raises TinyVLMError for
    remote URLs and malformed data."""
    if not isinstance(url, str) or not url:
        raise TinyVLMError("an image_url needs a 'url' string")
    scheme = url.split(":", 1)[0].lower() if ":" in url[:12] else ""
    if scheme in ("http", "https", "ftp"):
        raise TinyVLMError(f"tinyvlm never fetches pictures: send the picture itself as a data URL, not {url[:60]}")
    if scheme == "data":
        header, _, payload = url.partition(",")
        if ";base64" not in header or not payload:
            raise TinyVLMError("a data URL picture must be base64: data:image/<type>;base64,<data>")
        if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise TinyVLMError(f"the picture in the data URL is over {MAX_IMAGE_BYTES // 2**20} MiB")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise TinyVLMError("the data URL's base64 is malformed") from None
        try:
            im = Image.open(io.BytesIO(data))  # lazily: load_image checks the pixel limit before decoding
        except Exception as e:  # PIL raises many types on garbage; none may escape as a traceback
            raise TinyVLMError(f"the data URL does not hold a readable picture: {e.__class__.__name__}: {e}") from None
        return load_image(im)
    return unquote(urlparse(url).path) if scheme == "file" else os.fspath(url)


def _parts(content: Any, k: int) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
        raise TinyVLMError(f"message {k + 1}'s content must be a string or a list of parts")
    return content


def parse_messages(messages: Any) -> tuple[list[tuple[str, str]], list["str | Image.Image"]]:
    """OpenAI-style messages -> ((role, text) turns with <image> slots, pictures in slot order)."""
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
                ref = part.get("image_url")
                images.append(decode_image_url(ref.get("url") if isinstance(ref, dict) else ref))
                text.append(IMAGE_SLOT)
            else:
                raise TinyVLMError(f"message {k + 1}: unknown content part {str(part)[:60]} "
                                   "(a user's parts are text or image_url; an assistant's, text)")
        turns.append((m["role"], " ".join(text)))
    return turns, images
