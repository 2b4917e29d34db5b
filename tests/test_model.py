"""Model, tokenizer and decoding: shapes, parameter budgets, cache correctness, save/load."""
import math

import pytest
import torch

from tinyvlm.api import TinyVLM
from tinyvlm.config import PAPER_PARAMS, get_preset
from tinyvlm.errors import TinyVLMError
from tinyvlm.generate import Sampling, generate
from tinyvlm.model import VisionLanguageModel
from tinyvlm.model.vlm import attention_mask, padding_mask
from tinyvlm.tokenizer import (ASSISTANT_ID, BOS_ID, EOS_ID, IMAGE_END_ID, IMAGE_ID, IMAGE_START_ID, SPECIALS,
                               USER_ID, Tokenizer)


@pytest.mark.parametrize("name", ["mini", "base", "large"])
def test_presets_match_paper_sizes(name):
    total = VisionLanguageModel(get_preset(name)).num_params()["total"]
    assert abs(total / PAPER_PARAMS[name] - 1) <= 0.15, total


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(TinyVLMError, match="nano, mini, base, large"):
        get_preset("huge")


def test_bad_geometry_is_a_clear_error():
    with pytest.raises(TinyVLMError, match="multiple of patch size"):
        get_preset("nano", vit_image_size=30)


def test_conv_stem_needs_a_power_of_two_patch():
    with pytest.raises(TinyVLMError, match="power of 2"):
        get_preset("nano", vit_image_size=36, vit_patch_size=12, vit_stem="conv")
    with pytest.raises(TinyVLMError, match="unknown vit_stem"):
        get_preset("nano", vit_stem="resnet")


def _tokenizer():
    return Tokenizer.train(["a red ball on the grass.", "a blue cup in the room.", "What colour is the ball? red"] * 5, 300)


def test_tokenizer_specials_and_chat_layout():
    tok = _tokenizer()
    assert [tok.tk.token_to_id(s) for s in SPECIALS] == list(range(len(SPECIALS)))
    enc = tok.encode_conversation([("user", "<image> What colour?"), ("assistant", "red")], image_tokens=[3])
    ids = enc.ids
    assert ids[:7] == [BOS_ID, USER_ID, IMAGE_START_ID, IMAGE_ID, IMAGE_ID, IMAGE_ID, IMAGE_END_ID]
    answer = ids.index(ASSISTANT_ID) + 1
    assert ids[-1] == EOS_ID and tok.decode(ids[answer:]) == "red"
    assert enc.learn == [i >= answer for i in range(len(ids))]
    # the protocol's prefix tokenises exactly like the start of the full text
    full = tok.encode_conversation([("user", "<image>"), ("assistant", "a red ball on the grass.")], [3]).ids
    part = tok.encode_conversation([("user", "<image>")], [3], prefix="a red ball").ids
    assert full[:len(part)] == part


def _model(**kw):
    torch.manual_seed(0)
    return VisionLanguageModel(get_preset("nano", dropout=0.0, **kw)).eval()


def _picture(n):
    return [IMAGE_START_ID] + [IMAGE_ID] * n + [IMAGE_END_ID]


def _prompts(cfg):
    n = cfg.image_tokens
    return [[BOS_ID, USER_ID] + _picture(n) + [40, 41, 42, ASSISTANT_ID], [BOS_ID, USER_ID] + _picture(n) + [ASSISTANT_ID]]


def test_kv_cache_matches_full_recompute():
    m = _model()
    images = torch.randn(2, 3, 32, 32)
    s = Sampling(max_new_tokens=30)
    cached = generate(m, _prompts(m.cfg), images, s, use_cache=True)
    full = generate(m, _prompts(m.cfg), images, s, use_cache=False)
    assert cached == full and len(cached[0]) == 30


def test_batched_rows_decode_as_if_alone():
    m = _model()
    images = torch.randn(2, 3, 32, 32)
    both = generate(m, _prompts(m.cfg), images, Sampling(max_new_tokens=20))
    alone = [generate(m, [p], images[i:i + 1], Sampling(max_new_tokens=20))[0] for i, p in enumerate(_prompts(m.cfg))]
    assert both == alone


