"""ram-grounded: the Recognize Anything family as the recognition stage of Grounded-SAM.

Public API::

    from ram_grounded import load_pipeline, Pipeline, Record
    pipe = load_pipeline("ram_grounded_sam")     # or Pipeline.from_yaml("my.yaml")
    record = pipe("photo.jpg")                    # tags, caption, detections (boxes + masks)

Stages (one module each, by registered name; see ``registry.BUILTIN_STAGES``):

- ``ram`` -> :mod:`ram_grounded.stages.tagging` (RAM / RAM++ / Tag2Text tags)
- ``openset`` -> :mod:`ram_grounded.stages.openset` (your own categories)
- ``tag2text_caption`` -> :mod:`ram_grounded.stages.captioning`
- ``prompt_from_tags``, ``grounding_dino`` -> :mod:`ram_grounded.stages.grounding`
- ``sam`` -> :mod:`ram_grounded.stages.segmentation`
- ``itm`` -> :mod:`ram_grounded.stages.matching`; ``git_caption``, ``git_vqa`` ->
  :mod:`ram_grounded.stages.git`; ``zeroshot_classify`` -> :mod:`ram_grounded.stages.zeroshot`

Models live in :mod:`ram_grounded.models`, named checkpoints in :mod:`ram_grounded.zoo`.
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError, ImageLoadError, RamGroundedError, WeightsError
from .pipeline import Pipeline
from .pipeline_yaml import build_stage, list_pipelines, load_pipeline
from .record import Record, Tag
from .registry import available_stages, get_stage, register_stage
from .stages.base import ModelStage, Stage

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "ImageLoadError", "ModelStage", "Pipeline", "RamGroundedError", "Record", "Stage",
    "Tag", "WeightsError", "available_stages", "build_stage", "get_stage", "list_pipelines",
    "load_pipeline", "register_stage", "__version__",
]


def __getattr__(name: str) -> Any:
    """Stage classes by class name, imported on first use (e.g. ``ram_grounded.RamTagger``)."""
    from .registry import BUILTIN_STAGES

    for target in BUILTIN_STAGES.values():
        module, _, attr = target.partition(":")
        if attr == name:
            import importlib

            return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'ram_grounded' has no attribute {name!r}")
