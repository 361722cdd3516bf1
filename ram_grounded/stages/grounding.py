"""Grounding stages: ``prompt_from_tags`` (tags -> class list) and ``grounding_dino`` (classes -> boxes).

Each prompt class is its own phrase (``cat . dog .``). Prompts longer than the model's text
length are split at class boundaries and the pieces run in the same forward pass; every box
gets exactly one class, named by index into ``record.prompt`` (see
:mod:`ram_grounded.models.groundingdino_text`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import supervision as sv
import torch

from ..errors import ConfigError, StageError
from ..record import Record
from ..registry import register_stage
from .base import ModelStage, Stage

logger = logging.getLogger(__name__)


def normalise_classes(names: list[str], exclude: list[str] = ()) -> list[str]:  # type: ignore[assignment]
    """Lower case, stripped, de-duplicated (first occurrence wins), ``exclude`` removed."""
    drop = {e.strip().lower() for e in exclude}
    out: list[str] = []
    seen: set[str] = set()
    for name in names:
        key = " ".join(str(name).lower().split())
        if key and key not in seen and key not in drop:
            seen.add(key)
            out.append(key)
    return out


@register_stage
@dataclass(eq=False)
class PromptFromTags(Stage):
    """Build ``record.prompt`` from the record's tags and the user's classes.

    Parameters:
        classes: classes to ground in every image, after the tags (e.g. ["person", "dog"]).
        exclude: names never to ground (case-insensitive), e.g. scene words like "indoor".
        use_tags: take the record's tags (set False for a fixed class list; then no tagger
            stage is needed before this one).
    """

    name: ClassVar[str] = "prompt_from_tags"
    reads: ClassVar[frozenset[str]] = frozenset({"tags"})
    writes: ClassVar[frozenset[str]] = frozenset({"prompt"})

    classes: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    use_tags: bool = True

    def __post_init__(self) -> None:
        if not self.use_tags:  # a fixed class list needs no tagger before this stage
            self.reads = frozenset()  # type: ignore[misc]
        if isinstance(self.classes, str) or isinstance(self.exclude, str):
            raise ConfigError("prompt_from_tags: classes and exclude are lists of names",
                              hint='write classes: ["person", "dog"]')

    def process(self, records: list[Record]) -> list[Record]:
        for record in records:
            names = [t.name for t in record.tags] if self.use_tags else []
            record.prompt = normalise_classes(names + list(self.classes), list(self.exclude))
        return records


@register_stage
@dataclass(eq=False)
class GroundingDinoDetector(ModelStage):
    """Find a box for every prompt class with Grounding DINO (one class per box, class-aware NMS).

    Parameters:
        model: zoo name (``grounding-dino-tiny``, ``grounding-dino-base``,
            ``groundingdino_swint_ogc``, ``groundingdino_swinb_cogcoor``) or a local path.
        box_threshold: a query is a box when its highest token probability exceeds this.
        text_threshold: the box's class is the prompt class whose tokens score highest; that
            score (the detection ``confidence``) must exceed this, else the box is dropped
            and counted in ``meta["grounding_dino"]["unmatched_boxes"]``.
        iou_threshold: class-aware non-maximum suppression IoU (boxes of different classes
            never suppress each other); 1.0 keeps everything.
        batch_size: model rows (image x prompt chunk) per forward pass.
    """

    name: ClassVar[str] = "grounding_dino"
    reads: ClassVar[frozenset[str]] = frozenset({"image", "prompt"})
    writes: ClassVar[frozenset[str]] = frozenset({"detections"})

    model: str = "grounding-dino-tiny"
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    iou_threshold: float = 0.5
    batch_size: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("box_threshold", "text_threshold", "iou_threshold"):
            value = float(getattr(self, key))
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"grounding_dino: {key}={value} is outside [0, 1]", hint="use e.g. 0.35 / 0.25 / 0.5")
        if int(self.batch_size) < 1:
            raise ConfigError(f"grounding_dino: batch_size must be >= 1, got {self.batch_size}", hint="use e.g. 8")
        self._bundle: Any = None

    def load(self) -> None:
        from .. import zoo

        self._bundle = zoo.load_model(self.model, device=self.torch_device, arch="groundingdino")
        logger.info("grounding_dino: %s on %s", self._bundle.name, self.torch_device)

    def _meta(self) -> dict[str, Any]:
        return {"model": self._bundle.name, "box_threshold": float(self.box_threshold),
                "text_threshold": float(self.text_threshold), "iou_threshold": float(self.iou_threshold)}

    def process(self, records: list[Record]) -> list[Record]:
        from ..models.groundingdino_text import build_chunks, class_token_ids

        bundle = self._bundle
        tok = bundle.tokenizer
        special = [tok.cls_token_id, tok.sep_token_id, tok.convert_tokens_to_ids(".")]
        rows: dict[tuple[int, ...], list[tuple[int, Any]]] = defaultdict(list)  # pixel shape -> (record, chunk)
        pixels: list[torch.Tensor | None] = []
        found: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = [[] for _ in records]
        stats = [{"chunks": 0, "unmatched_boxes": 0, "ungroundable_classes": []} for _ in records]
        for r, record in enumerate(records):
            if record.image is None:
                raise StageError("grounding_dino: the record has no image pixels", hint="keep images in memory for this stage")
            chunks, skipped = build_chunks(class_token_ids(tok, record.prompt), bundle.max_text_len, *special)
            stats[r]["chunks"] = len(chunks)
            stats[r]["ungroundable_classes"] = [record.prompt[i] for i in skipped]
            if not chunks:
                pixels.append(None)
                continue
            # one image at a time: the processor would pad a mixed-size batch, and padding
            # changes the backbone's output; same-size images still share a forward below
            image = record.image if record.image.flags.writeable else record.image.copy()  # torch wants writable
            pv = bundle.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
            pixels.append(pv)
            for chunk in chunks:
                rows[tuple(pv.shape)].append((r, chunk))
        for group in rows.values():
            for start in range(0, len(group), int(self.batch_size)):
                self._forward(group[start: start + int(self.batch_size)], pixels, records, found, stats)
        for r, record in enumerate(records):
            record.meta["grounding_dino"] = {**self._meta(), **stats[r], "nms_removed": 0}
            record.detections = self._merge(record, found[r])
            record.meta["grounding_dino"]["num_detections"] = len(record.detections)
        return records

    @torch.no_grad()
    def _forward(self, batch: list[tuple[int, Any]], pixels: list[torch.Tensor | None], records: list[Record],
                 found: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]], stats: list[dict[str, Any]]) -> None:
        from ..models.groundingdino_text import assign_classes, pad_chunks

        bundle = self._bundle
        device = bundle.device
        text = {k: v.to(device) for k, v in pad_chunks([c for _, c in batch], bundle.tokenizer.pad_token_id).items()}
        pv = torch.stack([pixels[r] for r, _ in batch]).to(device)  # type: ignore[misc]
        out = bundle.model(pixel_values=pv, pixel_mask=torch.ones_like(pv[:, 0], dtype=torch.long), **text)
        for i, (r, chunk) in enumerate(batch):
            a = assign_classes(out.logits[i], chunk, float(self.box_threshold), float(self.text_threshold))
            stats[r]["unmatched_boxes"] += a.unmatched
            h, w = records[r].image.shape[:2]  # type: ignore[union-attr]
            cx, cy, bw, bh = out.pred_boxes[i, a.queries].float().unbind(-1)
            # boxes are relative to the (unpadded) image, so the original size maps them back
            xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)
            xyxy = xyxy * torch.tensor([w, h, w, h], dtype=xyxy.dtype, device=xyxy.device)
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
            found[r].append((xyxy.cpu(), a.scores.cpu(), a.class_ids.cpu()))

    def _merge(self, record: Record, parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> sv.Detections:
        """All chunks' boxes of one image -> class-aware NMS -> Detections sorted by score."""
        from torchvision.ops import batched_nms

        if not parts or sum(len(p[0]) for p in parts) == 0:
            return _empty()
        xyxy = torch.cat([p[0] for p in parts])
        scores = torch.cat([p[1] for p in parts])
        class_ids = torch.cat([p[2] for p in parts])
        keep = batched_nms(xyxy, scores, class_ids, float(self.iou_threshold))  # sorted by score
        record.meta.setdefault("grounding_dino", {})["nms_removed"] = int(len(xyxy) - len(keep))
        names = np.array([record.prompt[int(c)] for c in class_ids[keep]], dtype=object)
        return sv.Detections(
            xyxy=xyxy[keep].numpy().astype(np.float32),
            confidence=scores[keep].numpy().astype(np.float32),
            class_id=class_ids[keep].numpy().astype(int),
            data={"class_name": names, "phrase": names.copy()},
        )


def _empty() -> sv.Detections:
    det = sv.Detections.empty()
    det.class_id = np.zeros(0, dtype=int)
    det.confidence = np.zeros(0, dtype=np.float32)
    det.data = {"class_name": np.zeros(0, dtype=object), "phrase": np.zeros(0, dtype=object)}
    return det