def test_unpadded_rows_skip_the_mask_with_the_same_logits():
    """No row padded: prefill and step build no mask (the fused kernel's fast path); their logits
    equal those of the masked path, forced."""
    m = _model()
    ids = torch.tensor([_prompts(m.cfg)[0]])
    valid = torch.ones_like(ids, dtype=torch.bool)
    images = torch.randn(1, 3, 32, 32)
    assert padding_mask(valid, ids.shape[1]) is None
    with torch.no_grad():
        logits, state = m.prefill(ids, valid, images)
        h, cache = m.decoder(m.embed(ids, images), torch.arange(ids.shape[1])[None], attention_mask(valid, ids.shape[1]))
        torch.testing.assert_close(logits, m.decoder.head(h[:, -1]))
        nxt = logits.argmax(-1)
        stepped, _ = m.step(nxt, state)
        valid2 = torch.ones(1, ids.shape[1] + 1, dtype=torch.bool)
        h, _ = m.decoder(m.decoder.tok(nxt)[:, None], torch.tensor([[ids.shape[1]]]), attention_mask(valid2, 1), cache)
        torch.testing.assert_close(stepped, m.decoder.head(h[:, -1]))
        # and a future key never leaks into the unmasked prefill: a changed last token leaves the rest
        changed = ids.clone()
        changed[0, -1] = 50
        a, _ = m.decoder(m.embed(ids, images), torch.arange(ids.shape[1])[None])
        b, _ = m.decoder(m.embed(changed, images), torch.arange(ids.shape[1])[None])
        torch.testing.assert_close(a[:, :-1], b[:, :-1])
        assert not torch.allclose(a[:, -1], b[:, -1])


@pytest.mark.parametrize("kind", ["causal", "mask", "none"])
def test_plain_bf16_attention_matches_the_fused_kernel(kind):
    """transformer.attend computes bfloat16 CPU attention by hand (it is faster there): it must give
    the fused kernel's outputs and gradients, causal, under a padding mask, and unmasked."""
    import torch.nn.functional as F
    from tinyvlm.model.transformer import attend
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 9, 16, generator=g) for _ in range(3))
    mask = None
    if kind == "mask":  # left padding: row 0 sees all 9 keys, row 1 the last 6, row 2 the last 3
        mask = torch.ones(9, 9, dtype=torch.bool).tril() & (torch.arange(9) >= torch.tensor([[0], [3], [6]]))[:, None, :]
        mask = (mask | torch.eye(9, dtype=torch.bool))[:, None]
    causal = kind == "causal"
    leaves = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    ours, _ = attend(*leaves, mask, causal, 0.0)
    ours.float().square().sum().backward()
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_leaves, attn_mask=mask, is_causal=causal)
    ref.square().sum().backward()
    assert ours.dtype == torch.bfloat16
    assert torch.allclose(ours.float(), ref, atol=0.05)
    for a, b in zip(leaves, ref_leaves):
        assert torch.allclose(a.grad.float(), b.grad, atol=0.1, rtol=0.05)
    if causal:  # and a future key never leaks: changing the last key/value leaves earlier rows alone
        k2, v2 = k.clone(), v.clone()
        k2[..., -1, :] += 5
        v2[..., -1, :] += 5
        again, _ = attend(q.bfloat16(), k2.bfloat16(), v2.bfloat16(), None, True, 0.0)
        assert torch.equal(again[..., :-1, :], ours.detach()[..., :-1, :])


