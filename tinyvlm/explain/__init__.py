"""Why the model said it: per-word attribution maps over the picture's patches, four methods side by
side (methods.py), DeViL's translator and layer descriptions (translator.py), and the files a
user looks at: PNG overlays, a contact sheet, an HTML page and maps.json (page.py).

    vlm = TinyVLM.from_pretrained("runs/mini")
    e = vlm.explain("picture.png", method="concept")      # the model's own description, explained
    for w in e.words:
        print(w.word, w.map.shape, e.units)              # (grid_h, grid_w) per content word
"""
from __future__ import annotations

from pathlib import Path

from ..errors import TinyVLMError
from .methods import METHODS, UNITS, Explanation, Scorer, WordMap, content_words, grid_of


def default_explainer(vlm) -> Path | None:
    """Where `tinyvlm train-explainer` puts a model's explainer by default: MODEL/explainer."""
    from .translator import EXPLAINER_DIR
    return Path(vlm.source) / EXPLAINER_DIR if getattr(vlm, "source", None) else None


def explain(vlm, image, text: str | None = None, method: str = "rollout", layer: int | None = None,
            explainer=None) -> Explanation:
    """The maps of one method for each content word of `text` about `image` (default: the model's
    own greedy ShortDesc). `layer` (devil only) picks the encoder layer; `explainer` is a trained
    translator (translator.Explainer) or its folder (default MODEL/explainer). Words a method
    cannot map (the concept head knows no such concept) are left out of `words`."""
    from ..data.images import load_image
    from . import methods
    if method not in METHODS:
        raise TinyVLMError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")
    if layer is not None and method != "devil":
        raise TinyVLMError(f"--layer picks the encoder layer DeViL decodes: the method(s) {method} read no layer")
    picture = load_image(image)
    if text is None:
        text = vlm.describe(picture)
    pixels = vlm.pixels([picture]).to(vlm.device)
    scorer = Scorer(vlm, text, vlm.cfg.image_tokens)
    if method == "devil":
        from .translator import Explainer, devil_maps
        if not isinstance(explainer, Explainer):
            folder = explainer or default_explainer(vlm)
            if folder is None:
                raise TinyVLMError("the devil method needs a trained explainer: pass explainer=FOLDER")
            explainer = Explainer.load(folder, vlm)
        layer = explainer.check_layer(layer)
        maps = devil_maps(vlm, explainer, pixels, scorer, layer)
    else:
        maps = {"gradient": methods.gradient_maps, "rollout": methods.rollout_maps,
                "concept": methods.concept_maps}[method](vlm, pixels, scorer)
    words = [WordMap(w, a, b, m) for (w, a, b), m in zip(scorer.words, maps) if m is not None]
    return Explanation(scorer.text, method, UNITS[method], layer, grid_of(vlm.cfg), picture.size, vlm.image_fit,
                       vlm.cfg.vit_image_size, words)


def available(vlm, explainer=None) -> list[str]:
    """The methods this model can be explained by: rollout needs the patch grid, concept the
    concept head, devil a trained explainer (`explainer`, else MODEL/explainer when it holds one)."""
    have = [] if vlm.cfg.mp_summary_tokens else ["rollout"]
    have.append("gradient")
    if vlm.concept_head is not None:
        have.append("concept")
    if isinstance(explainer, (str, Path)) and not trained(Path(explainer)):  # asked for, but not there
        raise TinyVLMError(f"no trained explainer in {explainer}: train one with `tinyvlm train-explainer "
                           f"--model MODEL --data DATA --out {explainer}`")
    folder = explainer or default_explainer(vlm)
    if folder is not None and (not isinstance(folder, (str, Path)) or trained(Path(folder))):
        have.append("devil")
    return have


def trained(folder: Path) -> bool:
    """Whether `folder` holds a trained explainer (translator.py's files)."""
    from .translator import EXPLAINER, WEIGHTS_DIR
    return (folder / EXPLAINER).is_file() or (folder / WEIGHTS_DIR / EXPLAINER).is_file()


def explain_to_folder(vlm, image, out, text: str | None = None, methods: str | list[str] = "all",
                      layer: int | None = None, explainer=None) -> dict:
    """`tinyvlm explain`: the maps of each method (a list, or "all" the model supports) for the
    model's description of `image` (or `text`), written into `out` by page.py, with DeViL's layer
    descriptions when a trained explainer is at hand. Returns the written paths and the text."""
    from ..data.images import load_image
    from .page import write_page
    from .translator import Explainer, describe_layer
    picture = load_image(image)  # a bad picture fails before anything is computed
    if methods == "all":
        methods = available(vlm, explainer)
    methods = [methods] if isinstance(methods, str) else list(methods)
    for m in methods:
        if m not in METHODS:
            raise TinyVLMError(f"unknown method '{m}': choose from {', '.join(METHODS)} or all")
    if layer is not None and "devil" not in methods:
        raise TinyVLMError(f"--layer picks the encoder layer DeViL decodes: the method(s) {', '.join(methods)} read no layer")
    if "devil" in methods and not isinstance(explainer, Explainer):
        folder = explainer or default_explainer(vlm)
        if folder is None:
            raise TinyVLMError("the devil method needs a trained explainer: give --explainer FOLDER")
        explainer = Explainer.load(folder, vlm)
    if text is None:
        text = vlm.describe(picture)
    results = [explain(vlm, picture, text, m, layer if m == "devil" else None, explainer) for m in methods]
    layers = []
    if isinstance(explainer, Explainer):
        pixels = vlm.pixels([picture]).to(vlm.device)
        grid = grid_of(vlm.cfg)
        locations = list(range(grid[0] * grid[1])) if grid[0] * grid[1] <= 64 else []
        layers = [describe_layer(vlm, explainer, pixels, k, locations) for k in range(explainer.layers)]
    paths = write_page(out, picture, results, layers, str(image))
    return {"text": text, "methods": methods, **paths}


__all__ = ["METHODS", "UNITS", "Explanation", "WordMap", "content_words", "default_explainer", "explain", "explain_to_folder"]
