"""What does a frozen image encoder know? Linear probes on its features, per pretraining choice.

Each encoder (a trained model folder, a training run, or one stage of a run: RUN/mae/, RUN/siglip/,
RUN/concepts/) is frozen; a linear classifier (logistic regression: a torch linear layer, full-batch
L-BFGS with a little L2, on standardised features) learns to read from its features, fitted on one
set of pictures and scored on another. Beside each encoder: the same architecture with random
weights (the same seed), the floor an encoder must beat to have learned anything.

Picture-book world scenes (--world TRAIN --world-test TEST), from each scene's graph:
  kinds F1    which kinds of thing are in the picture (multi-label, micro F1), from [CLS] / the
              mean of the patches
  patch kind  the kind of thing covering each patch (accuracy over covered patches): shape, since a
              kind comes in every colour
  patch col.  the colour of the thing covering each patch (accuracy over covered patches)
  count       how many of the scene's biggest thing there are (accuracy; from the patch mean)
  place       the background (accuracy; from the patch mean)
In-context episodes (--icl TRAIN [--icl TRAIN ...] --icl-test TEST, folders of `tinyvlm data icl`): what
each family's pictures would have to tell the decoder (the pictures and their truth are rebuilt from
the folder's seed by tinyvlm.world.icl.Pictures); each from [CLS] / the patch mean / all patches
concatenated (where a thing is: left digit against right), beside the majority answer:
  op. left, op. right   the digits of an operator picture "a ? b" (10-way each); op. both: both right
  count answer          the answer to a count shot ("colour: red" -> how many): one probe per value
                        (how many red things), scored on the test episodes' own shots
  count total           how many things the scene holds
  one kind, one colour  the kind and colour of a single thing (what matching compares)
  pair same kind/colour whether a matching pair shares the kind / the colour, from [|a - b|, a * b]
                        of the two pictures' features (a linear layer cannot compare a concatenation);
  pair ... by one       the same, answered by comparing the "one kind" / "one colour" probe's
                        readings of the two pictures
Flickr8k (--flickr DIR, an imported dataset folder with train/ and val/):
  words mAP   which of the K most frequent caption content words (concepts.caption_words) any of a
              photo's five captions uses (multi-label, mean average precision over the K words;
              chance is each word's frequency), from [CLS] / the patch mean

    python benchmarks/encoder_probe.py --encoder mae=runs/x/mae --encoder siglip=runs/y/siglip \\
        --world /work/exp/world-train --world-test /work/exp/world-test [--flickr runs/flickr8k/data] [--json out.json]
    python benchmarks/encoder_probe.py --encoder init=runs/icl/init --icl data/icl-train --icl-test data/icl-test
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tinyvlm.api import TinyVLM
from tinyvlm.checkpoint import RUN_CHECKPOINT, read_json
from tinyvlm.concepts import caption_words
from tinyvlm.config import VLMConfig
from tinyvlm.data.dataset import open_records
from tinyvlm.data.episodes import Episode
from tinyvlm.data.records import read_jsonl
from tinyvlm.data.images import preprocess
from tinyvlm.errors import TinyVLMError
from tinyvlm.model.vision import VisionEncoder
from tinyvlm.train import CONCEPT_WEIGHTS, STATE, TrainConfig
from tinyvlm.world import COLOURS, KINDS, PLACES
from tinyvlm.world.concepts import covered_cells
from tinyvlm.world.icl import EPISODES_FILE, INFO_FILE, Pictures
from tinyvlm.world.scene import SIZES

COLUMNS = ("kinds F1 cls", "kinds F1 mean", "patch kind", "patch col.", "count", "place", "words mAP cls",
           "words mAP mean")
ICL_TARGETS = ("op. left", "op. right", "op. both", "count answer", "count total", "one kind", "one colour",
               "pair same kind", "pair same colour", "pair kind by one", "pair colour by one")
ICL_FEATURES = ("cls", "mean", "patches")
COUNT_VALUES = {"colour": COLOURS, "kind": tuple(sorted(KINDS)), "size": SIZES}  # what a count question may name
COUNT_KEYS = [(attr, v) for attr, values in COUNT_VALUES.items() for v in values]  # one count probe each


# --- encoders ------------------------------------------------------------------------------------
def load_encoder(path: str) -> tuple[VisionEncoder, VLMConfig]:
    """A frozen encoder from a model folder, a training run (its checkpoint/), or a pretraining
    stage's folder (state.json + encoder_and_head.safetensors, weights named encoder.*)."""
    p = Path(path)
    if (p / RUN_CHECKPOINT / STATE).is_file() and not (p / "config.json").is_file():
        p = p / RUN_CHECKPOINT
    if (p / "config.json").is_file():
        vlm = TinyVLM.from_pretrained(p, device="cpu")
        return vlm.model.vision.eval(), vlm.cfg
    if (p / STATE).is_file() and (p / CONCEPT_WEIGHTS).is_file():
        saved = read_json(p / STATE)["train_config"]
        cfg = TrainConfig(**{**saved, "progress": False}).model_config()
        encoder = VisionEncoder(cfg)
        weights = {k[len("encoder."):]: v for k, v in load_file(p / CONCEPT_WEIGHTS).items() if k.startswith("encoder.")}
        encoder.load_state_dict(weights)
        return encoder.eval(), cfg
    raise TinyVLMError(f"{path}: not a model folder, a training run or a pretraining stage's folder")