def test_a_constraints_banned_tokens_are_never_emitted_and_only_in_their_row():
    m = _model()
    images = torch.randn(2, 3, 32, 32)
    s = Sampling(max_new_tokens=20)
    free = generate(m, _prompts(m.cfg), images, s)
    banned = torch.zeros(2, m.cfg.lm_vocab_size, dtype=torch.bool)
    banned[0, free[0]] = True  # every token row 0 wrote when free
    given = []
    out = generate(m, _prompts(m.cfg), images, s, constraint=lambda new, logits: given.append(new.clone()) or banned)
    assert free[0] and not set(out[0]) & set(free[0])
    assert out[1] == free[1]
    # asked before every step, with what each row has written so far
    assert [g.shape[1] for g in given] == list(range(len(given)))
    k = min(len(out[1]), len(given) - 1)
    assert given[-1][1, :k].tolist() == out[1][:k]


def test_sampling_is_seeded_and_differs_from_greedy():
    m = _model()
    images = torch.randn(2, 3, 32, 32)
    s = Sampling(max_new_tokens=20, temperature=1.5, top_k=50, top_p=0.95, repetition_penalty=1.3, seed=7)
    a, b = generate(m, _prompts(m.cfg), images, s), generate(m, _prompts(m.cfg), images, s)
    assert a == b
    assert a != generate(m, _prompts(m.cfg), images, Sampling(max_new_tokens=20))


def test_eos_stops_generation():
    m = _model()
    with torch.no_grad():  # make <|eos|> the most likely next token everywhere
        m.decoder.head.weight.zero_()
        m.decoder.head.weight[EOS_ID] = 1.0
        m.decoder.ln.bias.fill_(1.0)
    assert generate(m, _prompts(m.cfg), torch.randn(2, 3, 32, 32), Sampling(max_new_tokens=10)) == [[], []]


