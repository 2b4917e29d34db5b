"""`tinyvlm serve`: an OpenAI-compatible HTTP server for a model, with a web page (docs/serving.md).
app.py holds the routes and limits, batcher.py the dynamic batcher, schema.py the wire format."""
from __future__ import annotations

import os
from pathlib import Path


def default_threads() -> int:
    """Torch threads for the decoding worker: all cores but one, which the HTTP side (parsing, picture
    decoding, streaming) needs. On a small model, more threads than free cores make every op wait on
    a busy core: with 2 cores, 1 thread decoded 4-5x faster than 2 under load (docs/serving.md)."""
    return max(1, (os.cpu_count() or 2) - 1)


def serve(model: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, config=None,
          device: str = "cpu", threads: int | None = None, keep_tokens: float = 1.0, merge: int = 0) -> None:
    """Load the model in `model` and serve it until interrupted, decoding with `threads` torch threads
    (default: `default_threads()`). `keep_tokens` and `merge` spend fewer visual tokens, as in
    `TinyVLM.from_pretrained` (docs/visual_tokens.md)."""
    import torch
    import uvicorn

    from ..api import TinyVLM
    from .app import ServeConfig, create_app
    torch.set_num_threads(threads or default_threads())
    vlm = TinyVLM.from_pretrained(model, device=device, keep_tokens=keep_tokens, merge=merge)
    app = create_app(vlm, config or ServeConfig(), name=Path(model).resolve().name)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
