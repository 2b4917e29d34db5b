"""`tinyvlm eval --suite attribution`: how well each explain method points at what the model named.

For every thing word ("duck", "balls") in the model's own description of each evaluation picture
that names a thing drawn there (a plug-in's `regions` says where; the picture-book world knows
exactly), it scores each method's map, at the map's own resolution (patches) and at pixels:
- pointing game (Zhang et al. 2016, "Top-down neural attention by excitation backprop"): a hit
  when the map's highest patch is one of the thing's patches (those the region covers at least a
  fifth of, or that hold at least a fifth of the region), or, at pixels, when that patch's
  centre lies inside the region;
- mass inside: the share of the map's weight on the thing's patches (or pixels). Weights are the
  map made non-negative as each method's units allow: devil's log-probabilities by a softmax over
  locations (the location's posterior for the word), gradient x input clipped at 0, the others as
  they are.
Beside two baselines: a random map (seeded) and a centre prior (pointing at the picture's
centre; a Gaussian of a quarter of the grid for the mass). Random points inside a region about
as often as the regions' mean share of the patches (or pixels), also reported.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import plugins
from ..api import TinyVLM
from ..data.dataset import open_records
from ..data.images import load_image
from ..errors import MAX_COUNT, TinyVLMError, check_range, check_seed
from ..files import write_atomic

RESULTS = "attribution.json"


@dataclass
class AttributionConfig:
    model: str
    data: str
    out: str | None = None
    n: int = 200
    explainer: str | None = None  # default: MODEL/explainer, when it holds one
    batch_size: int = 32
    seed: int = 0                 # of the random baseline
    progress: bool = True

    def __post_init__(self):
        check_range("n", self.n, 1, MAX_COUNT, integer=True, note="records")
        check_range("batch_size", self.batch_size, 1, MAX_COUNT, integer=True)
        check_seed("seed", self.seed)


def weights(method: str, m: np.ndarray) -> np.ndarray:
    """A map as non-negative weights, for the mass inside a region (see the module docstring)."""
    m = np.asarray(m, dtype=np.float64)
    if method.startswith("devil"):
        e = np.exp(m - m.max())
        return e / e.sum()
    return np.clip(m, 0, None)


def centre_prior(grid: tuple[int, int]) -> np.ndarray:
    gh, gw = grid
    y, x = np.mgrid[0:gh, 0:gw]
    d2 = ((y + 0.5 - gh / 2) / gh) ** 2 + ((x + 0.5 - gw / 2) / gw) ** 2
    return np.exp(-d2 / (2 * 0.25 ** 2))


def score(e, method: str, m: np.ndarray, region: np.ndarray, point=None) -> dict:
    """One map against a bool region (height, width) of the original picture, at two resolutions:
    - patches (the map's own): a patch is the thing's when the region covers at least a fifth of
      the patch or a fifth of the region (the world's concept targets use the same rule); a hit
      when the highest patch is the thing's; mass: the weights on the thing's patches;
    - pixels: a hit when the highest patch's centre lies in the region; mass: the weights spread
      over the patches' pixels, inside the region.
    `point` (x, y) replaces the map's peak (the centre prior points at the picture's centre)."""
    x, y = point if point is not None else e.peak(m)
    h, w = region.shape
    px, py = min(w - 1, max(0, int(x))), min(h - 1, max(0, int(y)))
    n = e.grid[0] * e.grid[1]
    cells = e.in_picture(np.arange(n, dtype=np.float64).reshape(e.grid))  # each pixel's patch (NaN: unseen)
    seen = np.isfinite(cells)
    idx = cells[seen].astype(int)
    cell_px = np.bincount(idx, minlength=n)
    over = np.bincount(idx, weights=region[seen].astype(np.float64), minlength=n)
    mine = (over > 0) & (over >= 0.2 * np.minimum(region.sum(), cell_px))
    wts = weights(method, m).ravel()
    pix = e.in_picture(weights(method, m))
    pix = np.where(np.isfinite(pix), pix, 0.0)
    peak = cells[py, px]
    return {"pointing": bool(np.isfinite(peak) and mine[int(peak)]),
            "mass_inside": float(wts[mine].sum() / wts.sum()) if wts.sum() > 0 else float(mine.mean()),
            "pointing_pixels": bool(region[py, px]),
            "mass_inside_pixels": float((pix * region).sum() / pix.sum()) if pix.sum() > 0 else float(region.mean()),
            "area": float(mine.mean()), "area_pixels": float(region.mean())}


def evaluate_attribution(cfg: AttributionConfig) -> dict:
    """Run every method the model supports (devil at every encoder layer when an explainer is
    found) on the thing words of its descriptions of `cfg.data`; write attribution.json to `out`."""
    from ..explain import available, explain
    from ..explain.translator import Explainer
    records = open_records(cfg.data, "val").head(cfg.n)
    finders = []
    for r in records:
        p = plugins.for_record(r)
        if p is None or p.regions is None:
            raise TinyVLMError(f"{cfg.data} does not say where things are drawn (no plug-in gives its records' "
                               "regions): the attribution suite needs picture-book scenes")
        finders.append(p.regions)
    vlm = TinyVLM.from_pretrained(cfg.model)
    methods = available(vlm, cfg.explainer)
    runs: list[tuple[str, str, int | None]] = [(m, m, None) for m in methods if m != "devil"]
    explainer = None
    if "devil" in methods:
        from ..explain import default_explainer
        explainer = Explainer.load(cfg.explainer or default_explainer(vlm), vlm)
        runs += [(f"devil L{k}", "devil", k) for k in range(explainer.layers)]
    images = [r.images[0] for r in records]
    texts = []
    for i in range(0, len(images), cfg.batch_size):
        texts += vlm.describe(images[i:i + cfg.batch_size])
    names = [name for name, _, _ in runs] + ["random", "centre"]
    scores: dict[str, list[dict]] = {n: [] for n in names}
    for k, (record, text, find) in enumerate(tqdm(list(zip(records, texts, finders)), disable=not cfg.progress,
                                                  desc="attribution", unit="picture")):
        picture = load_image(record.images[0])
        for name, method, layer in runs:
            e = explain(vlm, picture, text, method, layer, explainer)
            for j, w in enumerate(e.words):
                region = find(record, w.word, picture.size)
                if region is None:
                    continue
                scores[name].append(score(e, name, w.map, region))
                if name == runs[0][0]:  # the baselines, once a word
                    rng = np.random.default_rng([cfg.seed, k, j])
                    for base, m, point in (("random", rng.random(e.grid), None),
                                           ("centre", centre_prior(e.grid), (picture.size[0] / 2, picture.size[1] / 2))):
                        scores[base].append(score(e, base, m, region, point))
    keys = ("pointing", "mass_inside", "pointing_pixels", "mass_inside_pixels")
    rows = {n: {**{k: float(np.mean([x[k] for x in v])) if v else None for k in keys}, "words": len(v)}
            for n, v in scores.items()}
    first = scores[runs[0][0]] if runs else []
    results = {"model": cfg.model, "data": cfg.data, "n": len(records), "methods": rows,
               "mean_area_share": float(np.mean([x["area"] for x in first])) if first else None,
               "mean_area_share_pixels": float(np.mean([x["area_pixels"] for x in first])) if first else None,
               "explainer_steps": explainer.steps if explainer else None,
               "samples": [{"image": r.images[0], "text": t} for r, t in zip(records[:8], texts)]}
    if cfg.out:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(cfg.out) / RESULTS, json.dumps(results, indent=2))
    return results


def table(results: dict) -> str:
    """The results as a markdown table."""
    lines = ["| method | pointing game (patches) | mass inside (patches) | pointing game (pixels) | mass inside (pixels) "
             "| thing words |", "|---|---|---|---|---|---|"]
    fmt = lambda v: "–" if v is None else f"{v:.3f}"
    for name, r in results["methods"].items():
        lines.append(f"| {name} | {fmt(r['pointing'])} | {fmt(r['mass_inside'])} | {fmt(r['pointing_pixels'])} "
                     f"| {fmt(r['mass_inside_pixels'])} | {r['words']} |")
    lines.append(f"\n{results['n']} pictures; the things' mean share of the patches: {fmt(results['mean_area_share'])}, "
                 f"of the pixels: {fmt(results['mean_area_share_pixels'])}")
    return "\n".join(lines)
