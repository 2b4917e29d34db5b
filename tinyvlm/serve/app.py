"""The HTTP server: OpenAI's chat completions (whole or streamed as Server-Sent Events), moondream's
caption and query, the model list, a health check and the web page, over one `Batcher`.

Every error a client can cause is a 4xx in OpenAI's shape, {"error": {"message", "type", "param",
"code"}}, and leaves the server serving. What a request may hold is bounded (`ServeConfig`): body
bytes, pictures, each picture's bytes and pixels, prompt tokens (the model's context) and
max_tokens. Pictures come inside the request (data URLs or bare base64): the server never fetches a
URL or reads a path for a client, and unpickles nothing.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from .. import __version__
from ..api import TinyVLM
from ..data.batches import MAX_TOKENS, ask_prompt, describe_prompt
from ..errors import TinyVLMError, check_range
from ..generate import Sampling
from ..messages import Accept, decode_image_url, parse_messages
from .batcher import Batcher, Job, QueueFull
from .schema import CaptionRequest, ChatRequest, QueryRequest

STATIC = Path(__file__).parent / "static"
# the page runs only its own script and sends only to its own server; pictures show as data: URLs
PAGE_POLICY = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'"
QUERY_TOKENS = 16  # TinyVLM.ask's budget: the model's answers are a word or two


@dataclass(frozen=True)
class ServeConfig:
    """What the server accepts, and how it batches. Sizes in bytes, pixels or tokens; time in seconds."""
    api_key: str | None = None           # when set, /v1/ needs "Authorization: Bearer <key>"
    max_body_bytes: int = 16 * 2**20     # a request's body
    max_images: int = 4                  # pictures in one request
    max_image_bytes: int = 8 * 2**20     # one encoded picture
    max_pixels: int = 4096 * 4096        # one picture, from its header, before decoding
    max_tokens: int = 256                # the most a request may ask the model to write
    max_batch: int = 8                   # requests decoded together
    max_queue: int = 64                  # requests waiting; more get 429
    timeout_s: float = 60.0              # from arrival to the last token

    def __post_init__(self):
        for name in ("max_body_bytes", "max_images", "max_image_bytes", "max_pixels", "max_tokens", "max_batch"):
            check_range(name, getattr(self, name), 1, integer=True)
        check_range("max_queue", self.max_queue, 0, integer=True)
        check_range("timeout_s", self.timeout_s, 0.01)


class APIError(Exception):
    """An answer other than 200, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, self.status, headers=self.headers)