def test_pixel_shuffle_shortens_image_tokens():
    m = _model(mp_pixel_shuffle=2)
    assert m.cfg.image_tokens == (32 // 8 // 2) ** 2 + 1
    ids = torch.tensor([[BOS_ID, USER_ID] + _picture(m.cfg.image_tokens) + [ASSISTANT_ID, 9]])
    logits, _ = m(ids, torch.randn(1, 3, 32, 32))
    assert logits.shape == (1, ids.shape[1], m.cfg.lm_vocab_size)


def test_slot_count_mismatch_is_an_error():
    m = _model()
    ids = torch.tensor([[BOS_ID, IMAGE_ID, ASSISTANT_ID]])
    with pytest.raises(TinyVLMError, match="image-token slots"):
        m(ids, torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_save_load_round_trip_gives_identical_logits(tmp_path, stem):
    model = _model(vit_stem=stem)
    with torch.no_grad():  # move the conv stem's batch-norm statistics off their initial values
        model.train().vision(torch.randn(4, 3, 32, 32) * 3 + 1)
    vlm = TinyVLM(model.eval(), _tokenizer())
    vlm.save_pretrained(tmp_path / "m")
    loaded = TinyVLM.from_pretrained(tmp_path / "m")
    ids = torch.tensor(_prompts(vlm.cfg)[:1])
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(vlm.model(ids, images)[0], loaded.model(ids, images)[0])
    assert loaded.tokenizer.encode("a red ball") == vlm.tokenizer.encode("a red ball")
    assert loaded.cfg.vit_stem == stem


def test_model_dir_without_weights_is_a_clear_error(tmp_path):
    vlm = TinyVLM(_model(), _tokenizer())
    vlm.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(TinyVLMError, match="no model.safetensors"):
        TinyVLM.from_pretrained(tmp_path / "m")


def test_over_long_prompt_is_rejected():
    m = _model()
    with pytest.raises(TinyVLMError, match="too long"):
        generate(m, [[BOS_ID] + [40] * m.cfg.lm_max_len], None)


def test_repetition_penalty_reads_the_history_it_keeps():
    """The decoding loop keeps the ids written so far only for the repetition penalty: with it,
    a random model that loops under plain greedy repeats itself less."""
    m = _model()
    images = torch.randn(2, 3, 32, 32)
    plain = generate(m, _prompts(m.cfg), images, Sampling(max_new_tokens=30))
    penalised = generate(m, _prompts(m.cfg), images, Sampling(max_new_tokens=30, repetition_penalty=100.0))
    repeats = lambda rows: sum(len(r) - len(set(r)) for r in rows)
    assert repeats(penalised) < repeats(plain)


def test_rope_turns_each_channel_pair_as_a_complex_number():
    """apply_rope on queries and keys together equals rotating each pair (i, i + d/2) by
    position x base^(-2i/d), written out as complex multiplication."""
    from tinyvlm.model.transformer import apply_rope, rope_angles
    torch.manual_seed(0)
    B, T, H, D = 2, 5, 3, 8
    x = torch.randn(B, T, 2, H, D)
    positions = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 1, 2, 7]])
    got = apply_rope(x, rope_angles(positions, D, 10000.0))
    theta = positions[..., None].double() * 10000.0 ** (-torch.arange(0, D, 2).double() / D)  # (B, T, D/2)
    z = torch.complex(x[..., :D // 2].double(), x[..., D // 2:].double()) * torch.polar(torch.ones_like(theta), theta)[:, :, None, None]
    torch.testing.assert_close(got, torch.cat([z.real, z.imag], dim=-1).float())
    assert not torch.allclose(got[0, 1], x[0, 1])  # position 1 turns; position 0 stays
    torch.testing.assert_close(got[:, 0], x[:, 0])


def test_decoder_rope_table_equals_the_angles_computed_per_position():
    """The decoder looks RoPE angles up in a table built once; every lookup is bitwise the angles
    `rope_angles` computes for those positions, so cached decoding and the exported graph (which
    computes them) agree."""
    from tinyvlm.model.transformer import rope_angles
    m = _model()
    positions = torch.tensor([[0, 1, 5, m.cfg.lm_max_len - 1]])
    cos, sin = rope_angles(positions, m.cfg.lm_width // m.cfg.lm_heads, m.cfg.lm_rope_base)
    assert torch.equal(m.decoder.rope_cos[positions][:, :, None, None], cos)
    assert torch.equal(m.decoder.rope_sin[positions][:, :, None, None], sin)
    assert "decoder.rope_cos" not in m.state_dict()  # follows from the config: never saved


def test_weighted_cross_entropy_matches_pytorchs_loss_and_gradient():
    """The one-pass loss equals F.cross_entropy weighted per token, value and gradient, also under a
    non-unit upstream gradient; with no targets it is 0."""
    from tinyvlm.model.loss import weighted_cross_entropy
    torch.manual_seed(0)
    logits = (torch.randn(37, 101, dtype=torch.float64) * 3).requires_grad_()
    targets, weights = torch.randint(0, 101, (37,)), torch.rand(37, dtype=torch.float64)
    ref = logits.detach().clone().requires_grad_()
    (2.5 * weighted_cross_entropy(logits, targets, weights)).backward()
    expected = 2.5 * (torch.nn.functional.cross_entropy(ref, targets, reduction="none") * weights).sum()
    expected.backward()
    torch.testing.assert_close(2.5 * weighted_cross_entropy(logits.detach(), targets, weights), expected.detach())
    torch.testing.assert_close(logits.grad, ref.grad)
    unit = logits.detach().clone().requires_grad_()
    weighted_cross_entropy(unit, targets, weights).backward()  # upstream gradient 1: handed on as is
    torch.testing.assert_close(unit.grad, ref.grad / 2.5)
    assert weighted_cross_entropy(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), torch.zeros(0)).item() == 0


def test_training_loss_weighs_each_example_the_same():
    """forward's loss is the mean over examples of each example's mean token loss, as before the
    one-pass loss: a row with 1 answer token weighs as much as a row with 10."""
    m = _model()
    ids = torch.tensor(_prompts(m.cfg)[1] + list(range(20, 30)))[None].repeat(2, 1)
    labels = torch.full_like(ids, -100)
    labels[0, -11:-1] = ids[0, -10:]
    labels[1, -2] = ids[1, -1]
    images = torch.randn(2, 3, 32, 32)
    _, loss = m(ids, images, labels)
    logits, _ = m(ids, images)
    per = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    torch.testing.assert_close(loss, (per[0].sum() / 10 + per[1].sum()) / 2)
