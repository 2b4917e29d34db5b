"""Plug-ins: what a kind of data knows that the core does not.

The core trains, decodes and evaluates any records. A plug-in adds what only its own records allow:
exact concept targets, a grounded-decoding constraint that knows its grammar, and judges that check
text against its truth. The picture-book world (`tinyvlm.world`) is one plug-in. The core finds it
here by name or by record and never imports it.

A package offers a plug-in through the entry-point group "tinyvlm.plugins", naming a `Plugin`
object. tinyvlm's own pyproject.toml has:

    [project.entry-points."tinyvlm.plugins"]
    world = "tinyvlm.world.plugin:WORLD"

Plug-ins are found once, and each is loaded the first time it is asked for.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import import_module
from importlib.metadata import entry_points
from typing import Callable

from .errors import TinyVLMError

GROUP = "tinyvlm.plugins"
# tinyvlm's own plug-ins, for a checkout whose installed metadata predates the entry point (an
# editable install made before it was added). Installed entry points come first.
BUILTIN = {"world": "tinyvlm.world.plugin:WORLD"}
# Record fields that only a plug-in can read, and the plug-in that reads each. A record that has
# one of these is never read as a plain captioned picture: if nothing reads it, that is an error.
NEEDS = {"scene": "world"}


@dataclass(frozen=True)
class Plugin:
    """What a plug-in states. Records are tinyvlm.data.records.Record.

    - name: how models and the CLI refer to it (stored in a model's config.json as "concept_plugin").
    - truth: what its records hold, for messages ("scene graphs").
    - labels(record) -> bool: whether this plug-in labels the record (the world: it has a `scene`).
    - concepts(record) -> set[str]: the concepts such a record holds, for the concept vocabulary.
    - targets(record, index, grid) -> (grid * grid, len(index)) 0/1 tensor: each patch's concepts,
      where `index` maps a concept to its column (concepts outside it are dropped).
    - owns(concept) -> bool: whether a concept is one of its own. A vocabulary holding one of them
      was labelled by this plug-in (only plug-ins make concepts of several words).
    - grounding(probs, concepts, tokenizer, threshold, vocab_size, context) -> constraint: the
      decoding constraint (tinyvlm.concepts.Grounding explains the arguments and the contract).
    - judges: judge name -> judge(records, texts, references, prefixes, training_texts) -> dict
      with "rubric" (mark -> mean), "raw" (figures) and "items" (one dict a text).
    - regions(record, word, size) -> bool array (height, width) or None: where the thing a word
      names is drawn in the record's picture of `size` (width, height) pixels, None when the word
      names nothing drawn there. What the attribution suite measures maps against (None: the
      plug-in cannot say, and the suite does not apply).
    """
    name: str
    truth: str
    labels: Callable
    concepts: Callable
    targets: Callable
    owns: Callable
    grounding: Callable
    judges: dict[str, Callable] = field(default_factory=dict)
    regions: Callable | None = None


@cache
def _found() -> dict[str, str]:
    """Plug-in name -> "module:attribute", from installed entry points, then the built-in ones."""
    found = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    return {**BUILTIN, **found}


@cache
def get(name: str) -> Plugin:
    """The plug-in called `name`; a clear error when it is not installed."""
    target = _found().get(name)
    if target is None:
        have = ", ".join(sorted(_found())) or "none"
        raise TinyVLMError(f"the plug-in '{name}' is not installed (installed: {have}); install the package "
                           f"that provides it (entry-point group '{GROUP}')")
    module, _, attr = target.partition(":")
    try:
        plugin = getattr(import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise TinyVLMError(f"the plug-in '{name}' ({target}) cannot be loaded: {e}") from None
    if not isinstance(plugin, Plugin) or plugin.name != name:
        raise TinyVLMError(f"{target} is not a tinyvlm Plugin named '{name}'")
    return plugin


def installed() -> list[Plugin]:
    """Every plug-in, loaded."""
    return [get(name) for name in sorted(_found())]


def for_record(record) -> Plugin | None:
    """The plug-in that labels this record, or None for a plain record (a picture and its text).
    A record with a field only a plug-in reads (a scene graph) needs that plug-in installed."""
    for plugin in installed():
        if plugin.labels(record):
            return plugin
    for attr, name in NEEDS.items():
        if getattr(record, attr, None) is not None:
            get(name)  # not installed: says so
            raise TinyVLMError(f"a record has a '{attr}', which the plug-in '{name}' reads, but '{name}' "
                               "does not label it")
    return None


def labeller(concepts: list[str] | None) -> str | None:
    """The name of the plug-in that labelled a concept vocabulary, or None when none did (caption
    words only). How a model saved before plug-ins existed, whose config names none, still finds
    the world's grounding."""
    for plugin in installed():
        if any(plugin.owns(c) for c in concepts or ()):
            return plugin.name
    return None


def judges() -> dict[str, Plugin]:
    """Judge name -> the plug-in that provides it."""
    return {judge: plugin for plugin in installed() for judge in plugin.judges}
