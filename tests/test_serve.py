"""`tinyvlm serve` against a real uvicorn server on 127.0.0.1 (a free port), with a random nano model:
the official openai client, SSE streaming, moondream's caption/query, every malformed payload
answered 4xx in OpenAI's shape while the server keeps serving, the API key, back-pressure (429),
timeouts, a disconnect that stops its decode, batching that really batches, and the web page in
Debian's Chromium (skipped, with the reason, where Chromium or Playwright is missing)."""
import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from test_chat import _vlm  # noqa: E402
from tinyvlm.messages import Accept, decode_image_url  # noqa: E402
from tinyvlm.errors import TinyVLMError  # noqa: E402
from tinyvlm.generate import Sampling  # noqa: E402
from tinyvlm.serve.app import ServeConfig, StopText, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def _png(colour="red", size=(32, 32), noise=False) -> bytes:
    im = Image.new("RGB", size, colour)
    if noise:
        im = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _ask(text="What is this?", *pictures, **fields) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": p}} for p in pictures] + [{"type": "text", "text": text}]
    return {"messages": [{"role": "user", "content": parts}], **fields}


@contextmanager
def running(vlm, name="nano", **config):
    """A uvicorn server for `vlm` on a free loopback port, in a thread: -> (base URL, app)."""
    app = create_app(vlm, ServeConfig(**config), name=name)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def vlm():
    return _vlm()


@pytest.fixture(scope="module")
def server(vlm):
    with running(vlm, max_images=2, max_body_bytes=256 * 1024, max_image_bytes=64 * 1024, max_pixels=512 * 512,
                 max_tokens=24) as (url, app):
        yield url, app


def _until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


@contextmanager
def gated(vlm, monkeypatch, per_token_s=0.0, seen=None):
    """Hold every batch until the gate opens (and optionally slow each token), to arrange queues."""
    gate, original = threading.Event(), vlm.stream_chat

    def held(*a, **k):
        gate.wait(20)
        for d in original(*a, **k):
            if seen is not None:
                seen.append(d)
            time.sleep(per_token_s)
            yield d
    monkeypatch.setattr(vlm, "stream_chat", held)
    try:
        yield gate
    finally:
        gate.set()


# --- the OpenAI client, streaming, moondream ------------------------------------------------------
def test_the_openai_client_gets_a_completion_and_a_stream(server):
    openai = pytest.importorskip("openai")
    url, _ = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    messages = _ask("What colour is it?", _url(_png("red")))["messages"]
    whole = client.chat.completions.create(model="nano", messages=messages, max_tokens=8)
    text = whole.choices[0].message.content
    assert whole.object == "chat.completion" and whole.choices[0].finish_reason in ("stop", "length")
    assert 1 <= whole.usage.completion_tokens <= 8 and whole.usage.prompt_tokens > 17  # a picture is 17 + 2 tokens
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(client.chat.completions.create(model="nano", messages=messages, max_tokens=8, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy: the same text, whole or streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    if len(text) >= 4:  # a stop string ends the answer before it, whole or streamed
        stop = text[2:4]
        cut = client.chat.completions.create(model="nano", messages=messages, max_tokens=8, stop=[stop])
        assert cut.choices[0].message.content == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"
        parts = client.chat.completions.create(model="nano", messages=messages, max_tokens=8, stop=stop, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == text[: text.find(stop)]


def test_bare_base64_as_ollama_sends_is_the_same_picture(server):
    url, _ = server
    data = _png("blue")
    answers = []
    for ref in (_url(data), base64.b64encode(data).decode(), {"url": base64.b64encode(data).decode()}):
        body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": ref},
                                                          {"type": "text", "text": "What is it?"}]}], "max_tokens": 6}
        r = httpx.post(url + "/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        answers.append(r.json()["choices"][0]["message"]["content"])
    assert answers[0] == answers[1] == answers[2]


def test_caption_and_query_whole_and_streamed(server):
    url, _ = server
    picture = _url(_png("green"))
    r = httpx.post(url + "/v1/caption", json={"image_url": picture, "length": "short"})
    assert r.status_code == 200 and isinstance(r.json()["caption"], str)
    with httpx.stream("POST", url + "/v1/caption", json={"image_url": picture, "length": "short", "stream": True}) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1]["completed"] and "".join(e["chunk"] for e in events) == r.json()["caption"]
    q = httpx.post(url + "/v1/query", json={"image_url": picture, "question": "How many balls?"})
    assert q.status_code == 200 and isinstance(q.json()["answer"], str) and q.json()["usage"]["completion_tokens"] >= 1


