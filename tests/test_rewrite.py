"""Caption rewriting against a scripted local endpoint: checks, retries with feedback, resume."""
from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from test_llm import FakeChatServer, fast_client  # a real local HTTP endpoint (see test_llm.py)
from tinyvlm.data.records import Record, read_jsonl
from tinyvlm.data.rewrite import check_rewrite, is_known, load_vocab, rewrite_captions, words
from tinyvlm.errors import TinyVLMError

SHORT_OK = "A big brown dog runs on the green grass. The dog has a red ball in his mouth and he is very happy."
TOO_SHORT = "A dog runs."
HARD = SHORT_OK.replace("happy", "jubilant")


@pytest.fixture(scope="module")
def vocab():
    return load_vocab()


def make_records(tmp_path, n):
    records = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(path)
        records.append(Record(images=[str(path)], text=f"caption {i}",
                              references=[f"photo {i}: a canine sprints across a lawn", "a dog running"]))
    return records


def test_default_vocabulary_knows_common_photo_words(vocab):
    assert 1500 <= len(vocab) <= 2500
    for w in "dog man woman girl boy water grass ball run jump play street bike snow beach shirt red".split():
        assert w in vocab
    for w in ["dogs", "running", "jumped", "puppies", "bigger", "boy's", "t-shirt", "boxes", "played"]:
        assert is_known(w, vocab), w
    for w in ["jubilant", "canine", "photosynthesis", "7"]:
        assert not is_known(w, vocab), w


def test_check_rewrite(vocab):
    assert len(words(SHORT_OK)) == 23
    assert check_rewrite(SHORT_OK, "short", vocab) is None
    assert "it must have 20 to 25 words" in check_rewrite(TOO_SHORT, "short", vocab)
    assert "it must have 60 to 70 words" in check_rewrite(SHORT_OK, "long", vocab)
    assert "jubilant" in check_rewrite(HARD, "short", vocab)


def test_rewrite_rejects_bad_answers_retries_and_resumes(tmp_path, vocab):
    records = make_records(tmp_path, 3)
    replies = {0: [TOO_SHORT, f'"{SHORT_OK}"'],          # wrong length, then fine (quotes stripped)
               1: [HARD, HARD, HARD],                    # never simple enough: dropped
               2: [SHORT_OK]}
    seen: dict[int, int] = {}

    def respond(body, n):
        i = int(body["messages"][1]["content"][0]["text"].split("photo ")[1].split(":")[0])
        seen[i] = seen.get(i, 0) + 1
        return replies[i][seen[i] - 1]

    out = tmp_path / "sub" / "short.jsonl"
    with FakeChatServer(respond) as srv:
        summary = rewrite_captions(records, fast_client(srv.url), out, vocab=vocab, progress=False)
        assert summary["written"] == 2 and summary["dropped"] == 1 and summary["skipped_done"] == 0
        assert summary["failures"][0][0] == records[1].images[0] and "jubilant" in summary["failures"][0][1]
        assert seen == {0: 2, 1: 3, 2: 1}
        feedback = srv.requests[1]["body"]["messages"]
        assert feedback[2] == {"role": "assistant", "content": TOO_SHORT}
        assert "it must have 20 to 25 words" in feedback[3]["content"]

        n_before = len(srv.requests)
        again = rewrite_captions(records, fast_client(srv.url), out, vocab=vocab, progress=False)
        assert len(srv.requests) == n_before  # nothing finished is sent again
        assert again == {"written": 0, "dropped": 0, "skipped_done": 3, "failures": []}

    written = read_jsonl(out)
    assert [r.text for r in written] == [SHORT_OK, SHORT_OK]
    assert os.path.normpath(written[0].images[0]) == records[0].images[0] and written[0].references == records[0].references
    assert json.loads(out.read_text().splitlines()[0])["image"] == "../img0.png"  # relative to the output


def test_rewrite_sends_image_when_asked(tmp_path, vocab):
    with FakeChatServer(lambda body, n: SHORT_OK) as srv:
        rewrite_captions(make_records(tmp_path, 1), fast_client(srv.url), tmp_path / "o.jsonl",
                         vocab=vocab, send_image=True, progress=False)
    content = srv.requests[0]["body"]["messages"][1]["content"]
    assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_rewrite_stops_when_endpoint_is_down_and_resumes_later(tmp_path, vocab):
    records = make_records(tmp_path, 4)
    out = tmp_path / "o.jsonl"
    with FakeChatServer(lambda body, n: 500) as srv:
        with pytest.raises(TinyVLMError, match="failed in a row"):
            rewrite_captions(records, fast_client(srv.url, retries=0), out, vocab=vocab, progress=False)
    with FakeChatServer(lambda body, n: SHORT_OK) as srv:
        summary = rewrite_captions(records, fast_client(srv.url), out, vocab=vocab, progress=False)
    assert summary["written"] == 4 and len(srv.requests) == 4