class Guard:
    """ASGI middleware before anything reads a /v1/ request: the API key (401), then the body's size
    (413), counted as it arrives whatever Content-Length says. The body is read as JSON whatever its
    Content-Type says (`curl -d` sends form encoding), as other OpenAI-compatible servers do."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.expected and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            return await APIError(401, "a valid API key is needed: send 'Authorization: Bearer <key>'",
                                  code="invalid_api_key").response()(scope, receive, send)
        too_large = APIError(413, f"the request body is over the limit of {self.max_body_bytes:,} bytes",
                             code="request_too_large").response()
        if int(headers.get(b"content-length", b"0") or 0) > self.max_body_bytes:
            return await too_large(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                return await too_large(scope, receive, send)
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                 + [(b"content-type", b"application/json")]}
        replayed = False

        async def replay():  # the body once, then the client's own messages (its disconnect)
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


class StopText:
    """Cuts a streamed text at the first of its stop strings, holding back any tail that could be the
    start of one, so no part of a stop string is ever sent."""

    def __init__(self, stops: list[str]):
        self.stops, self.held = [s for s in stops if s], ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """-> (text that is safe to send, whether a stop string ended the answer)"""
        text = self.held + piece
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.held = ""
            return text[: min(found)], True
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def create_app(vlm: TinyVLM, config: ServeConfig = ServeConfig(), name: str = "tinyvlm") -> FastAPI:
    """The server for one model: start it with uvicorn (`tinyvlm.serve.serve` does)."""
    batcher = Batcher(vlm, config.max_batch, config.max_queue)
    # requests being read and prepared at once (decoding pictures, preprocessing): more than the
    # cores would only queue on them; the rest wait their turn, bounded by the server's connections
    preparing = anyio.CapacityLimiter(max(2, os.cpu_count() or 2))
    accept = Accept(files=False, max_images=config.max_images, max_image_bytes=config.max_image_bytes,
                    max_pixels=config.max_pixels)

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="tinyvlm", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="An OpenAI-compatible API for a tinyvlm model (docs/serving.md).")
    app.state.batcher = batcher
    app.add_middleware(Guard, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return e.response()

    @app.exception_handler(TinyVLMError)
    async def _user_error(request, e: TinyVLMError):
        return APIError(400, str(e)).response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        first = e.errors()[0]
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            return APIError(400, "the request body is not valid JSON", code="json_invalid").response()
        where = ".".join(loc) or "body"
        return APIError(400, f"{where}: {first.get('msg', 'invalid')}", param=where or None,
                        code=first.get("type")).response()

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return APIError(e.status_code, str(e.detail), kind, headers=e.headers).response()

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):
        return APIError(500, "the server failed on this request (its log says why)", "server_error").response()

    # --- helpers of the routes --------------------------------------------------------------------
    def sampling_of(body: ChatRequest) -> Sampling:
        asked = body.max_completion_tokens or body.max_tokens or min(config.max_tokens, MAX_TOKENS["long"])
        if asked > config.max_tokens:
            raise APIError(400, f"max_tokens is {asked}; this server writes at most {config.max_tokens}",
                           param="max_tokens", code="max_tokens_too_large")
        return Sampling(max_new_tokens=asked, temperature=body.temperature or 0.0,
                        top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed)

    def prompt_tokens(turns, pictures) -> int:
        ids = vlm.tokenizer.encode_conversation(turns, vlm.model.image_token_counts(len(pictures)), "").ids
        if len(ids) >= vlm.cfg.lm_max_len:
            raise APIError(400, f"the prompt is {len(ids)} tokens; this model reads at most {vlm.cfg.lm_max_len - 1} "
                           f"(a picture takes {vlm.cfg.image_tokens + 2})", param="messages",
                           code="context_length_exceeded")
        return len(ids)

    def prepare(read) -> tuple[list[tuple[str, str]], list, int]:
        """On a pool thread, everything a request needs before it can join a batch: its turns and
        pictures (`read()`: decoding base64 and PNG, whose decoder lets go of the GIL), its prompt's
        length in tokens (an APIError 400 past the context) and its pictures as the model's input
        pixels: the batcher's thread then does no per-request work but decoding, and the queue holds
        no full-size picture."""
        turns, pictures = read()
        n = prompt_tokens(turns, pictures)
        return turns, list(vlm.pixels(pictures)) if pictures else [], n

    async def start(read, sampling: Sampling) -> tuple[Job, int]:
        turns, pixels, n = await anyio.to_thread.run_sync(prepare, read, limiter=preparing)
        job = Job(turns, pixels, sampling)
        try:
            batcher.submit(job)
        except QueueFull as e:
            raise APIError(429, f"the server is busy ({e}): retry in a moment", "rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        return job, n

    async def pieces(job: Job, stops: list[str], request: Request | None = None) -> AsyncIterator[tuple[str, str | None, int]]:
        """(text, finish, tokens written so far) as the job decodes, its last with a finish reason.
        Leaving early (a disconnect, a timeout, a stop string) cancels the job's decoding."""
        deadline = time.monotonic() + config.timeout_s
        held, n = StopText(stops), 0
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise APIError(504, f"no answer within the server's timeout of {config.timeout_s:g} s",
                                   "timeout_error", code="timeout")
                try:
                    item = await asyncio.wait_for(job.events.get(), min(left, 0.5))
                except asyncio.TimeoutError:
                    if request is not None and await request.is_disconnected():
                        return
                    continue
                if isinstance(item, TinyVLMError):
                    raise APIError(400, str(item))
                if isinstance(item, Exception):
                    raise APIError(500, f"decoding failed: {item}", "server_error")
                n += 1
                text, stopped = held.feed(item.text)
                if stopped or item.finish:
                    yield (text if stopped else text + held.flush()), "stop" if stopped else item.finish, n
                    return
                if text:
                    yield text, None, n
        finally:
            job.cancel()

    async def whole(job: Job, stops: list[str], request: Request) -> tuple[str, str | None, int]:
        """The job's whole text, its finish reason and the tokens it wrote."""
        parts, finish, n = [], None, 0
        async for text, finish, n in pieces(job, stops, request):
            parts.append(text)
        return "".join(parts), finish, n

    def usage(prompt: int, written: int) -> dict:
        return {"prompt_tokens": prompt, "completion_tokens": written, "total_tokens": prompt + written}

    async def answer(job: Job, prompt: int, key: str, stream: bool, request: Request):
        """moondream's reply: {key: text} whole, or SSE {"chunk": text} ... {"completed": true}."""
        if not stream:
            text, finish, n = await whole(job, [], request)
            return JSONResponse({key: text, "finish_reason": finish, "usage": usage(prompt, n)})

        async def events():
            try:
                async for text, finish, n in pieces(job, []):
                    if text:
                        yield sse({"chunk": text})
                    if finish:
                        yield sse({"chunk": "", "completed": True, "finish_reason": finish, "usage": usage(prompt, n)})
            except APIError as e:
                yield sse(e.body)
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # --- routes --------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "waiting": batcher.waiting(), **batcher.stats}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "tinyvlm"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        sampling = sampling_of(body)
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        job, prompt = await start(lambda: parse_messages(messages, accept), sampling)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": ident, "created": created, "model": name}

        if not body.stream:
            text, finish, n = await whole(job, stops, request)
            # plain JSON as it is: a returned dict would go through FastAPI's jsonable_encoder, 0.9 ms
            # of each request's event-loop time under cProfile (docs/serving.md#load)
            return JSONResponse({**head, "object": "chat.completion", "usage": usage(prompt, n),
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": finish, "logprobs": None}]})

        def chunk(delta: dict, finish: str | None = None) -> str:
            return sse({**head, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            try:
                async for text, finish, n in pieces(job, stops):
                    if text:
                        yield chunk({"content": text})
                    if finish:
                        yield chunk({}, finish)
                        if body.stream_options and body.stream_options.include_usage:
                            yield sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage(prompt, n)})
            except APIError as e:
                yield sse(e.body)
            yield sse("[DONE]")
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/caption")
    async def caption(body: CaptionRequest, request: Request):
        style = "short" if body.length == "short" else "long"
        sampling = Sampling(max_new_tokens=min(MAX_TOKENS[style], config.max_tokens))
        job, prompt = await start(lambda: ([("user", describe_prompt(style))], [decode_image_url(body.image_url, accept)]),
                                  sampling)
        return await answer(job, prompt, "caption", body.stream, request)

    @app.post("/v1/query")
    async def query(body: QueryRequest, request: Request):
        if not body.question.strip():
            raise APIError(400, "the question is empty", param="question")
        sampling = Sampling(max_new_tokens=min(QUERY_TOKENS, config.max_tokens))
        job, prompt = await start(lambda: ([("user", ask_prompt(body.question))], [decode_image_url(body.image_url, accept)]),
                                  sampling)
        return await answer(job, prompt, "answer", body.stream, request)

    return app
