"""The chat client and the LLM judge against a real local HTTP server that plays a scripted
OpenAI-compatible endpoint: good answers, garbage, stalls, and 500s."""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from tinyvlm.errors import TinyVLMError
from tinyvlm.eval.llm_judge import RUBRIC, judge_llm
from tinyvlm.llm import ChatClient, image_part, parse_json_object


class FakeChatServer:
    """`/chat/completions` on 127.0.0.1:<free port>. `respond(request_json, n)` (n = 1-based count of
    requests so far) returns a reply string, an int HTTP status, or ("sleep", seconds, reply).
    Every request's headers and body are kept in `requests`."""

    def __init__(self, respond):
        self.respond, self.requests, self.lock = respond, [], threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    action = fake.respond(body, len(fake.requests))
                try:
                    if isinstance(action, tuple):
                        time.sleep(action[1])
                        action = action[2]
                    if isinstance(action, int):
                        self.send_response(action)
                        self.end_headers()
                        return
                    data = json.dumps({"choices": [{"message": {"role": "assistant", "content": action}}]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def fast_client(url, **kw) -> ChatClient:
    return ChatClient(url, "test-model", **({"timeout": 0.3, "retries": 2, "backoff": 0.01} | kw))


GOOD = json.dumps({"grammar": 8, "consistency": 7, "creativity": 5, "meaningfulness": 6, "plot": 4, "comment": "ok"})


def test_chat_sends_key_from_environment(monkeypatch):
    monkeypatch.setenv("TINYVLM_TEST_KEY", "sk-secret")
    with FakeChatServer(lambda body, n: "hello") as srv:
        assert fast_client(srv.url, api_key_env="TINYVLM_TEST_KEY").chat([{"role": "user", "content": "hi"}]) == "hello"
        monkeypatch.delenv("TINYVLM_TEST_KEY")
        fast_client(srv.url, api_key_env="TINYVLM_TEST_KEY").chat([{"role": "user", "content": "hi"}])
    first, second = srv.requests
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["Authorization"] == "Bearer sk-secret"
    assert "Authorization" not in second["headers"]
    assert first["body"]["model"] == "test-model" and first["body"]["messages"][0]["content"] == "hi"


def test_chat_retries_500_then_succeeds():
    with FakeChatServer(lambda body, n: 500 if n == 1 else "fine") as srv:
        assert fast_client(srv.url).chat([{"role": "user", "content": "hi"}]) == "fine"
    assert len(srv.requests) == 2


def test_chat_gives_up_naming_url_and_error():
    with FakeChatServer(lambda body, n: 500) as srv:
        with pytest.raises(TinyVLMError, match=r"127\.0\.0\.1.*chat/completions.*HTTP 500"):
            fast_client(srv.url).chat([{"role": "user", "content": "hi"}])
    assert len(srv.requests) == 3  # 1 + retries


def test_chat_timeout_does_not_hang():
    with FakeChatServer(lambda body, n: ("sleep", 1.0, "too late")) as srv:
        start = time.monotonic()
        with pytest.raises(TinyVLMError, match="timed out"):
            fast_client(srv.url, retries=1).chat([{"role": "user", "content": "hi"}])
        assert time.monotonic() - start < 1.5


def test_chat_does_not_retry_client_errors():
    with FakeChatServer(lambda body, n: 401) as srv:
        with pytest.raises(TinyVLMError, match="HTTP 401"):
            fast_client(srv.url).chat([{"role": "user", "content": "hi"}])
    assert len(srv.requests) == 1


def test_chat_connection_refused():
    srv = FakeChatServer(lambda body, n: "x")  # bound, then closed without serving: port is dead
    srv.server.server_close()
    with pytest.raises(TinyVLMError, match="gave up after 2 attempts"):
        fast_client(srv.url, retries=1).chat([{"role": "user", "content": "hi"}])


def test_parse_json_object_is_strict():
    assert parse_json_object('{"a": 1}') == {"a": 1}
    assert parse_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_json_object('  ```\n{"a": 2}\n```  ') == {"a": 2}
    for bad in ['Sure! {"a": 1}', '[1, 2]', '{"a": 1', '```json\n{"a": 1}\n``` thanks', ""]:
        with pytest.raises(ValueError):
            parse_json_object(bad)


def test_image_part_is_a_small_jpeg_data_url():
    part = image_part(Image.new("RGB", (1000, 500), "red"), max_side=256)
    assert part["type"] == "image_url"
    header, data = part["image_url"]["url"].split(",", 1)
    assert header == "data:image/jpeg;base64"
    img = Image.open(io.BytesIO(base64.b64decode(data)))
    assert img.format == "JPEG" and img.size == (256, 128)


def test_judge_scores_what_it_can_and_reports_the_rest(tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64), "blue").save(image)
    calls: dict[str, int] = {}

    def respond(body, n):
        text = body["messages"][1]["content"][0]["text"]
        kind = text.rsplit(":", 1)[1].strip()  # the item's text names its behaviour
        calls[kind] = calls.get(kind, 0) + 1
        return {"good": GOOD, "fenced": f"```json\n{GOOD}\n```",
                "garbage": "I think it is a lovely story!",
                "out-of-range": GOOD.replace('"plot": 4', '"plot": 11'),
                "fixed": GOOD if calls[kind] > 1 else "{not json",
                "slow": ("sleep", 1.0, GOOD),
                "flaky": 500 if calls[kind] == 1 else GOOD,
                "down": 500}[kind]

    kinds = ["good", "fenced", "garbage", "out-of-range", "fixed", "slow", "flaky", "down"]
    items = [{"id": k, "image": str(image) if k == "good" else None, "text": f"story: {k}"} for k in kinds]
    items[0]["prompt"] = "A blue"
    start = time.monotonic()
    with FakeChatServer(respond) as srv:
        result = judge_llm(items, fast_client(srv.url))
    assert time.monotonic() - start < 10
    by_id = {r["id"]: r for r in result["items"]}
    for k in ("good", "fenced", "fixed", "flaky"):
        assert by_id[k]["error"] is None and by_id[k]["scores"]["grammar"] == 8, k
    for k, reason in [("garbage", "not a JSON object"), ("out-of-range", "'plot' must be an integer"),
                      ("slow", "timed out"), ("down", "HTTP 500")]:
        assert by_id[k]["scores"] is None and reason in by_id[k]["error"], (k, by_id[k]["error"])
    assert calls["garbage"] == 3 and calls["fixed"] == 2  # bad answers are asked again, up to retries
    assert result["n_scored"] == 4 and result["n_failed"] == 4
    assert result["mean"] == {"grammar": 8, "consistency": 7, "creativity": 5, "meaningfulness": 6, "plot": 4}
    assert set(result["mean"]) == set(RUBRIC)
    sent = srv.requests[0]["body"]["messages"][1]["content"]
    assert "A blue" in sent[0]["text"] and sent[1]["image_url"]["url"].startswith("data:image/jpeg")


def test_judge_with_dead_server_fails_every_item_without_raising():
    srv = FakeChatServer(lambda body, n: GOOD)
    srv.server.server_close()
    result = judge_llm([{"id": "a", "image": None, "text": "x"}, {"id": "b", "image": "/no/such.png", "text": "y"}],
                       fast_client(srv.url, retries=0))
    assert result["n_failed"] == 2 and result["mean"] == {}
    assert "image not found" in result["items"][1]["error"]
