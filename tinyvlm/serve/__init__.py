"""`tinyvlm serve`: an OpenAI-compatible HTTP server for a model, with a web page (docs/serving.md).
app.py holds the routes and limits, batcher.py the dynamic batcher, schema.py the wire format."""
from __future__ import annotations

import os
from pathlib import Path


def serve(model: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, config=None,
          device: str = "cpu") -> None:
    """Load the model in `model` and serve it until interrupted."""
    import uvicorn

    from ..api import TinyVLM
    from .app import ServeConfig, create_app
    vlm = TinyVLM.from_pretrained(model, device=device)
    app = create_app(vlm, config or ServeConfig(), name=Path(model).resolve().name)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
