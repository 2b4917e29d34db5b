"""The picture-book world is a plug-in: nothing outside tinyvlm/world/ imports it (the CLI and demo
aside), `import tinyvlm` stays light, the core finds the world's concepts, grounding and judge
through tinyvlm.plugins, and a saved model remembers which plug-in labelled its concepts."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinyvlm import plugins
from tinyvlm.data.records import Record
from tinyvlm.errors import TinyVLMError

PACKAGE = Path(__file__).parents[1] / "tinyvlm"
MAY_IMPORT_WORLD = {"world", "cli.py", "demo.py"}  # top-level entries of the package


def world_imports(source: str, module: str, target: str = "tinyvlm.world") -> list[str]:
    """The imports in `source` (the module `module`, e.g. "tinyvlm.eval.run") that reach `target`,
    absolute or relative ("from ..world import x", "from . import world", "from .world.scene import y")."""
    package = module.split(".")[:-1]  # a module's relative imports start from its package
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
            source_module = ".".join(p for p in (base, node.module or "") if p)
            names = [source_module, *(f"{source_module}.{a.name}" for a in node.names)]
        else:
            continue
        if any(n == target or n.startswith(target + ".") for n in names):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_scan_catches_every_way_of_importing_the_world():
    """Else the rule below could pass by seeing nothing."""
    assert world_imports("from ..world import render", "tinyvlm.eval.run")
    assert world_imports("from .world.scene import Scene", "tinyvlm.concepts")
    assert world_imports("from . import world", "tinyvlm.api")
    assert world_imports("from .. import world", "tinyvlm.data.batches")
    assert world_imports("import tinyvlm.world.checker as c", "tinyvlm.api")
    assert world_imports("def f():\n    from tinyvlm.world import verify", "tinyvlm.api")
    assert not world_imports("from . import plugins\nfrom .text import words\nimport worldly", "tinyvlm.api")
    assert not world_imports("from ..data.world_notes import x", "tinyvlm.eval.run")


def test_the_data_layer_does_not_import_the_model():
    """Records, readers and batches are read by tools that never build a network (import, rewrite)."""
    offenders = {}
    for path in sorted((PACKAGE / "data").rglob("*.py")):
        module = ".".join(("tinyvlm", *path.relative_to(PACKAGE).with_suffix("").parts))
        for target in ("tinyvlm.model", "tinyvlm.api", "tinyvlm.train", "tinyvlm.generate"):
            if found := world_imports(path.read_text(), module, target):
                offenders[module] = found
    assert not offenders, offenders


def test_nothing_outside_the_world_imports_it_but_the_cli_and_the_demo():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in MAY_IMPORT_WORLD:
            continue
        module = ".".join(("tinyvlm", *rel.with_suffix("").parts))
        if found := world_imports(path.read_text(), module):
            offenders[str(rel)] = found
    assert not offenders, offenders


def _modules_after(code: str) -> set[str]:
    """The modules loaded after running `code` in a fresh Python."""
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_import_tinyvlm_loads_neither_matplotlib_nor_the_world():
    loaded = _modules_after("import tinyvlm")
    assert not {m for m in loaded if m.split(".")[0] == "matplotlib"}
    assert "tinyvlm.world.render" not in loaded and not {m for m in loaded if m.startswith("tinyvlm.world")}


def test_plotting_keeps_the_users_matplotlib_backend(tmp_path):
    """A report's plots are drawn without pyplot: the backend the user chose stays, and pyplot is
    never imported on the user's behalf."""
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 3 / s}) + "\n" for s in range(1, 20)))
    code = (f"import matplotlib\nmatplotlib.use('svg')\nfrom tinyvlm.plots import plot_loss\n"
            f"assert plot_loss({str(metrics)!r}, {str(tmp_path / 'loss.png')!r})\n"
            f"assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")
    loaded = _modules_after(code)
    assert "matplotlib.pyplot" not in loaded
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_the_world_is_found_through_its_entry_point_and_labels_scene_records():
    world = plugins.get("world")
    assert world.name == "world" and "grounded" in world.judges and plugins.judges()["grounded"] is world
    scene = {"place": "park", "time": "day", "weather": "sunny", "things": [
        {"kind": "ball", "colour": "red", "size": "small", "count": 1, "box": [0.05, 0.05, 0.2, 0.2]}]}
    assert plugins.for_record(Record(images=["x.png"], text="", scene=scene)) is world
    assert plugins.for_record(Record(images=["x.png"], text="a red ball")) is None
    assert plugins.labeller(["ball", "red ball", "place park"]) == "world"
    assert plugins.labeller(["ball", "dog", "grass"]) is None  # caption words are nobody's


def test_a_record_whose_plugin_is_missing_is_a_clear_error(monkeypatch):
    scene = {"place": "park", "time": "day", "weather": "sunny", "things": []}
    plugins.get.cache_clear()
    monkeypatch.setattr(plugins, "_found", lambda: {})
    try:
        with pytest.raises(TinyVLMError, match="plug-in 'world' is not installed"):
            plugins.for_record(Record(images=["x.png"], text="", scene=scene))
        with pytest.raises(TinyVLMError, match="plug-in 'nope' is not installed"):
            plugins.get("nope")
        assert plugins.for_record(Record(images=["x.png"], text="a red ball")) is None
    finally:
        plugins.get.cache_clear()


