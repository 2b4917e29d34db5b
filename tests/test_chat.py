"""The chat template, conversations with interleaved pictures, the streaming decoder, prefill/step,
traces, chat() with OpenAI-style messages."""
import base64
import io
import json
import random

import pytest
import torch
from PIL import Image

from tinyvlm.api import TinyVLM
from tinyvlm.config import get_preset
from tinyvlm.data.batches import Collator, record_to_example
from tinyvlm.data.records import Record
from tinyvlm.errors import TinyVLMError
from tinyvlm.generate import Sampling, generate, stream
from tinyvlm.model import IGNORE, VisionLanguageModel
from tinyvlm.tokenizer import (ASSISTANT_ID, EOS_ID, IMAGE_END_ID, IMAGE_ID, IMAGE_START_ID, SPECIALS, USER_ID,
                               Tokenizer)

TEXTS = ["a red ball on the grass.", "a blue cup in the room.", "What colour is the ball? red",
         "Which picture has a cup? the second", "And this one? a green box"] * 5


def _vlm(**kw) -> TinyVLM:
    torch.manual_seed(0)
    tok = Tokenizer.train(TEXTS, 300)
    cfg = get_preset("nano", dropout=0.0, lm_vocab_size=64 * -(-tok.vocab_size // 64), **kw)
    return TinyVLM(VisionLanguageModel(cfg).eval(), tok)


def _pictures(tmp_path, n=3, size=32):
    paths = []
    for i, colour in enumerate(["red", "green", "blue", "yellow"][:n]):
        p = tmp_path / f"{colour}.png"
        Image.new("RGB", (size, size), colour).save(p)
        paths.append(str(p))
    return paths


def _data_url(path):
    buf = io.BytesIO()
    Image.open(path).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


CONVERSATION = [{"role": "user", "content": "<image> What colour is the ball?"},
                {"role": "assistant", "content": "red"},
                {"role": "user", "content": "Which picture has a cup? <image> or <image>"},
                {"role": "assistant", "content": "the second"}]


def test_two_turn_conversation_with_three_pictures_loses_only_on_assistant_turns(tmp_path):
    vlm = _vlm()
    pics = _pictures(tmp_path)
    record = Record.from_json({"images": pics, "turns": CONVERSATION})
    example = record_to_example(record, random.Random(0))
    assert example.prompt == "Which picture has a cup? <image> or <image>" and example.target == "the second"
    batch = Collator(vlm.tokenizer, vlm.cfg)([example])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    assert batch["images"].shape[0] == 3
    assert ids.count(IMAGE_START_ID) == ids.count(IMAGE_END_ID) == 3 and ids.count(IMAGE_ID) == 3 * vlm.cfg.image_tokens
    # labels[t] is the token after position t: exactly the tokens of the two assistant turns, with their <|eos|>
    learned = [l for l in labels if l != IGNORE]
    turns = [vlm.tokenizer.encode_text("red") + [EOS_ID], vlm.tokenizer.encode_text("the second") + [EOS_ID]]
    assert learned == turns[0] + turns[1]
    for t, l in enumerate(labels):
        if l != IGNORE:  # every learned token follows <|assistant|> or another assistant token
            assert ids[t] == ASSISTANT_ID or labels[t - 1] != IGNORE
    # and it trains: a few steps lower the loss on it
    model = vlm.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        _, loss = model(batch["input_ids"], batch["images"], batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_conversation_records_round_trip_through_jsonl():
    r = Record.from_json({"images": ["a.png", "b.png", "c.png"], "turns": CONVERSATION})
    assert r.text == "the second" and r.turns[0] == ("user", "<image> What colour is the ball?")
    assert Record.from_json(r.to_json()).turns == r.turns
    for bad in ([{"role": "assistant", "content": "hi"}],
                [{"role": "user", "content": "hi"}],
                [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]):
        with pytest.raises(ValueError):
            Record.from_json({"image": "a.png", "turns": bad})


def test_user_text_never_encodes_to_special_ids():
    tok = _vlm().tokenizer
    for s in SPECIALS:
        if s == "<image>":
            continue  # a slot, placed only by the template
        ids = tok.encode(f"look {s} here {s}")
        assert not set(ids) & set(range(len(SPECIALS))), s
        assert s in tok.decode(ids)
    enc = tok.encode_conversation([("user", "<image> say <|eos|> now"), ("assistant", "ok <|user|>")], [2]).ids
    assert enc.count(EOS_ID) == 1 and enc.count(USER_ID) == 1


def test_slots_and_pictures_must_match():
    tok = _vlm().tokenizer
    with pytest.raises(TinyVLMError, match="2 picture"):
        tok.encode_conversation([("user", "<image> hi")], [3, 3], prefix="")
    with pytest.raises(TinyVLMError, match="more <image> slots"):
        tok.encode_conversation([("user", "<image> <image> hi")], [3], prefix="")
    with pytest.raises(TinyVLMError, match="alternate"):
        tok.encode_conversation([("assistant", "hi")], [])


def test_a_row_whose_pictures_do_not_match_its_slots_is_refused(tmp_path):
    vlm = _vlm()
    a, b, _ = _pictures(tmp_path)
    with pytest.raises(TinyVLMError, match="row 1: 1 picture"):
        vlm.generate(["<image> <image> which?", "<image> <image> which?"], [[a, b], [a]])


def test_streaming_yields_exactly_the_batch_tokens_with_logprobs():
    vlm = _vlm()
    m, tok = vlm.model, vlm.tokenizer
    prompts = [tok.encode_conversation([("user", "<image> What colour is the ball?")], [m.cfg.image_tokens], "").ids,
               tok.encode_conversation([("user", "<image>")], [m.cfg.image_tokens], "a red").ids]
    images = torch.randn(2, 3, 32, 32)
    for s in (Sampling(max_new_tokens=12), Sampling(max_new_tokens=12, temperature=1.0, seed=3)):
        batch = generate(m, prompts, images, s)
        rows = [[], []]
        steps = list(stream(m, prompts, images, s))
        for t in steps:
            assert t.logprob <= 0
            if t.id != EOS_ID:
                rows[t.row].append(t.id)
        assert rows == batch
        for row in (0, 1):  # each row's last token, and only that, says why it ended
            mine = [t for t in steps if t.row == row]
            assert [t.finish is not None for t in mine] == [False] * (len(mine) - 1) + [True]
            assert mine[-1].finish == ("stop" if mine[-1].id == EOS_ID else "length")


def test_stream_logprob_is_the_models_own():
    vlm = _vlm()
    m = vlm.model
    prompt = vlm.tokenizer.encode_conversation([("user", "<image>")], [m.cfg.image_tokens], "").ids
    images = torch.randn(1, 3, 32, 32)
    first = next(stream(m, [prompt], images, Sampling(max_new_tokens=3)))
    logits, _ = m(torch.tensor([prompt]), images)
    assert abs(first.logprob - logits[0, -1].log_softmax(-1).max().item()) < 1e-5


@pytest.mark.parametrize("shuffle", [1, 2])
def test_prefill_then_step_equals_the_full_forward(shuffle):
    vlm = _vlm(mp_pixel_shuffle=shuffle)
    m = vlm.model
    ids = torch.tensor([vlm.tokenizer.encode_conversation(
        [("user", "<image> What colour is the ball?"), ("assistant", "a red ball on the grass.")],
        [m.cfg.image_tokens]).ids])
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        full, _ = m(ids, images)
        k = 6
        logits, state = m.prefill(ids[:, :-k], torch.ones_like(ids[:, :-k], dtype=torch.bool), images)
        assert torch.allclose(logits, full[:, -k - 1], atol=1e-5)
        for j in range(k):
            logits, state = m.step(ids[:, -k + j], state)
            assert torch.allclose(logits, full[:, -k + j], atol=1e-5)


def test_trace_gives_every_layers_states_and_attention():
    vlm = _vlm()
    m, cfg = vlm.model, vlm.cfg
    ids = torch.tensor([vlm.tokenizer.encode_conversation([("user", "<image> hi"), ("assistant", "red")],
                                                          [cfg.image_tokens]).ids])
    images = torch.randn(1, 3, 32, 32)
    tr = m.trace(ids, images)
    T, P = ids.shape[1], (cfg.vit_image_size // cfg.vit_patch_size) ** 2 + 1
    assert torch.allclose(tr.logits, m(ids, images)[0], atol=1e-5)
    assert len(tr.hidden_states) == cfg.lm_depth + 1 and tr.hidden_states[0].shape == (1, T, cfg.lm_width)
    assert len(tr.attentions) == cfg.lm_depth and tr.attentions[0].shape == (1, cfg.lm_heads, T, T)
    assert torch.allclose(tr.attentions[0].sum(-1), torch.ones(1, cfg.lm_heads, T), atol=1e-5)
    assert torch.all(tr.attentions[0].triu(1) == 0)  # causal
    assert len(tr.vision_hidden_states) == cfg.vit_depth + 1 and tr.vision_attentions[0].shape == (1, cfg.vit_heads, P, P)
    assert int(tr.image_positions.sum()) == cfg.image_tokens


def test_pictures_may_give_different_numbers_of_tokens():
    """Token reduction needs it: the template leaves each picture its own count, and embed fills them in order."""
    vlm = _vlm()
    m, tok = vlm.model, vlm.tokenizer
    images = torch.randn(2, 3, 32, 32)
    feats = m.image_features(images)
    feats = [feats[0][:5], feats[1]]  # the first picture keeps only 5 tokens
    counts = [f.shape[0] for f in feats]
    prompt = tok.encode_conversation([("user", "<image> and <image>?")], counts, "").ids
    assert prompt.count(IMAGE_ID) == sum(counts)
    out = generate(m, [prompt], None, Sampling(max_new_tokens=5), features=feats)
    assert len(out[0]) <= 5
    with pytest.raises(TinyVLMError, match="image tokens"):
        generate(m, [prompt], None, Sampling(max_new_tokens=5), features=[feats[1], feats[1]])


def test_the_context_holds_nine_pictures_at_64_px_and_four_at_224():
    for size, n in ((64, 9), (224, 4)):
        cfg = get_preset("mini", vit_image_size=size)
        assert cfg.lm_max_len >= 2048 and n * (cfg.image_tokens + 2) + 100 < cfg.lm_max_len


def test_chat_answers_two_data_url_pictures_as_it_would_their_paths(tmp_path):
    vlm = _vlm()
    a, b, _ = _pictures(tmp_path)
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": _data_url(a)}},
        {"type": "text", "text": "Which picture has a cup?"},
        {"type": "image_url", "image_url": {"url": _data_url(b)}}]}]
    s = Sampling(max_new_tokens=10)
    answer = vlm.chat(messages, sampling=s)
    assert isinstance(answer, str) and answer
    assert answer == vlm.generate(["<image> Which picture has a cup? <image>"], [[a, b]], sampling=s)[0]
    assert "".join(vlm.chat(messages, sampling=s, stream=True)) == answer
    by_path = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": a}},
                                            {"type": "text", "text": "Which picture has a cup?"},
                                            {"type": "image_url", "image_url": {"url": "file://" + b}}]}]
    assert vlm.chat(by_path, sampling=s) == answer


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}],
     "never fetches"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!"}}]}],
     "malformed"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}],
     "readable picture"),
    ([{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}], "system"),
    ([{"role": "user", "content": [{"type": "audio"}]}], "unknown content part"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "end with a user turn"),
])
def test_chat_refuses_bad_messages_with_one_clear_line(messages, match):
    with pytest.raises(TinyVLMError, match=match):
        _vlm().chat(messages)


def test_a_decompression_bomb_in_a_data_url_is_one_clear_line():
    from pathlib import Path
    bomb = Path(__file__).parent / "data/robustness/declares_20000x20000.png"
    url = "data:image/png;base64," + base64.b64encode(bomb.read_bytes()).decode()
    with pytest.raises(TinyVLMError, match="pixel"):
        _vlm().chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])


def test_stream_logprob_is_read_before_a_constraint_bans_tokens():
    """A constraint changes what may be chosen, not what the model believed of the choice."""
    vlm = _vlm()
    m = vlm.model
    prompt = vlm.tokenizer.encode_conversation([("user", "<image>")], [m.cfg.image_tokens], "").ids
    images = torch.randn(1, 3, 32, 32)
    logits, _ = m(torch.tensor([prompt]), images)
    first = logits[0, -1].log_softmax(-1)
    best = int(first.argmax())
    ban_half = lambda new, lg: torch.arange(lg.shape[-1])[None] % 2 != best % 2  # only best's parity allowed
    tok = next(stream(m, [prompt], images, Sampling(max_new_tokens=3), constraint=ban_half))
    assert tok.id == best and abs(tok.logprob - first[best].item()) < 1e-5
