"""Stage names -> stage classes.

Built-in stages are listed here by import path, so naming one in a YAML file does not
import every model library. Third-party packages add stages through the entry-point group
``ram_grounded.stages`` (``name = "package.module:StageClass"``); code in the same process
can also use the :func:`register_stage` decorator.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, TypeVar

from .errors import ConfigError

if TYPE_CHECKING:
    from .stages.base import Stage

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ram_grounded.stages"

#: Built-in stages: name -> "module:Class" (imported on first use).
BUILTIN_STAGES: dict[str, str] = {
    "ram": "ram_grounded.stages.tagging:RamTagger",
    "openset": "ram_grounded.stages.openset:OpenSetTagger",
    "tag2text_caption": "ram_grounded.stages.captioning:Tag2TextCaptioner",
    "prompt_from_tags": "ram_grounded.stages.grounding:PromptFromTags",
    "grounding_dino": "ram_grounded.stages.grounding:GroundingDinoDetector",
    "sam": "ram_grounded.stages.segmentation:SamSegmenter",
    "itm": "ram_grounded.stages.matching:ItmChecker",
    "git_caption": "ram_grounded.stages.git:GitCaptioner",
    "git_vqa": "ram_grounded.stages.git:GitVqa",
    "zeroshot_classify": "ram_grounded.stages.zeroshot:ZeroShotClassifier",
}

_registered: dict[str, type[Stage]] = {}
S = TypeVar("S", bound="type[Stage]")


def register_stage(cls: S) -> S:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    _registered[cls.name] = cls
    return cls


def _plugin_entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_stages() -> list[str]:
    """Every stage name: built-in, registered in-process, and from installed plugins."""
    names = set(_importable_builtins()) | set(_registered) | set(_plugin_entry_points())
    return sorted(names)


def _importable_builtins() -> dict[str, str]:
    """Built-ins whose module exists in this installation (optional stages may be absent)."""
    found = {}
    for name, target in BUILTIN_STAGES.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            found[name] = target
    return found


def get_stage(name: str) -> type[Stage]:
    """The stage class registered under ``name``; ConfigError naming the choices otherwise."""
    if name in _registered:
        return _registered[name]
    target = BUILTIN_STAGES.get(name) or _plugin_entry_points().get(name)
    if target is None:
        raise ConfigError(
            f"unknown stage {name!r}",
            hint=f"known stages: {', '.join(available_stages())}",
        )
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"stage {name!r} could not be imported from {target!r}: {exc}",
            hint="install the package that provides it, or check the entry point",
        ) from exc
    _registered[name] = cls
    return cls


def stages_writing(field_name: str) -> list[str]:
    """Names of stages that write ``field_name`` (used to explain a missing input)."""
    writers = []
    for name in available_stages():
        try:
            cls = get_stage(name)
        except ConfigError:
            continue
        if field_name in getattr(cls, "writes", ()):
            writers.append(name)
    return writers
