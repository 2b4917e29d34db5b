"""A small client for any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, Ollama, ...).

Used by the LLM judge and the caption rewriter. Standard library only, so judging and data building
need no SDK; every failure ends in a `TinyVLMError` that names the URL instead of a hang or a traceback.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException

from PIL import Image

from .data.images import load_image
from .errors import TinyVLMError, check_range

_RETRYABLE_STATUS = {408, 409, 429}  # plus every 5xx
_FENCE = re.compile(r"^```(?:json)?[ \t]*\n(.*)\n?```$", re.DOTALL)


@dataclass
class ChatClient:
    """POSTs to `{base_url}/chat/completions`. The API key is read from the environment variable
    `api_key_env` (never stored in configs); without it no Authorization header is sent, which is
    what local servers expect. Timeouts, connection errors, 429 and 5xx are retried `retries` times
    with exponential backoff (`backoff`, 2x, 4x, ... seconds)."""
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60
    retries: int = 3
    backoff: float = 1.0

    def __post_init__(self):
        check_range("timeout", self.timeout, 0, 86400, lo_open=True, note="seconds for each answer")
        check_range("retries", self.retries, 0, 100, integer=True)
        check_range("backoff", self.backoff, 0, 3600, note="seconds before the first retry")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def chat(self, messages: list[dict], temperature: float = 0.0, max_tokens: int = 512) -> str:
        """Send one conversation and return the assistant's reply text."""
        body = json.dumps({"model": self.model, "messages": messages,
                           "temperature": temperature, "max_tokens": max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if key := os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {key}"
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    return _reply_text(json.loads(resp.read()))
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}" + _error_detail(e)
                if e.code not in _RETRYABLE_STATUS and e.code < 500:
                    raise TinyVLMError(f"{self.url}: {last}") from None  # bad key, model, request
            except (OSError, HTTPException, ValueError, KeyError, IndexError, TypeError) as e:
                # OSError covers timeouts and refused/reset connections; the rest are garbled replies
                last = f"{e.__class__.__name__}: {e}"
        raise TinyVLMError(f"{self.url}: gave up after {self.retries + 1} attempts; last error: {last}")


def _error_detail(e: urllib.error.HTTPError) -> str:
    """The start of an error body (servers explain 400s there), or nothing if it cannot be read."""
    try:
        detail = " ".join(e.read(300).decode("utf-8", "replace").split())
    except (OSError, HTTPException):
        return ""
    return f": {detail}" if detail else ""


def _reply_text(response: dict) -> str:
    content = response["choices"][0]["message"]["content"]
    if isinstance(content, list):  # some servers answer with content parts
        content = "".join(part.get("text", "") for part in content)
    if not isinstance(content, str):
        raise ValueError("reply has no text content")
    return content


def image_part(path_or_pil: "str | os.PathLike | Image.Image", max_side: int = 512) -> dict:
    """An OpenAI `image_url` content part holding the image as a JPEG data URL, shrunk so its
    longer side is at most `max_side` (smaller requests, and most models downscale anyway)."""
    img = load_image(path_or_pil)
    img.thumbnail((max_side, max_side), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}"}}


def parse_json_object(text: str) -> dict:
    """Parse a reply that must be exactly one JSON object, bare or in a ```json fence.
    Anything else (prose around it, a list, broken JSON) raises ValueError with the reason."""
    text = text.strip()
    if fenced := _FENCE.match(text):
        text = fenced.group(1).strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not a JSON object: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj
