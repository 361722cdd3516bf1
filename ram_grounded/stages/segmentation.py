"""The ``sam`` stage: one SAM mask per detection box.

Each image is embedded once; all of its boxes are prompted together (in chunks of
``chunk_size``). Masks are bool [N,H,W] at the original image size; the mask's predicted
IoU goes to ``detections.data["mask_score"]`` and the detection score (``confidence``)
is left as it was: the two are never merged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, StageError
from ..record import Record
from ..registry import register_stage
from .base import ModelStage

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "segment_anything", "transformers")
_BACKEND_OF_ARCH = {"sam": "segment_anything", "sam-hf": "transformers", "sam-hq-hf": "transformers"}
#: the same released weights in the other backend's format (SAM-HQ has no official-package twin)
_TWIN = {"sam_vit_h": "sam-vit-huge", "sam_vit_l": "sam-vit-large", "sam_vit_b": "sam-vit-base"}
_TWIN.update({v: k for k, v in list(_TWIN.items())})


@register_stage
@dataclass(eq=False)
class SamSegmenter(ModelStage):
    """Segment every detection box with SAM (mask + predicted IoU as ``mask_score``).

    Parameters:
        model: zoo name (``sam_vit_h|l|b``, ``sam-vit-base|large|huge``,
            ``sam-hq-vit-base|large|huge``) or a local path (a ``.pth`` file for the
            official package, a transformers directory otherwise).
        backend: ``segment_anything`` or ``transformers``; ``auto`` follows the model. Asking
            a SAM model for the other backend switches to the same weights in that format.
        multimask: ask for three candidate masks per box and keep the one with the highest
            predicted IoU (default False: SAM's single-mask output, best for box prompts).
        chunk_size: boxes per decoder call; bounds memory at ``chunk_size`` x H x W.
        image_batch_size: images per image-encoder forward (ViT-H needs about 1 GB of
            activations per image in float32).
    """

    name: ClassVar[str] = "sam"
    reads: ClassVar[frozenset[str]] = frozenset({"image", "detections"})
    writes: ClassVar[frozenset[str]] = frozenset({"detections"})

    model: str = "sam_vit_h"
    backend: str = "auto"
    multimask: bool = False
    chunk_size: int = 64
    image_batch_size: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend not in BACKENDS:
            raise ConfigError(f"sam: unknown backend {self.backend!r}", hint=f"use one of {', '.join(BACKENDS)}")
        if int(self.chunk_size) < 1 or int(self.image_batch_size) < 1:
            raise ConfigError(f"sam: chunk_size and image_batch_size must be >= 1, got {self.chunk_size}, "
                              f"{self.image_batch_size}", hint="use e.g. 64 and 4")
        self._predictor: Any = None

    def resolve(self) -> tuple[str, str]:
        """(model name or path, arch) that this stage's ``model`` and ``backend`` select."""
        from .. import zoo

        known = zoo.cards()
        if self.model in known:
            name, arch = self.model, known[self.model].arch
            if self.backend != "auto" and _BACKEND_OF_ARCH.get(arch) != self.backend:
                if name not in _TWIN:
                    raise ConfigError(
                        f"sam: model {name!r} has no {self.backend} version",
                        hint="use backend: auto, or a model of that backend "
                             "(sam_vit_* for segment_anything, sam-vit-* / sam-hq-vit-* for transformers)",
                    )
                name = _TWIN[name]
                arch = known[name].arch
            if arch not in _BACKEND_OF_ARCH:
                raise ConfigError(f"sam: model {name!r} is a {arch} model, not SAM", hint="pick a sam model")
            return name, arch
        return self.model, _local_arch(Path(self.model).expanduser(), self.backend)

    def load(self) -> None:
        from .. import zoo

        name, arch = self.resolve()
        if name in zoo.cards() or zoo.tiny_mode():
            self._predictor = zoo.load_model(name, device=self.torch_device, arch=arch)
        else:  # a local file: its own name and weights say which variant it is, not a zoo card
            from ..models.sam import load_path

            self._predictor = load_path(Path(name).expanduser(), arch, self.torch_device)
        logger.info("sam: %s (%s) on %s", self._predictor.model_id, self._predictor.backend, self.torch_device)

    def process(self, records: list[Record]) -> list[Record]:
        predictor = self._predictor
        meta = {"model": predictor.model_id, "backend": predictor.backend, "multimask": bool(self.multimask)}
        for record in records:
            if record.image is None:
                raise StageError("sam: the record has no image pixels", hint="keep images in memory for this stage")
        results = predictor.segment_batch(
            [r.image for r in records],
            [r.detections.xyxy for r in records],
            multimask=bool(self.multimask),
            chunk_size=int(self.chunk_size),
            image_batch_size=int(self.image_batch_size),
        )
        for record, (masks, scores) in zip(records, results):
            det = record.detections
            det.mask = masks  # [N,H,W] bool; [0,H,W] when there are no boxes
            det.data["mask_score"] = scores.astype(np.float32)
            record.meta[self.name] = dict(meta)
        return records


def _local_arch(path: Path, backend: str) -> str:
    """Arch of a local SAM checkpoint: a file is official, a directory is transformers format."""
    if not path.exists():
        raise ConfigError(f"sam: model {str(path)!r} is neither a zoo name nor an existing path",
                          hint="see `ram-grounded models` for the SAM names")
    if path.is_file():
        arch = "sam"
    else:
        config = path / "config.json"
        model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
        arch = {"sam": "sam-hf", "sam_hq": "sam-hq-hf"}.get(model_type or "")
        if arch is None:
            raise ConfigError(f"sam: {path} is not a transformers SAM directory (model_type {model_type!r})",
                              hint="pass a sam_vit_*.pth file or a SamModel / SamHQModel directory")
    if backend != "auto" and _BACKEND_OF_ARCH[arch] != backend:
        raise ConfigError(f"sam: {path} is a {_BACKEND_OF_ARCH[arch]} checkpoint, but backend {backend!r} was asked for",
                          hint="set backend: auto")
    return arch