# The existing grounding test's scene and expected sets (test_concepts.py), now through the plug-in.
CONCEPTS = ["ball", "cat", "duck", "2 cat", "2 duck", "red cat", "red duck", "left of cat", "left of duck",
            "count 2", "weather rainy", "weather sunny"]
EXPECTED = {"I see a": {"ball"}, "I see a red": {"ball", "cat", "to", "left", "two"},
            "I see two": {"ball", "duck", "ducks"}, "I see two red": {"ball", "to", "left"},
            "I see a duck to the left of a": {"ball", "duck", "ducks"}, "I see a cat": {"ball", "to", "left"},
            "I see a cat to the": {"ball", "to", "left"}, "I see a cat. It is to the left of the": {"ball", "duck", "ducks"},
            "It is red. I see a": {"ball"}}


def test_the_worlds_grounding_as_a_constraint_bans_the_same_sets_as_before():
    """The constraint the plug-in builds, called as decoding calls a constraint (the ids each row
    wrote, the next logits -> the tokens each row may not write), gives the sets the grounding
    test expects. The core's constraint keeps only the "anywhere" rule."""
    from tinyvlm.concepts import Grounding
    from tinyvlm.tokenizer import Tokenizer
    tok = Tokenizer.train(["I see a red duck to the left of two cats and a ball. I see ducks. It is sunny, not rainy."] * 20, 400)
    probs = torch.zeros(2, len(CONCEPTS))
    probs[0, [2, 6, 7, 10]] = 0.9
    probs[1, [1, 3, 9, 10]] = 0.9
    word = {w: tok.encode(f" {w}")[0] for w in ("ball", "cat", "duck", "ducks", "to", "left", "two", "sunny", "rainy")}
    name = plugins.labeller(CONCEPTS)
    constraint = plugins.get(name).grounding([probs, probs], CONCEPTS, tok, 0.5, tok.vocab_size)
    core = Grounding([probs, probs], CONCEPTS, tok, 0.5, tok.vocab_size)
    for text, expected in EXPECTED.items():
        ids = torch.tensor([tok.encode_text(text)] * 2)  # two rows, the same picture: the same bans
        banned = constraint(ids, torch.zeros(2, tok.vocab_size))
        assert banned.shape == (2, tok.vocab_size) and banned.dtype == torch.bool
        for row in banned:
            assert {w for w, i in word.items() if row[i]} == expected | {"sunny"}, text
        anywhere = core(ids, torch.zeros(2, tok.vocab_size))
        assert {w for w, i in word.items() if anywhere[0, i]} == {"ball", "sunny"}, text
    sure = torch.zeros(2, tok.vocab_size)
    sure[:, word["left"]] = 20.0  # the model all but certain of "left": nothing else would do
    banned = constraint(torch.tensor([tok.encode_text("I see a cat to the")] * 2), sure)[0]
    assert {w for w, i in word.items() if banned[i]} == {"ball", "sunny"}


def test_a_saved_model_names_the_plugin_that_labelled_its_concepts_and_old_ones_are_the_worlds(tmp_path):
    from tinyvlm.api import TinyVLM
    from tinyvlm.concepts import ConceptHead, Grounding
    from tinyvlm.config import get_preset
    from tinyvlm.model import VisionLanguageModel
    from tinyvlm.tokenizer import Tokenizer
    from tinyvlm.world.grounding import WorldGrounding
    cfg = get_preset("nano")
    tok = Tokenizer.train(["I see a red duck and two cats."] * 20, cfg.lm_vocab_size)
    model = VisionLanguageModel(cfg)
    vlm = TinyVLM(model, tok, concepts=CONCEPTS, concept_head=ConceptHead(cfg.vit_width, len(CONCEPTS)))
    vlm.save_pretrained(tmp_path / "new")
    meta = json.loads((tmp_path / "new/config.json").read_text())
    assert meta["concept_plugin"] == "world" and meta["concepts"] == CONCEPTS
    del meta["concept_plugin"]  # as a model saved before plug-ins
    (tmp_path / "new/config.json").write_text(json.dumps(meta))
    old = TinyVLM.from_pretrained(tmp_path / "new")
    assert old.concept_plugin == "world"
    pix = torch.zeros(1, 3, cfg.vit_image_size, cfg.vit_image_size)
    assert isinstance(old.grounding(pix, [1], 0.5), WorldGrounding)
    words = TinyVLM(model, tok, concepts=["duck", "cats"], concept_head=ConceptHead(cfg.vit_width, 2))
    words.save_pretrained(tmp_path / "words")
    assert "concept_plugin" not in json.loads((tmp_path / "words/config.json").read_text())
    g = TinyVLM.from_pretrained(tmp_path / "words").grounding(pix, [1], 0.5)
    assert type(g) is Grounding
    meta["concept_plugin"] = "nope"
    (tmp_path / "new/config.json").write_text(json.dumps(meta))
    with pytest.raises(TinyVLMError, match="plug-in 'nope' is not installed"):
        TinyVLM.from_pretrained(tmp_path / "new").grounding(pix, [1], 0.5)
