"""The ``ram`` stage: image tags from RAM, RAM++ or Tag2Text."""

from __future__ import annotations

import logging

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError, StageError
from ..record import Record, Tag
from ..registry import register_stage
from .base import ModelStage

ARCHS = ("ram", "ram_plus", "tag2text")


def load_family_model(model: str, arch: str | None, device: Any) -> Any:
    """A RAM-family model by zoo name (or tiny stand-in) or local official file."""
    from .. import zoo
    from ..models.ram_family import load_local

    if zoo.tiny_mode() or model in zoo.cards():
        loaded = zoo.load_model(model, device=device, arch=arch or (model if model in ARCHS else None))
    else:
        path = Path(model).expanduser()
        if not path.is_file():
            raise ConfigError(f"model {model!r} is neither a zoo name nor an existing file",
                              hint="use ram, ram_plus, tag2text or the path of an official .pth")
        loaded = load_local(path, arch, device)
    if getattr(loaded, "arch", None) not in ARCHS:
        raise ConfigError(f"model {model!r} is not a RAM-family model", hint="use ram, ram_plus or tag2text")
    return loaded


logger = logging.getLogger(__name__)

@register_stage
@dataclass(eq=False)
class RamTagger(ModelStage):
    """Image tags (English + Chinese) from RAM, RAM++ or Tag2Text; one forward per batch.

    ``model``: ``ram`` | ``ram_plus`` | ``tag2text`` (zoo names) or a local official ``.pth``
    (``arch`` names its kind when the keys cannot tell). ``threshold``: ``null`` = the
    official per-class thresholds (RAM/RAM++: the shipped per-class file; Tag2Text: 0.68 with
    0.7 for person/man/woman); a number replaces them for every class. ``class_thresholds``:
    a file with one float per line overriding the per-class values from the first class on
    (applies when ``threshold`` is null). ``exclude``: tag names never reported (in addition
    to Tag2Text's official deleted numerals). Each tag's score is its probability; Chinese
    names (RAM/RAM++) go to ``translations["zh"]`` without the list's padding spaces.
    """

    name: ClassVar[str] = "ram"
    reads: ClassVar[frozenset[str]] = frozenset({"image"})
    writes: ClassVar[frozenset[str]] = frozenset({"tags", "meta"})

    model: str = "ram_plus"
    arch: str | None = None
    threshold: float | None = None
    class_thresholds: str | None = None
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise ConfigError(f"stage 'ram': threshold {self.threshold} is not a probability",
                              hint="use a value in [0, 1], or null for the official per-class thresholds")
        if self.arch is not None and self.arch not in ARCHS:
            raise ConfigError(f"stage 'ram': unknown arch {self.arch!r}", hint=f"use one of {', '.join(ARCHS)}")
        self._model: Any = None
        self._class_threshold: Any = None
        self._exclude_index: tuple[int, ...] = ()

    def load(self) -> None:
        import torch

        from ..models.ram_family import read_thresholds
        from ..models.tag_select import indices_for_names

        self._model = load_family_model(self.model, self.arch, self.torch_device)
        thr = self._model.class_threshold.clone()
        if self.class_thresholds:
            try:
                values = read_thresholds(Path(self.class_thresholds).expanduser().read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"stage 'ram': cannot read class_thresholds {self.class_thresholds}: {exc}",
                                  hint="give a text file with one float per line") from exc
            if len(values) > thr.numel():
                raise ConfigError(f"stage 'ram': {len(values)} thresholds for {thr.numel()} tags",
                                  hint="give at most one threshold per tag, in tag-list order")
            thr[: len(values)] = torch.tensor(values, dtype=thr.dtype)
        self._class_threshold = thr
        found, unknown = indices_for_names(self.exclude, self._model.tag_list)
        if unknown:  # not an error: `annotate --exclude` also names classes of later stages
            logger.warning("stage 'ram': exclude names not in the %s tag list, ignored here: %s",
                           self._model.arch, unknown)
        self._exclude_index = tuple(found)

    def process(self, records: list[Record]) -> list[Record]:
        from ..models.ram_family import preprocess

        for record in records:
            if record.image is None:
                raise StageError(f"{record.source}: no image", hint="load the image before the ram stage")
        pixels = preprocess([r.image for r in records], self._model.image_size).to(self.torch_device)
        pred = self._model.predict(pixels, threshold=self.threshold, class_threshold=self._class_threshold,
                                   exclude_index=self._exclude_index)
        meta = {"model": self.model, "arch": self._model.arch,
                "threshold": "per-class" if self.threshold is None else float(self.threshold)}
        for b, record in enumerate(records):
            record.tags = [Tag(name, score, {"zh": zh.strip()} if zh is not None else {})
                           for name, score, zh in pred.tags(b)]
            record.meta[self.name] = dict(meta)
        return records
