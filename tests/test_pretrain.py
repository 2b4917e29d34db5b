"""Encoder pretraining by MAE and SigLIP (tinyvlm/pretrain.py): each loss falls on a tiny run,
each stage saves and resumes exactly inside the one loop, and the encoder probe runs end to end."""
import json
import math
import importlib.util
from pathlib import Path

import pytest
import torch

from conftest import interrupt_training
from tinyvlm.config import get_preset
from tinyvlm.errors import TinyVLMError
from tinyvlm.model.vision import VisionEncoder
from tinyvlm.pretrain import MAE, patchify, random_keep
from tinyvlm.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, data, **kw):
    base = dict(data=str(data), out=str(tmp_path / "run"), preset="nano", steps=40, batch_size=8, lr=3e-3,
                warmup=3, vocab_size=320, eval_every=8, save_every=4, log_every=2, progress=False,
                mae=0.4, siglip=0.4)
    return TrainConfig(**{**base, **kw})


def _metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_patches_and_masks_are_the_encoders_and_the_hidden_ones_cannot_be_seen():
    cfg = get_preset("nano", vit_stem="conv", dropout=0.0)
    images = torch.randn(2, 3, cfg.vit_image_size, cfg.vit_image_size)
    p = cfg.vit_patch_size
    assert torch.equal(patchify(images, p)[:, 1], images[:, :, :p, p:2 * p].permute(0, 2, 3, 1).reshape(2, -1))
    n = (cfg.vit_image_size // p) ** 2
    keep = random_keep(2, n, 0.75, images.device)
    assert keep.shape == (2, max(1, round(n * 0.25))) and all(len(set(k.tolist())) == keep.shape[1] for k in keep)
    assert random_keep(1, n, 0.999, images.device).shape[1] == 1 and random_keep(1, n, 1e-6, images.device).shape[1] == n - 1
    # with the conv stem, a hidden patch's pixels reach the loss's target but not the encoder
    torch.manual_seed(0)
    mae = MAE(VisionEncoder(cfg), cfg, 0.75).eval()
    seen = []
    mae.encoder.ln.register_forward_hook(lambda module, inputs, output: seen.append(output))
    torch.manual_seed(1)
    hidden = sorted(set(range(n)) - set(random_keep(2, n, 0.75, images.device)[0].tolist()))[0]  # what seed 1 hides
    g, poked = cfg.vit_image_size // p, images.clone()
    poked[0, :, (hidden // g) * p:(hidden // g + 1) * p, (hidden % g) * p:(hidden % g + 1) * p] = torch.randn(3, p, p)
    losses = []
    for x in (images, poked):
        torch.manual_seed(1)
        losses.append(mae(x).item())
    assert losses[0] != losses[1] and torch.equal(seen[0], seen[1])


def test_each_objective_learns_and_every_stage_resumes_exactly(tmp_path, shapes, monkeypatch):
    train(_cfg(tmp_path / "a", shapes))
    straight = _metrics(tmp_path / "a" / "run")
    for stage, key in (("mae", "mae_loss"), ("siglip", "siglip_loss")):
        losses = [r[key] for r in straight if r.get("stage") == stage and key in r]
        assert len(losses) >= 6 and sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, (stage, losses)
        assert (tmp_path / "a" / "run" / stage / "state.json").is_file()
    top1 = [r["val_siglip_top1"] for r in straight if "val_siglip_top1" in r]
    assert top1[-1] >= 0.5, top1  # a picture's own caption scores best (chance: 1/8, 8 distinct captions)

    for crash in (("mae", 10), ("siglip", 14)):  # stop inside each stage, then resume
        run = tmp_path / f"b{crash[1]}"
        interrupt_training(monkeypatch, _cfg(run, shapes), lambda row: (row.get("stage"), row["step"]) == crash)
        train(_cfg(run, shapes), resume=True)
        resumed = _metrics(run / "run")
        assert [(r.get("stage"), r["step"]) for r in resumed] == [(r.get("stage"), r["step"]) for r in straight]
        for a, b in zip(straight, resumed):
            key = next(k for k in ("mae_loss", "val_mae_loss", "siglip_loss", "val_siglip_loss", "loss", "val_loss")
                       if k in a)
            assert b[key] == pytest.approx(a[key], abs=1e-4), (crash, a, b)


def test_bad_pretraining_options_are_one_clear_error():
    for kw, says in ((dict(mask_ratio=0.0), "mask_ratio"), (dict(mask_ratio=1.0), "mask_ratio"),
                     (dict(mask_ratio=math.nan), "mask_ratio"), (dict(mae=math.nan), "mae"),
                     (dict(mae=0.5, siglip=0.5), "add up to 1"), (dict(siglip=0.01), "each stage needs")):
        with pytest.raises(TinyVLMError, match=says):
            TrainConfig(data="x", out="y", steps=10, **kw)


def _probe_module():
    spec = importlib.util.spec_from_file_location("encoder_probe", ROOT / "benchmarks" / "encoder_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_probe_reads_stage_folders_and_runs_on_a_tiny_world(tmp_path, shapes, capsys):
    from tinyvlm.world import write_world
    probe = _probe_module()
    world = write_world(tmp_path / "w", 24, size=32, seed=0, progress=False, workers=1)
    train(_cfg(tmp_path, shapes, steps=10, mae=0.5, siglip=0.0))
    out = tmp_path / "probe.json"
    capsys.readouterr()
    probe.main(["--encoder", f"mae={tmp_path / 'run' / 'mae'}", "--encoder", f"vlm={tmp_path / 'run'}",
                "--world", str(world), "--world-test", str(world), "--flickr", str(shapes),
                "--n", "16", "--n-test", "8", "--words", "4", "--iters", "5", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["encoder"] for r in rows] == ["random (32 px, patch)", "mae", "vlm"]  # one random: the same architecture
    assert all(0 <= r[c] <= 1 for r in rows for c in ("kinds F1 mean", "patch kind", "patch col.", "words mAP cls"))
    assert "patch kind" in capsys.readouterr().out.splitlines()[0]
    with pytest.raises(TinyVLMError, match="not a model folder"):
        probe.main(["--encoder", f"x={tmp_path}", "--world", str(world), "--world-test", str(world)])
