"""The picture-book world as a tinyvlm plug-in (tinyvlm.plugins): it labels the records that hold a
scene graph, gives their per-patch concepts, grounds decoding with its grammar, and judges text
against the scene ("grounded"), and says where each thing is drawn (regions, for the attribution suite). pyproject.toml registers WORLD under the group "tinyvlm.plugins"."""
from __future__ import annotations

from ..plugins import Plugin
from .concepts import owns, scene_concepts, scene_targets
from .grounding import WorldGrounding
from .judge import judge
from .regions import regions


def _labels(record) -> bool:
    return record.scene is not None


WORLD = Plugin(name="world", truth="scene graphs", labels=_labels, concepts=scene_concepts, targets=scene_targets,
               owns=owns, grounding=WorldGrounding, judges={"grounded": judge}, regions=regions)