def test_models_health_and_the_page(server):
    url, _ = server
    assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "nano"
    assert httpx.get(url + "/health").json()["status"] == "ok"
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "tinyvlm" in page.text and "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert httpx.get(f"{url}/static/{name}").status_code == 200
    assert "http" not in Path(ROOT / "tinyvlm/serve/static/index.html").read_text().replace("http-equiv", "")  # no CDN


# --- what a client may get wrong ------------------------------------------------------------------
BOMB = ROOT / "tests/data/robustness/declares_20000x20000.png"
RED = _url(_png("red"))
MALFORMED = [  # (what, body: a dict sent as JSON or raw bytes, status, words in the message)
    ("bad JSON", b'{"messages": [', 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 400, "valid dictionary"),
    ("no messages", {}, 400, "messages"),
    ("empty messages", {"messages": []}, 400, "at least 1"),
    ("not an image", _ask("hi", "data:image/png;base64,aGVsbG8="), 400, "readable picture"),
    ("bad base64", _ask("hi", "data:image/png;base64,!!!"), 400, "malformed"),
    ("too many images", _ask("hi", RED, RED, RED), 400, "more than 2 picture"),
    ("too large a body", _ask("x" * 300_000), 413, "over the limit"),
    ("too large a picture", _ask("hi", _url(_png(size=(160, 160), noise=True))), 400, "over the limit"),
    ("too many pixels", _ask("hi", _url(_png(size=(600, 600)))), 400, "pixels"),
    ("a decompression bomb", _ask("hi", _url(BOMB.read_bytes())), 400, "pixels"),
    ("an http URL", _ask("hi", "http://example.com/cat.png"), 400, "never fetches"),
    ("a file URL", _ask("hi", "file:///etc/passwd"), 400, "no files are read"),
    ("a path", _ask("hi", "/etc/passwd"), 400, "base64"),
    ("a system message", {"messages": [{"role": "system", "content": "hi"}, {"role": "user", "content": "hi"}]}, 400, "system"),
    ("ends on the assistant", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
     400, "user turn"),
    ("an <image> slot as text", _ask("look <image>"), 400, "image_url parts"),
    ("too long a prompt", _ask("ball " * 1500), 400, "reads at most"),
    ("max_tokens over the server's", _ask(max_tokens=10_000), 400, "at most 24"),
    ("max_tokens 0", _ask(max_tokens=0), 400, "max_tokens"),
    ("top_p 0", _ask(top_p=0), 400, "top_p"),
    ("temperature 3", _ask(temperature=3), 400, "temperature"),
    ("seed -1", _ask(seed=-1), 400, "seed"),
    ("seed 2**64", _ask(seed=2**64), 400, "seed"),
    ("five stop strings", _ask(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("n 2", _ask(n=2), 400, "n"),
]
WRONG_TYPES = {  # one wrong type for every field (dotted: inside the first message or part)
    "messages": "hi", "model": 5, "stream": "yes", "stream_options": 1, "max_tokens": "5",
    "max_completion_tokens": 1.5, "temperature": "hot", "top_p": [1], "seed": "7", "stop": 5, "n": "1",
    "messages.role": 5, "messages.content": 5, "part.type": "audio", "part.text": 5, "part.image_url": 5,
    "part.image_url.url": 5,
}


def _wrong(field: str, value) -> dict:
    body = _ask("hi", RED)
    where, _, name = field.rpartition(".")
    if where == "":
        body[name] = value
    elif where == "messages":
        body["messages"][0][name] = value
    else:
        part = body["messages"][0]["content"][0 if "image" in field else 1]
        if where == "part.image_url":
            part["image_url"][name] = value
        else:
            part[name] = value
    return body


def _check_error(r, status, words):
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and words in error["message"], error


def test_each_malformed_payload_gets_its_4xx_and_the_server_keeps_serving(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=30) as client:
        for what, body, status, words in MALFORMED:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
            _check_error(r, status, words)
        for field, value in WRONG_TYPES.items():
            r = client.post("/v1/chat/completions", json=_wrong(field, value))
            _check_error(r, 400, "")
        for path, body in (("/v1/caption", {"image_url": 5}), ("/v1/caption", {"image_url": RED, "length": "medium"}),
                           ("/v1/caption", {"image_url": RED, "stream": 1}), ("/v1/query", {"image_url": RED, "question": 5}),
                           ("/v1/query", {"image_url": RED, "question": "  "}), ("/v1/query", {"image_url": "http://x/y.png",
                                                                                               "question": "why?"})):
            _check_error(client.post(path, json=body), 400, "")
        _check_error(client.get("/v1/chat/completions"), 405, "")
        _check_error(client.get("/v1/nothing"), 404, "")
        ok = client.post("/v1/chat/completions", json=_ask("still there?", RED, max_tokens=3))
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


def test_curl_without_a_json_content_type_is_still_read_as_json(server):
    url, _ = server
    r = httpx.post(url + "/v1/chat/completions", content=json.dumps(_ask(max_tokens=2)),
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200


def test_the_server_takes_no_files_but_the_library_does(tmp_path):
    p = tmp_path / "cat.png"
    p.write_bytes(_png())
    assert decode_image_url(str(p)) == str(p)
    for ref in (str(p), "file://" + str(p)):
        with pytest.raises(TinyVLMError):
            decode_image_url(ref, Accept(files=False))
    assert decode_image_url(base64.b64encode(_png()).decode()).size == (32, 32)  # bare base64 in the library too


def test_stop_text_never_sends_part_of_a_stop_string():
    held = StopText(["END", "xy"])
    out = [held.feed(p) for p in ("ab", "cE", "N", "q", "x", "E", "ND tail")]
    assert out == [("ab", False), ("c", False), ("", False), ("ENq", False), ("", False), ("x", False), ("", True)]
    assert StopText([]).feed("anything") == ("anything", False)


# --- keys, back-pressure, time, disconnects, batching -------------------------------------------
def test_the_api_key_is_needed_when_set(vlm):
    with running(vlm, api_key="sekrit") as (url, _):
        body = _ask(max_tokens=2)
        _check_error(httpx.post(url + "/v1/chat/completions", json=body), 401, "API key")
        _check_error(httpx.post(url + "/v1/chat/completions", content=b"{bad"), 401, "API key")  # before parsing
        _check_error(httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "API key")
        ok = httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer sekrit"})
        assert ok.status_code == 200
        assert httpx.get(url + "/health").status_code == 200 and httpx.get(url + "/").status_code == 200


def test_a_full_queue_answers_429_and_the_waiting_requests_are_served(vlm, monkeypatch):
    with running(vlm, max_batch=1, max_queue=2) as (url, app), gated(vlm, monkeypatch) as gate, \
            ThreadPoolExecutor(4) as pool:
        batcher = app.state.batcher
        post = lambda: httpx.post(url + "/v1/chat/completions", json=_ask(max_tokens=2), timeout=30)  # noqa: E731
        first = pool.submit(post)
        _until(lambda: batcher.stats["batches"] == 1)  # the worker holds it, at the gate
        waiting = [pool.submit(post), pool.submit(post)]
        _until(lambda: batcher.waiting() == 2)
        r = post()
        _check_error(r, 429, "busy")
        assert r.headers["retry-after"] == "1"
        gate.set()
        assert [f.result().status_code for f in [first] + waiting] == [200, 200, 200]


def test_a_request_past_its_timeout_gets_504_and_the_server_goes_on(vlm, monkeypatch):
    with running(vlm, timeout_s=0.3) as (url, app), gated(vlm, monkeypatch) as gate:
        _check_error(httpx.post(url + "/v1/chat/completions", json=_ask(max_tokens=2)), 504, "timeout")
        gate.set()
        assert httpx.post(url + "/v1/chat/completions", json=_ask(max_tokens=2)).status_code == 200


def test_a_client_that_leaves_stops_its_decode_and_a_slow_one_blocks_no_one(vlm, monkeypatch):
    seen = []
    with running(vlm, max_tokens=64) as (url, app), gated(vlm, monkeypatch, per_token_s=0.03, seen=seen) as gate:
        gate.set()
        with httpx.stream("POST", url + "/v1/chat/completions", json=_ask(max_tokens=64, stream=True)) as s:
            for _ in s.iter_lines():
                if len(seen) >= 3:
                    break
        _until(lambda: app.state.batcher.stats["stopped_early"] == 1)
        assert len(seen) < 20  # of the 64 it asked for: the decode stopped soon after the client left
        # a client that reads nothing of its stream does not hold up another's answer
        with httpx.stream("POST", url + "/v1/chat/completions", json=_ask(max_tokens=64, stream=True)):
            t = time.monotonic()
            r = httpx.post(url + "/v1/chat/completions", json=_ask("other", max_tokens=2), timeout=30)
            assert r.status_code == 200 and time.monotonic() - t < 10


def test_requests_that_arrive_together_are_decoded_together(vlm, monkeypatch):
    with running(vlm, max_batch=8) as (url, app), ThreadPoolExecutor(9) as pool:
        alone = [httpx.post(url + "/v1/chat/completions", json=_ask(f"picture {i}?", RED, max_tokens=5)).json()
                 for i in range(8)]
        batcher = app.state.batcher
        with gated(vlm, monkeypatch) as gate:
            before = dict(batcher.stats)
            blocker = pool.submit(httpx.post, url + "/v1/chat/completions", json=_ask(max_tokens=2), timeout=30)
            _until(lambda: batcher.stats["batches"] == before["batches"] + 1)
            together = [pool.submit(httpx.post, url + "/v1/chat/completions",
                                    json=_ask(f"picture {i}?", RED, max_tokens=5), timeout=30) for i in range(8)]
            _until(lambda: batcher.waiting() == 8)
            gate.set()
            answers = [f.result().json() for f in together]
            assert blocker.result().status_code == 200
        assert batcher.stats["batches"] - before["batches"] == 2 and batcher.stats["largest_batch"] == 8
        assert [a["choices"][0]["message"]["content"] for a in answers] == \
               [a["choices"][0]["message"]["content"] for a in alone]  # greedy rows decode the same in a batch

        with gated(vlm, monkeypatch) as gate:  # requests that sample differently go in separate batches
            before = dict(batcher.stats)
            blocker = pool.submit(httpx.post, url + "/v1/chat/completions", json=_ask(max_tokens=2), timeout=30)
            _until(lambda: batcher.stats["batches"] == before["batches"] + 1)
            mixed = [pool.submit(httpx.post, url + "/v1/chat/completions",
                                 json=_ask(max_tokens=3, temperature=0.5 if i % 2 else 0), timeout=30) for i in range(8)]
            _until(lambda: batcher.waiting() == 8)
            gate.set()
            assert all(f.result().status_code == 200 for f in mixed + [blocker])
        assert batcher.stats["batches"] - before["batches"] == 3

        seeded = [pool.submit(httpx.post, url + "/v1/chat/completions", timeout=30,
                              json=_ask(max_tokens=6, temperature=0.9, seed=3)) for _ in range(3)]
        texts = [f.result().json()["choices"][0]["message"]["content"] for f in seeded]
        assert texts[0] == texts[1] == texts[2]  # each decoded alone: its seed alone decides its text


def test_pictures_are_prepared_off_the_decoding_thread_and_a_broken_one_fails_alone(vlm, monkeypatch):
    """Base64, PNG decoding and preprocessing run on the request threads (a bounded pool): the batcher
    gets model-size pixels and decodes only, and a picture that breaks mid-decode, among good ones
    arriving with it, gets its own 400 while the others are answered."""
    size = vlm.cfg.vit_image_size
    threads, pixels = [], vlm.pixels

    def watched(images):
        if any(not isinstance(im, torch.Tensor) for im in images):
            threads.append(threading.current_thread().name)
        return pixels(images)
    monkeypatch.setattr(vlm, "pixels", watched)
    broken = _url(_png(size=(48, 48), noise=True)[:300])  # a sound header, then the pixel data cut short
    with running(vlm, max_batch=8) as (url, app), ThreadPoolExecutor(12) as pool:
        jobs, submit = [], app.state.batcher.submit
        monkeypatch.setattr(app.state.batcher, "submit", lambda job: (jobs.append(job), submit(job))[1])
        bodies = [_ask(f"picture {i}?", broken if i % 3 == 0 else _url(_png((9 * i, 99, 200))), max_tokens=3)
                  for i in range(12)]
        answers = list(pool.map(lambda b: httpx.post(url + "/v1/chat/completions", json=b, timeout=30), bodies))
        for i, r in enumerate(answers):
            if i % 3 == 0:
                _check_error(r, 400, "cannot read image")
            else:
                assert r.status_code == 200, r.text
        assert len(jobs) == 8 and all(len(j.pictures) == 1 and isinstance(j.pictures[0], torch.Tensor)
                                      and tuple(j.pictures[0].shape) == (3, size, size) for j in jobs)
        assert threads and "tinyvlm-batcher" not in threads
        assert httpx.post(url + "/v1/chat/completions", json=_ask("still there?", RED, max_tokens=2)).status_code == 200


def test_the_library_takes_pictures_already_preprocessed(vlm):
    px = vlm.pixels([Image.new("RGB", (40, 30), "red"), Image.new("RGB", (30, 40), "blue")])
    assert torch.equal(vlm.pixels([px[1], Image.new("RGB", (40, 30), "red")]), px.flip(0))
    turns = [("user", "<image> What is it?")]
    sampling = Sampling(max_new_tokens=4)
    assert vlm.answer_turns([turns], [[px[0]]], sampling) == vlm.answer_turns([turns], [[Image.new("RGB", (40, 30), "red")]],
                                                                              sampling)
    with pytest.raises(TinyVLMError, match="preprocessed pixels"):
        vlm.pixels([torch.zeros(3, vlm.cfg.vit_image_size + 1, vlm.cfg.vit_image_size)])


# --- the command line, and the page in a browser ---------------------------------------------------
def test_tinyvlm_serve_from_the_command_line_with_a_key_from_the_environment(vlm, tmp_path):
    """...and with fewer visual tokens: --keep-tokens 0.5 halves what a picture costs the prompt."""
    vlm.save_pretrained(tmp_path / "model")
    from tinyvlm.messages import parse_messages
    turns, _ = parse_messages(_ask("What is this?", RED)["messages"])
    full = vlm.tokenizer.encode_conversation(turns, vlm.model.image_token_counts(1), "").ids
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TINYVLM_API_KEY": "k3y"}
    proc = subprocess.Popen([sys.executable, "-m", "tinyvlm", "serve", "--model", str(tmp_path / "model"),
                             "--port", str(port), "--threads", "1", "--keep-tokens", "0.5"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-2000:]
                time.sleep(0.2)
        assert httpx.get(url + "/v1/models").status_code == 401
        r = httpx.post(url + "/v1/chat/completions", json=_ask("What is this?", RED, max_tokens=2),
                       headers={"Authorization": "Bearer k3y"})
        assert r.status_code == 200 and r.json()["model"] == "model"
        patches = vlm.cfg.image_tokens  # the picture's tokens between its markers, all kept
        assert r.json()["usage"]["prompt_tokens"] == len(full) - patches + -(-patches // 2)
    finally:
        proc.terminate()
        proc.wait(20)


def _browser():
    """Playwright's sync API and Debian's Chromium, or a skip naming what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    return sync_playwright


def test_the_page_streams_an_answer_in_chromium(vlm, tmp_path):
    sync_playwright = _browser()
    from playwright.sync_api import expect
    picture = tmp_path / "ball.png"
    model, shot = os.environ.get("TINYVLM_SERVE_MODEL"), os.environ.get("TINYVLM_SERVE_SCREENSHOT")
    if model:  # a trained model for the screenshot in docs/serving.md
        from tinyvlm import TinyVLM
        vlm = TinyVLM.from_pretrained(model)
        picture = Path(os.environ["TINYVLM_SERVE_PICTURE"])
    else:
        picture.write_bytes(_png("orange", (64, 64)))
    with running(vlm) as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                    headless=True, args=["--no-sandbox", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 800, "height": 900})
            page.goto(url + "/")
            page.evaluate("""() => { window.changes = 0;
                new MutationObserver((records) => window.changes += records.length).observe(document.getElementById('answer'),
                                                                     {childList: true, characterData: true, subtree: true}); }""")
            page.set_input_files("#file", str(picture))
            page.wait_for_selector("#preview:not([hidden])")
            page.check("input[value=long]")
            page.click("#go")
            expect(page.locator("#status")).to_have_text(re.compile("^Done"), timeout=30_000)
            assert page.text_content("#answer").strip()
            assert page.evaluate("window.changes") > 1  # the text was written in pieces, one per streamed event
            if shot:
                page.screenshot(path=shot, full_page=True)
            page.check("input[value=question]")
            page.fill("#question", "What colour is the ball?")
            page.click("#go")
            expect(page.locator("#status")).to_have_text(re.compile("^Done"), timeout=30_000)
        finally:
            browser.close()


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_in_the_servers_own_schema(vlm):
    """~600 generated requests from /openapi.json (a few minutes): no answer is a 5xx."""
    st = Path(sys.executable).parent / "schemathesis"
    if not st.exists():
        pytest.skip("schemathesis is not installed")
    with running(vlm, max_tokens=16) as (url, _):
        r = subprocess.run([str(st), "run", url + "/openapi.json", "--checks", "not_a_server_error", "-n", "100",
                            "--seed", "1", "--generation-database", "none"], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:]