def random_encoder(cfg: VLMConfig, seed: int = 0) -> VisionEncoder:
    torch.manual_seed(seed)
    return VisionEncoder(cfg).eval()


@torch.no_grad()
def features(encoder: VisionEncoder, pixels: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1 + patches, width): [CLS] then the patches."""
    return torch.cat([encoder(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])


# --- the linear probe ----------------------------------------------------------------------------
def fit_linear(x: torch.Tensor, y: torch.Tensor, multilabel: bool, l2: float = 1e-3, iters: int = 100) -> torch.nn.Linear:
    """Logistic regression on x (N, D): y (N,) class ids, or (N, K) 0/1 with `multilabel`. Features
    are standardised inside (the returned layer takes raw features)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    k = y.shape[1] if multilabel else int(y.max()) + 1
    torch.manual_seed(0)
    layer = torch.nn.Linear(x.shape[1], k)
    opt = torch.optim.LBFGS(layer.parameters(), lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        out = layer(z)
        # per label summed, so each label is its own logistic regression under the same L2 (a mean over
        # labels would weaken every rare label's data against the penalty K-fold)
        loss = (F.binary_cross_entropy_with_logits(out, y.float(), reduction="sum") / len(y) if multilabel
                else F.cross_entropy(out, y))
        loss = loss + l2 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():  # fold the standardisation into the layer
        layer.weight /= std
        layer.bias -= (layer.weight * mean).sum(1)
    return layer


@torch.no_grad()
def accuracy(layer, x, y) -> float:
    return (layer(x).argmax(1) == y).float().mean().item()


@torch.no_grad()
def micro_f1(layer, x, y) -> float:
    pred, true = layer(x) > 0, y > 0
    return 2 * (pred & true).sum().item() / max(1, pred.sum().item() + true.sum().item())


@torch.no_grad()
def mean_ap(scores: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over labels (with a positive) of average precision: the precision at each positive,
    ranked by score."""
    aps = []
    for k in range(y.shape[1]):
        t = y[scores[:, k].argsort(descending=True), k].float()
        if t.sum() > 0:
            aps.append(((t.cumsum(0) / torch.arange(1, len(t) + 1)) * t).sum().item() / t.sum().item())
    return sum(aps) / max(1, len(aps))


# --- the pictures and their truth ----------------------------------------------------------------
def world_set(path: str, n: int, size: int, grid: int) -> dict:
    """Pixels and targets of the first n scenes of a world folder."""
    records = [r for r in open_records(path, "train") if r.scene][:n]
    if not records:
        raise TinyVLMError(f"{path}: no picture-book scenes (records with a scene graph)")
    kinds, colours, places = list(KINDS), list(COLOURS), list(PLACES)  # the world's order: the same ids in every folder
    pix = torch.stack([preprocess(r.images[0], size) for r in records])
    present = torch.zeros(len(records), len(kinds))
    patch_kind = torch.full((len(records), grid * grid), -1, dtype=torch.long)
    patch_colour = torch.full_like(patch_kind, -1)
    count, place = torch.zeros(len(records), dtype=torch.long), torch.zeros(len(records), dtype=torch.long)
    for i, r in enumerate(records):
        things = r.scene["things"]
        for t in things:  # later things are drawn on top
            present[i, kinds.index(t["kind"])] = 1
            cells = covered_cells(list(t["box"]), grid)
            patch_kind[i, cells], patch_colour[i, cells] = kinds.index(t["kind"]), colours.index(t["colour"])
        biggest = max(things, key=lambda t: (t["box"][2] - t["box"][0]) * (t["box"][3] - t["box"][1]))
        count[i], place[i] = biggest["count"], places.index(r.scene["place"])
    return {"pixels": pix, "present": present, "patch_kind": patch_kind, "patch_colour": patch_colour,
            "count": count, "place": place}


def flickr_sets(path: str, n: int, n_test: int, size: int, k: int) -> tuple[dict, dict, list[str]]:
    """Pixels and word targets of n training and n_test validation photos, for the k most frequent
    caption content words of the training photos."""
    train = list(_first(open_records(path, "train"), n))
    test = list(_first(open_records(path, "val"), n_test))
    counts = Counter(w for r in train for w in caption_words(r))
    vocab = [w for w, _ in counts.most_common(k)]

    def one(records):
        y = torch.tensor([[w in caption_words(r) for w in vocab] for r in records], dtype=torch.float)
        return {"pixels": torch.stack([preprocess(r.images[0], size) for r in records]), "words": y}
    return one(train), one(test), vocab


def _first(records, n):
    return (r for _, r in zip(range(n), (r for r in records if len(r.images) == 1)))


# --- one encoder's row ---------------------------------------------------------------------------
def probe_world(encoder, train: dict, test: dict, iters: int = 100) -> dict:
    f, ft = features(encoder, train["pixels"]), features(encoder, test["pixels"])
    row = {}
    for name, pick in (("cls", lambda t: t[:, 0]), ("mean", lambda t: t[:, 1:].mean(1))):
        layer = fit_linear(pick(f), train["present"], multilabel=True, iters=iters)
        row[f"kinds F1 {name}"] = micro_f1(layer, pick(ft), test["present"])
    mean, mean_t = f[:, 1:].mean(1), ft[:, 1:].mean(1)
    for col, key in (("count", "count"), ("place", "place")):
        row[col] = accuracy(fit_linear(mean, train[key], False, iters=iters), mean_t, test[key])
    patches, patches_t = f[:, 1:].reshape(-1, f.shape[-1]), ft[:, 1:].reshape(-1, f.shape[-1])
    for col, key in (("patch kind", "patch_kind"), ("patch col.", "patch_colour")):
        y, yt = train[key].flatten(), test[key].flatten()
        layer = fit_linear(patches[y >= 0], y[y >= 0], False, iters=iters)
        row[col] = accuracy(layer, patches_t[yt >= 0], yt[yt >= 0])
    return row


def probe_flickr(encoder, train: dict, test: dict, iters: int = 100) -> dict:
    f, ft = features(encoder, train["pixels"]), features(encoder, test["pixels"])
    row = {}
    for name, pick in (("cls", lambda t: t[:, 0]), ("mean", lambda t: t[:, 1:].mean(1))):
        layer = fit_linear(pick(f), train["words"], multilabel=True, iters=iters)
        with torch.no_grad():
            row[f"words mAP {name}"] = mean_ap(layer(pick(ft)), test["words"])
    return row


# --- in-context episodes: what each family's pictures hold ----------------------------------------
def icl_set(folders: list[str], size: int, max_pairs: int) -> dict:
    """The pictures of episode folders and their truth: operator pictures (digits), count scenes
    (every value's count, the total) and count shots, single things (kind, colour) and matching
    pairs. The truth comes from rebuilding each folder's pictures from its seed (Pictures is
    deterministic); a picture that does not match the folder's own file is refused."""
    pics, names, sets = [], {}, {"sum": [], "scene": [], "shot": [], "one": [], "pair": []}

    def pic(folder: Path, name: str) -> int:
        key = (folder, name)
        if key not in names:
            names[key] = len(pics)
            pics.append(preprocess(folder / name, size))
        return names[key]

    for f in folders:
        folder = Path(f)
        if not (folder / INFO_FILE).is_file():
            raise TinyVLMError(f"{f}: not an episode folder of tinyvlm data icl (no {INFO_FILE})")
        info = read_json(folder / INFO_FILE)
        with tempfile.TemporaryDirectory() as tmp:
            built = Pictures(Path(tmp), info["size"], info["seed"], info.get("per_kind", 40), info.get("scenes", 400),
                             info.get("drawings", 2))
            probe = built.scenes[0][0]
            if not torch.equal(preprocess(Path(tmp) / probe, size), preprocess(folder / probe, size)):
                raise TinyVLMError(f"{f}: its pictures are not what its seed rebuilds (made by another version?)")
        for (a, b), paths in built.sums.items():
            sets["sum"] += [(pic(folder, p), a, b) for p in paths]
        for path, scene in built.scenes:
            counts = [sum(t.count for t in scene.things if getattr(t, attr) == v) for attr, v in COUNT_KEYS]
            sets["scene"].append((pic(folder, path), counts, sum(t.count for t in scene.things)))
        single = {path: attrs for v in built.single.values() for path, attrs in v}
        sets["one"] += [(pic(folder, p), list(KINDS).index(a["kind"]), COLOURS.index(a["colour"]))
                        for p, a in single.items()]
        for r in read_jsonl(folder / EPISODES_FILE):
            family = (r.extra.get("icl") or {}).get("family")
            images = [str(i) for i in r.images]
            if family == "count":
                episode = Episode.from_record(r)
                for shot in (*episode.support, episode.query):
                    attr, _, value = shot.question.partition(": ")
                    sets["shot"].append((pic(folder, str(shot.images[0])), COUNT_KEYS.index((attr, value)),
                                         int(shot.answer)))
            elif family == "matching" and len(sets["pair"]) < max_pairs:
                for a, b in zip(images[::2], images[1::2]):
                    sa, sb = single[Path(a).name], single[Path(b).name]
                    sets["pair"].append((pic(folder, a), pic(folder, b), int(sa["kind"] == sb["kind"]),
                                         int(sa["colour"] == sb["colour"])))
    return {"pixels": torch.stack(pics), **sets}


def _pick(f: torch.Tensor, how: str) -> torch.Tensor:
    return {"cls": lambda: f[:, 0], "mean": lambda: f[:, 1:].mean(1), "patches": lambda: f[:, 1:].flatten(1)}[how]()


def _majority(y: torch.Tensor, yt: torch.Tensor) -> float:
    return (yt == torch.mode(y).values).float().mean().item()


def probe_icl(encoder, train: dict, test: dict, iters: int = 100) -> dict:
    """Accuracy of linear probes for every ICL target (ICL_TARGETS) from every feature (ICL_FEATURES),
    keyed "target|feature", and the majority answer's accuracy, keyed "target|majority"."""
    f, ft = features(encoder, train["pixels"]), features(encoder, test["pixels"])
    row = {}

    def fit(target, x, y, xt, yt, how):
        layer = fit_linear(x, y, False, iters=iters)
        row[f"{target}|{how}"], row[f"{target}|majority"] = accuracy(layer, xt, yt), _majority(y, yt)
        return layer

    def col(rows, j):
        return torch.tensor([r[j] for r in rows])

    for how in ICL_FEATURES:
        g, gt = _pick(f, how), _pick(ft, how)
        both, sums = 1, gt[col(test["sum"], 0)]
        for target, j in (("op. left", 1), ("op. right", 2)):
            layer = fit(target, g[col(train["sum"], 0)], col(train["sum"], j), sums, col(test["sum"], j), how)
            both = both * (layer(sums).argmax(1) == col(test["sum"], j))
        row[f"op. both|{how}"] = both.float().mean().item()
        row["op. both|majority"] = ((col(test["sum"], 1) == torch.mode(col(train["sum"], 1)).values)
                                    & (col(test["sum"], 2) == torch.mode(col(train["sum"], 2)).values)).float().mean().item()
        for target, j in (("one kind", 1), ("one colour", 2)):
            layer = fit(target, g[col(train["one"], 0)], col(train["one"], j), gt[col(test["one"], 0)], col(test["one"], j), how)
            by = f"pair {target.split()[1]} by one"
            read = [layer(gt[col(test["pair"], i)]).argmax(1) for i in (0, 1)]
            row[f"{by}|{how}"] = ((read[0] == read[1]).long() == col(test["pair"], j + 1)).float().mean().item()
            row[f"{by}|majority"] = _majority(col(train["pair"], j + 1), col(test["pair"], j + 1))
        scenes, counts = g[col(train["scene"], 0)], col(train["scene"], 1)
        fit("count total", scenes, col(train["scene"], 2), gt[col(test["scene"], 0)], col(test["scene"], 2), how)
        shots, value, answer = gt[col(test["shot"], 0)], col(test["shot"], 1), col(test["shot"], 2)
        right = 0
        for v in value.unique().tolist():  # one probe per value a test shot asks about: "how many red things"
            at = value == v
            guess = fit_linear(scenes, counts[:, v], False, iters=iters)(shots[at]).argmax(1)
            right += (guess == answer[at]).sum().item()
        row[f"count answer|{how}"] = right / len(answer)
        row["count answer|majority"] = _majority(col(train["shot"], 2), answer)  # the training shots' commonest answer
        pair, pair_t = (torch.cat([(g[col(train["pair"], 0)] - g[col(train["pair"], 1)]).abs(),
                                   g[col(train["pair"], 0)] * g[col(train["pair"], 1)]], 1),
                        torch.cat([(gt[col(test["pair"], 0)] - gt[col(test["pair"], 1)]).abs(),
                                   gt[col(test["pair"], 0)] * gt[col(test["pair"], 1)]], 1))
        for target, j in (("pair same kind", 2), ("pair same colour", 3)):
            fit(target, pair, col(train["pair"], j), pair_t, col(test["pair"], j), how)
    return row


def print_icl(rows: list[dict], train: dict, test: dict) -> None:
    """One line a target: the majority answer, then each encoder's probes on each feature."""
    print(f"\nICL pictures (fit on {len(train['sum'])} operator pictures, {len(train['scene'])} scenes, "
          f"{len(train['one'])} things, {len(train['pair'])} pairs; scored on {len(test['sum'])}, "
          f"{len(test['shot'])} count shots / {len(test['scene'])} scenes, {len(test['one'])}, {len(test['pair'])})")
    heads = ["majority"] + [f"{r['encoder']} {how}" for r in rows for how in ICL_FEATURES]
    print("| target | " + " | ".join(heads) + " |")
    print("|---" * (len(heads) + 1) + "|")
    for t in ICL_TARGETS:
        cells = [rows[0][f"{t}|majority"]] + [r[f"{t}|{how}"] for r in rows for how in ICL_FEATURES]
        print(f"| {t} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")


def named_path(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", type=named_path, action="append", required=True, metavar="NAME=PATH",
                    help="a model folder, training run or pretraining stage folder (repeat); each is probed "
                         "beside a random-weights encoder of its own architecture")
    ap.add_argument("--world", help="picture-book world folder to fit the probes on")
    ap.add_argument("--world-test", help="world folder to score them on (e.g. another seed)")
    ap.add_argument("--flickr", help="an imported captioned dataset folder (train/ and val/), e.g. Flickr8k")
    ap.add_argument("--icl", action="append", metavar="FOLDER",
                    help="episode folder(s) of tinyvlm data icl to fit the ICL probes on (repeat)")
    ap.add_argument("--icl-test", metavar="FOLDER", help="episode folder to score them on (e.g. --held-out --seed 1)")
    ap.add_argument("--pairs", type=int, default=4000, help="matching pairs to read from the --icl folders, at most")
    ap.add_argument("--n", type=int, default=2000, help="pictures to fit on (per dataset)")
    ap.add_argument("--n-test", type=int, default=500, help="pictures to score on")
    ap.add_argument("--words", type=int, default=20, help="the most frequent caption words to probe for")
    ap.add_argument("--iters", type=int, default=100, help="L-BFGS iterations per probe")
    ap.add_argument("--json", help="also write the table here, as JSON")
    a = ap.parse_args(argv)
    if not a.world and not a.flickr and not a.icl:
        raise TinyVLMError("give --world (with --world-test), --flickr and/or --icl (with --icl-test): the pictures to probe on")
    if bool(a.icl) != bool(a.icl_test):
        raise TinyVLMError("--icl and --icl-test go together: probes are fitted on one and scored on the other")
    if bool(a.world) != bool(a.world_test):
        raise TinyVLMError("--world and --world-test go together: probes are fitted on one and scored on the other")
    torch.set_num_threads(1)
    encoders, seen = [], set()
    for name, path in a.encoder:
        enc, cfg = load_encoder(path)
        key = (cfg.vit_image_size, cfg.vit_patch_size, cfg.vit_stem, cfg.vit_width, cfg.vit_depth)
        if key not in seen:  # one random baseline per architecture
            seen.add(key)
            encoders.append((f"random ({cfg.vit_image_size} px, {cfg.vit_stem})", random_encoder(cfg), cfg))
        encoders.append((name, enc, cfg))
    data: dict = {}  # (dataset, image size) -> train, test
    rows = []
    for name, enc, cfg in encoders:
        t0, row = time.time(), {"encoder": name}
        size, grid = cfg.vit_image_size, cfg.vit_image_size // cfg.vit_patch_size
        if a.world:
            if ("world", size) not in data:
                data["world", size] = (world_set(a.world, a.n, size, grid), world_set(a.world_test, a.n_test, size, grid))
            row.update(probe_world(enc, *data["world", size], a.iters))
        if a.flickr:
            if ("flickr", size) not in data:
                train, test, vocab = flickr_sets(a.flickr, a.n, a.n_test, size, a.words)
                data["flickr", size] = train, test
                chance = mean_ap(torch.rand(len(test["words"]), len(vocab), generator=torch.Generator().manual_seed(0)),
                                 test["words"])
                print(f"Flickr words ({len(vocab)}): {', '.join(vocab)}; chance mAP {chance:.3f}", file=sys.stderr)
            row.update(probe_flickr(enc, *data["flickr", size], a.iters))
        if a.icl:
            if ("icl", size) not in data:
                data["icl", size] = icl_set(a.icl, size, a.pairs), icl_set([a.icl_test], size, a.pairs)
            row.update(probe_icl(enc, *data["icl", size], a.iters))
        rows.append(row)
        print(f"{name}: probed in {time.time() - t0:.0f} s", file=sys.stderr)
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    if cols:
        width = max(len(r["encoder"]) for r in rows)
        print(f"{'encoder':<{width}} | " + " | ".join(cols))
        print("-" * (width + sum(len(c) + 3 for c in cols)))
        for r in rows:
            print(f"{r['encoder']:<{width}} | " + " | ".join(f"{r[c]:>{len(c)}.3f}" for c in cols))
    if a.icl:
        print_icl(rows, *next(v for k, v in data.items() if k[0] == "icl"))
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "n": a.n, "n_test": a.n_test}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    try:
        main()
    except TinyVLMError as e:
        raise SystemExit(f"error: {e}")
