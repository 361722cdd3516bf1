"""The ``tag2text_caption`` stage: tag-guided captions from Tag2Text (official beam search)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigError, StageError
from ..record import Record
from ..registry import register_stage
from .base import ModelStage


@register_stage
@dataclass(eq=False)
class Tag2TextCaptioner(ModelStage):
    """Captions from Tag2Text, guided by tags, exactly as the official ``generate`` (beam search).

    Which tags guide the caption: by default Tag2Text's own predicted tags (official
    ``tag_input=None``); ``user_tags`` (``"tennis,bear cub"`` or a list) gives the same tags to every
    image through the official specified-tags path (commas become ``' | '``);
    ``use_record_tags: true`` uses each record's ``tags`` (e.g. from a ``ram`` stage; no tags = an
    empty tag string). ``model``: ``tag2text`` (zoo name) or a local official ``.pth``.
    ``num_beams`` / ``max_length`` / ``min_length``: official defaults 3 / 50 / 10 (lengths count the
    4 prompt tokens). Writes ``caption`` and ``meta["tag2text_caption"]`` (model, tags used).
    """

    name: ClassVar[str] = "tag2text_caption"
    reads: ClassVar[frozenset[str]] = frozenset({"image"})
    writes: ClassVar[frozenset[str]] = frozenset({"caption", "meta"})

    model: str = "tag2text"
    num_beams: int = 3
    max_length: int = 50
    min_length: int = 10
    use_record_tags: bool = False
    user_tags: str | list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"stage {self.name!r}"
        if self.num_beams < 1:
            raise ConfigError(f"{where}: num_beams must be >= 1", hint="official default: 3")
        if not 0 <= self.min_length <= self.max_length or self.max_length < 5:
            raise ConfigError(f"{where}: need 0 <= min_length <= max_length and max_length >= 5",
                              hint="official defaults: min_length 10, max_length 50 (prompt included)")
        if self.use_record_tags and self.user_tags:
            raise ConfigError(f"{where}: use_record_tags and user_tags exclude each other",
                              hint="set one of them (or neither, for the model's own tags)")
        if self.use_record_tags:
            # instance attribute: the pipeline then checks that an earlier stage writes tags
            self.reads = frozenset({"image", "tags"})  # type: ignore[misc]
        self._model: Any = None

    def load(self) -> None:
        from .tagging import load_family_model

        model = load_family_model(self.model, "tag2text", self.torch_device)
        if getattr(model, "arch", None) != "tag2text":
            raise ConfigError(f"stage {self.name!r}: {self.model!r} is not a Tag2Text model",
                              hint="use model: tag2text (RAM/RAM++ checkpoints carry no trained captioner)")
        if getattr(model, "tokenizer", None) is None:
            raise ConfigError(f"stage {self.name!r}: no bert-base-uncased tokenizer for Tag2Text",
                              hint="download it once (ram-grounded weights) or run with RAM_GROUNDED_ZOO=tiny")
        self._model = model.eval()

    def _tag_input(self, records: list[Record]) -> list[str] | None:
        from ..models.captioning import user_tags_to_tag_input

        if self.user_tags:
            text = self.user_tags if isinstance(self.user_tags, str) else ",".join(self.user_tags)
            return [user_tags_to_tag_input(text)] * len(records)
        if self.use_record_tags:
            return [" | ".join(t.name for t in r.tags) for r in records]
        return None

    def process(self, records: list[Record]) -> list[Record]:
        import torch

        from ..models.captioning import generate_captions
        from ..models.ram_family import preprocess

        for record in records:
            if record.image is None:
                raise StageError(f"{record.source}: no image", hint=f"load the image before {self.name}")
        pixels = preprocess([r.image for r in records], self._model.image_size).to(self.torch_device)
        with torch.inference_mode():
            out = generate_captions(self._model, pixels, self._tag_input(records), num_beams=self.num_beams,
                                    max_length=self.max_length, min_length=self.min_length)
        source = "user" if self.user_tags else "record" if self.use_record_tags else "model"
        for record, caption, tags in zip(records, out.captions, out.tags):
            record.caption = caption
            record.meta[self.name] = {"model": self.model, "tags": tags, "tag_source": source,
                                      "num_beams": self.num_beams, "max_length": self.max_length,
                                      "min_length": self.min_length}
        return records
