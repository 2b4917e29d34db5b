"""Fewer visual tokens: [CLS]-attention pruning, token merging (model/reduce.py), the trained
summariser (connector.Summariser), at load and on the command line."""
import json

import pytest
import torch

from conftest import make_shapes_dataset
from tinyvlm.api import TinyVLM
from tinyvlm.cli import main
from tinyvlm.config import get_preset
from tinyvlm.data.batches import Example
from tinyvlm.errors import TinyVLMError
from tinyvlm.model import VisionLanguageModel
from tinyvlm.model.reduce import (ReduceConfig, bipartite_soft_matching, cls_attention, group_scores, image_token_count,
                                  merge_weighted, prune)
from tinyvlm.tokenizer import Tokenizer
from tinyvlm.train import TrainConfig, train

TEXTS = ["a red ball on the grass.", "a blue cup in the room.", "What colour is the ball? red"] * 5


def _saved(tmp_path, **kw):
    torch.manual_seed(0)
    tok = Tokenizer.train(TEXTS, 300)
    cfg = get_preset("nano", dropout=0.0, lm_vocab_size=64 * -(-tok.vocab_size // 64), **kw)
    TinyVLM(VisionLanguageModel(cfg).eval(), tok).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_keeping_every_token_gives_exactly_the_unpruned_output(tmp_path, shapes):
    model = _saved(tmp_path)
    image = str(shapes.parent / "images/001.png")
    full = TinyVLM.from_pretrained(model)
    kept = TinyVLM.from_pretrained(model, keep_tokens=1.0, merge=0)
    pix = full.pixels([image])
    assert torch.equal(kept.model.image_features(pix)[0], full.model.image_features(pix)[0])
    assert kept.model.image_token_counts(2) == [full.cfg.image_tokens] * 2
    assert kept.describe([image, image]) == full.describe([image, image])
    # the reducing encoder, reducing nothing, is the plain encoder
    tokens, size, scores = full.model.vision.reduced(pix)
    assert torch.equal(tokens, full.model.vision(pix)) and size is None and scores is None
    # pruning to every token changes nothing either
    feats = torch.randn(2, 17, 8)
    assert torch.equal(prune(feats, torch.rand(2, 16), 16), feats)


def test_pruning_keeps_the_tokens_cls_attends_to_most_in_order():
    weights = torch.zeros(1, 2, 6, 6)  # (N, heads, 1 + 5 patches, ...)
    weights[0, 0, 0] = torch.tensor([0.1, 0.5, 0.0, 0.1, 0.3, 0.0])
    weights[0, 1, 0] = torch.tensor([0.1, 0.1, 0.0, 0.5, 0.3, 0.0])
    scores = cls_attention(weights)
    assert torch.allclose(scores, torch.tensor([[0.3, 0.0, 0.3, 0.3, 0.0]]))
    scores = scores + torch.tensor([[0.0, 0.0, 0.01, 0.02, 0.0]])  # patches 4, 3, then 1
    tokens = torch.arange(6.0).view(1, 6, 1)  # token i holds the value i; [CLS] is 0
    assert prune(tokens, scores, 2).flatten().tolist() == [0, 3, 4]
    assert prune(tokens, scores, 3).flatten().tolist() == [0, 1, 3, 4]
    # in the encoder: the last block computes the kept tokens alone, and gives what pruning its output gives
    torch.manual_seed(0)
    m = VisionLanguageModel(get_preset("nano", dropout=0.0, vit_depth=2)).eval()
    images = torch.randn(3, 3, 32, 32)
    full, _, scores = m.vision.reduced(images, scores=True)
    _, _, weights = m.vision(images, trace=True)
    assert torch.allclose(scores, cls_attention(weights[-1]), atol=1e-6)
    early, size, _ = m.vision.reduced(images, keep=5)
    assert size is None and torch.allclose(early, prune(full, scores, 5), atol=1e-5)
    # pixel-shuffle groups (2x2 patches of a 4x4 grid, the connector's order) score their patches' sum
    per_patch = torch.zeros(1, 16)
    per_patch[0, [2, 3, 6]] = 1.0  # the top-right group
    per_patch[0, 15] = 2.5         # the bottom-right group
    assert group_scores(per_patch, 4, 2).tolist() == [[0.0, 3.0, 0.0, 2.5]]


def test_merging_removes_r_tokens_per_block_and_keeps_the_size_weighted_mean():
    torch.manual_seed(0)
    x = torch.randn(3, 17, 8)
    size = torch.randint(1, 4, (3, 17, 1)).float()
    merge = bipartite_soft_matching(torch.randn(3, 17, 4), 5)
    y, new_size = merge_weighted(merge, x, size)
    assert y.shape == (3, 12, 8) and new_size.shape == (3, 12, 1)
    assert torch.allclose(y[:, 0], x[:, 0]) and torch.equal(new_size[:, 0], size[:, 0])  # [CLS] never merges
    assert torch.allclose(new_size.sum(1), size.sum(1))
    assert torch.allclose((y * new_size).sum(1) / new_size.sum(1), (x * size).sum(1) / size.sum(1), atol=1e-5)
    # at most every even-place token but [CLS] can merge: 17 tokens -> 9 left at most
    assert bipartite_soft_matching(torch.randn(1, 17, 4), 100)(x[:1]).shape[1] == 9
    # in the encoder: r tokens fewer after each of its blocks
    cfg = get_preset("nano", dropout=0.0, vit_depth=3)
    m = VisionLanguageModel(cfg).eval()
    tokens, size, scores = m.vision.reduced(torch.randn(2, 3, 32, 32), merge=2, scores=True)
    assert tokens.shape[1] == 17 - 3 * 2 == image_token_count(cfg, ReduceConfig(merge=2))
    assert torch.allclose(size.sum(1), torch.full((2, 1), 17.0)) and scores.shape == (2, 10)
    m.reduce = ReduceConfig(keep_tokens=0.5, merge=2)
    assert [f.shape[0] for f in m.image_features(torch.randn(2, 3, 32, 32))] == m.image_token_counts(2) == [6, 6]


def test_describe_end_to_end_with_fewer_tokens(tmp_path, shapes, capsys):
    model = _saved(tmp_path)
    image = str(shapes.parent / "images/001.png")
    vlm = TinyVLM.from_pretrained(model, keep_tokens=0.25, merge=4)
    assert vlm.model.image_token_counts(1) == [1 + round(12 * 0.25)]  # 16 patches, 4 merged, a quarter kept
    assert isinstance(vlm.describe(image), str) and isinstance(vlm.ask(image, "What colour?"), str)
    assert len(vlm.logprob([Example([image], "<image> Describe.", "a red ball")])) == 1
    assert vlm.cfg == TinyVLM.from_pretrained(model).cfg  # the setting is not in the saved config
    assert main(["describe", image, "--model", str(model), "--keep-tokens", "0.5", "--merge", "2",
                 "--max-new-tokens", "4"]) == 0
    assert main(["ask", image, "What colour?", "--model", str(model), "--keep-tokens", "0.1"]) == 0
    capsys.readouterr()
    assert main(["describe", image, "--model", str(model), "--keep-tokens", "0"]) == 2
    assert "keep_tokens must be a number > 0" in capsys.readouterr().err
    with pytest.raises(TinyVLMError, match="pixel-shuffle"):
        TinyVLM.from_pretrained(_saved(tmp_path / "ps", mp_pixel_shuffle=2), merge=2)
    assert TinyVLM.from_pretrained(tmp_path / "ps" / "model", keep_tokens=0.5).model.image_token_counts(1) == [3]


def test_summary_tokens_train_through_the_one_loop_and_save(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", n=16)
    vlm = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), preset="nano", steps=4, batch_size=4,
                            warmup=1, vocab_size=300, eval_every=2, save_every=2, progress=False, summary_tokens=3))
    assert vlm.cfg.mp_summary_tokens == 3 and vlm.model.image_token_counts(1) == [4]
    saved = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())
    assert saved["model"]["mp_summary_tokens"] == 3
    back = TinyVLM.from_pretrained(tmp_path / "run")
    image = str(tmp_path / "shapes/images/000.png")
    assert back.describe(image) == vlm.describe(image)
    assert back.model.connector.summary.queries.shape == (1, 3, 64)
    assert TinyVLM.from_pretrained(tmp_path / "run", merge=2).model.image_token_counts(1) == [4]
    with pytest.raises(TinyVLMError, match="summary tokens"):
        TinyVLM.from_pretrained(tmp_path / "run", keep_tokens=0.5)
    with pytest.raises(TinyVLMError, match="pixel-shuffle"):
        get_preset("nano", mp_summary_tokens=2, mp_pixel_shuffle=2)


@pytest.mark.parametrize("argv, name", [
    (["describe", "X", "--model", "X", "--keep-tokens", "nan"], "keep_tokens"),
    (["ask", "X", "what?", "--model", "X", "--keep-tokens", "1.5"], "keep_tokens"),
    (["eval", "--model", "X", "--data", "X", "--keep-tokens", "0"], "keep_tokens"),
    (["eval", "--model", "X", "--data", "X", "--merge", "-1"], "merge"),
    (["train", "--data", "X", "--out", "X", "--steps", "5", "--summary-tokens", "-2"], "summary_tokens"),
])
def test_bad_settings_are_one_line_before_anything_is_read(tmp_path, capsys, argv, name):
    argv = [str(tmp_path / "missing") if a == "X" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0], err
