"""The ``openset`` stage: RAM / RAM++ tagging with the user's own categories."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import ConfigError, StageError, WeightsError
from ..record import Record, Tag
from ..registry import register_stage
from .base import ModelStage
from .tagging import load_family_model

logger = logging.getLogger(__name__)


@register_stage
@dataclass(eq=False)
class OpenSetTagger(ModelStage):
    """Tags among your own ``categories`` with RAM or RAM++ (official open-set path).

    Label embeddings come from the CLIP ViT-B/16 text tower (``clip_model``) with the
    official 63-template ensemble, or, for RAM++, from ``descriptions``: a JSON file of LLM
    tag descriptions in the official format ``[{"category": ["description", ...]}, ...]``
    (then the categories are the file's). Embeddings are computed once per category list and
    cached on disk by content hash (``cache_dir``, default under ``$HF_HOME``). A category is
    reported when its probability exceeds ``threshold`` (official open-set value 0.5).
    """

    name: ClassVar[str] = "openset"
    reads: ClassVar[frozenset[str]] = frozenset({"image"})
    writes: ClassVar[frozenset[str]] = frozenset({"tags", "meta"})

    model: str = "ram_plus"
    arch: str | None = None
    categories: list[str] = field(default_factory=list)
    descriptions: str | None = None
    threshold: float = 0.5
    clip_model: str = "clip-vit-base-patch16"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.categories and not self.descriptions:
            raise ConfigError("stage 'openset' needs categories or a descriptions file",
                              hint="e.g. categories: [red kite, wind turbine]")
        if any(not str(c).strip() for c in self.categories) or len(set(self.categories)) != len(self.categories):
            raise ConfigError("stage 'openset': categories has an empty name or duplicates",
                              hint="list each category once")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ConfigError(f"stage 'openset': threshold {self.threshold} is not a probability",
                              hint="use a value in [0, 1]; the official open-set threshold is 0.5")
        self._model: Any = None
        self._embed: Any = None
        self._names: list[str] = []

    def load(self) -> None:
        from .. import zoo
        from ..models.openset import ClipTextEncoder, build_openset_label_embedding, load_tag_descriptions
        from ..models.ram import CLIP_DIM

        self._model = load_family_model(self.model, self.arch, self.torch_device)
        if self._model.arch == "tag2text":
            raise ConfigError("stage 'openset': Tag2Text has no open-set mode", hint="use model ram or ram_plus")
        descriptions = load_tag_descriptions(self.descriptions) if self.descriptions else None
        if descriptions is not None:
            if self._model.arch != "ram_plus":
                raise ConfigError("stage 'openset': tag descriptions need RAM++", hint="set model: ram_plus")
            names = [next(iter(d)) for d in descriptions]
            if self.categories and sorted(self.categories) != sorted(names):
                raise ConfigError("stage 'openset': categories differ from the descriptions file's",
                                  hint="leave categories empty to use the file's, or make them match")
        bundle = zoo.load_model(self.clip_model, device=self.torch_device, arch="hf-clip")
        tag = "tiny" if zoo.tiny_mode() else getattr(zoo.cards().get(self.clip_model), "revision", None) or "main"
        encoder = ClipTextEncoder(bundle.model, bundle.tokenizer, self.torch_device, name=f"{self.clip_model}@{tag}")
        embed, self._names = build_openset_label_embedding(
            None if descriptions else self.categories, descriptions, encoder, cache_dir=self.cache_dir)
        if embed.shape[1] != CLIP_DIM:
            if not zoo.tiny_mode():
                raise WeightsError(f"stage 'openset': {self.clip_model} gives {embed.shape[1]}-d text embeddings, "
                                   f"RAM needs {CLIP_DIM}", hint="use the CLIP ViT-B/16 text tower")
            # tiny stand-ins only: fit the width so the dry run goes through (outputs are meaningless)
            logger.warning("tiny CLIP width %d fitted to %d for the open-set dry run", embed.shape[1], CLIP_DIM)
            embed = embed.repeat(1, -(-CLIP_DIM // embed.shape[1]))[:, :CLIP_DIM]
        self._embed = embed.to(self.torch_device)

    def process(self, records: list[Record]) -> list[Record]:
        from ..models.ram_family import preprocess

        for record in records:
            if record.image is None:
                raise StageError(f"{record.source}: no image", hint="load the image before the openset stage")
        pixels = preprocess([r.image for r in records], self._model.image_size).to(self.torch_device)
        pred = self._model.predict_openset(pixels, self._names, self._embed, self.threshold)
        meta = {"model": self.model, "arch": self._model.arch, "threshold": float(self.threshold),
                "categories": len(self._names), "descriptions": bool(self.descriptions)}
        for b, record in enumerate(records):
            record.tags = [Tag(name, score, {}) for name, score, _ in pred.tags(b)]
            record.meta[self.name] = dict(meta)
        return records
