"""The bench's fixed workload and its naive baseline (see :mod:`ram_grounded.bench`).

Random weights give random numbers of tags and boxes, so the bench fixes them: after a
tagging stage every image keeps ``tags`` tags, after a box-producing stage ``boxes`` boxes
(the best ones the model gave, padded with made-up ones). A stage run alone gets the same
inputs made up. :func:`naive_sam` is how SAM is often driven: one call per box, the image
embedding recomputed each time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
import supervision as sv

from .record import Record, Tag
from .stages.base import Stage

NAIVE_NOTE = ("naive = one image per call for every stage, and SAM called once per box with the "
              "image embedding recomputed for each box (no batching, no embedding reuse)")


@lru_cache(maxsize=1)
def _tag_names() -> tuple[str, ...]:
    from .models.ram_family import data_file, read_lines

    return tuple(n.strip() for n in read_lines(data_file("ram_tag_list.txt")) if n.strip())


def made_up_tags(count: int, seed: int) -> list[Tag]:
    """``count`` RAM tag names picked at random (their length is what the prompt costs)."""
    names = _tag_names()
    picks = np.random.default_rng(seed).choice(len(names), size=min(count, len(names)), replace=False)
    return [Tag(names[int(i)], 0.5, {}) for i in picks]


def made_up_boxes(count: int, width: int, height: int, classes: int, seed: int) -> sv.Detections:
    """``count`` random xyxy boxes covering 10-60 % of each side, classes cycling over the prompt."""
    rng = np.random.default_rng(seed)
    wh = rng.uniform(0.1, 0.6, size=(count, 2)) * [width, height]
    xy = rng.uniform(0, 1, size=(count, 2)) * ([width, height] - wh)
    xyxy = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    class_id = np.arange(count) % max(classes, 1)
    return sv.Detections(xyxy=xyxy, confidence=np.full(count, 0.5, np.float32), class_id=class_id)


def _with_names(det: sv.Detections, prompt: list[str]) -> sv.Detections:
    names = np.array([prompt[int(c)] if int(c) < len(prompt) else "object" for c in det.class_id], dtype=object)
    det.data = {"class_name": names, "phrase": names.copy()}
    return det


@dataclass(eq=False)
class ShapeTags(Stage):
    """Keep exactly ``count`` tags per image: the highest-scoring, then made-up ones."""

    name: ClassVar[str] = "bench:tags"
    reads: ClassVar[frozenset[str]] = frozenset({"tags"})
    writes: ClassVar[frozenset[str]] = frozenset({"tags"})
    count: int = 12
    seed: int = 0

    def process(self, records: list[Record]) -> list[Record]:
        for i, record in enumerate(records):
            kept = sorted(record.tags, key=lambda t: -t.score)[: self.count]
            names = {t.name for t in kept}
            extra = [t for t in made_up_tags(2 * self.count, self.seed + i) if t.name not in names]
            record.tags = kept + extra[: self.count - len(kept)]
        return records


@dataclass(eq=False)
class ShapeBoxes(Stage):
    """Keep exactly ``count`` boxes per image: the most confident, then made-up ones."""

    name: ClassVar[str] = "bench:boxes"
    reads: ClassVar[frozenset[str]] = frozenset({"detections"})
    writes: ClassVar[frozenset[str]] = frozenset({"detections"})
    count: int = 10
    seed: int = 0

    def process(self, records: list[Record]) -> list[Record]:
        for i, record in enumerate(records):
            det = record.detections
            order = np.argsort(-det.confidence) if det.confidence is not None else np.arange(len(det))
            kept = order[: self.count]
            h, w = record.image.shape[:2]
            pad = made_up_boxes(self.count - len(kept), w, h, len(record.prompt), self.seed + i)
            xyxy = np.concatenate([det.xyxy[kept].reshape(-1, 4), pad.xyxy]).astype(np.float32)
            conf = np.concatenate([(det.confidence if det.confidence is not None else np.ones(len(det)))[kept],
                                   pad.confidence]).astype(np.float32)
            cls = np.concatenate([(det.class_id if det.class_id is not None else np.zeros(len(det), int))[kept],
                                  pad.class_id]).astype(int)
            record.detections = _with_names(sv.Detections(xyxy=xyxy, confidence=conf, class_id=cls), record.prompt)
        return records


def shaping_after(stages: list[Any], workload: dict[str, int], seed: int) -> list[Any]:
    """``stages`` with a shaping step after each tagger and each box producer (0 = no shaping)."""
    out: list[Any] = []
    for stage in stages:
        out.append(stage)
        if "tags" in stage.writes and workload.get("tags"):
            out.append(ShapeTags(count=workload["tags"], seed=seed))
        if "detections" in stage.writes and "detections" not in stage.reads and workload.get("boxes"):
            out.append(ShapeBoxes(count=workload["boxes"], seed=seed))
    return out


def fill_inputs(record: Record, fields: frozenset[str], workload: dict[str, int], seed: int) -> Record:
    """Made-up values for the fields a stage run alone reads (tags, prompt, detections, caption)."""
    if fields & {"tags", "prompt", "detections"}:
        record.tags = made_up_tags(workload.get("tags") or 12, seed)
    if fields & {"prompt", "detections"}:
        record.prompt = [t.name.lower() for t in record.tags]
    if "detections" in fields:
        h, w = record.image.shape[:2]
        det = made_up_boxes(workload.get("boxes") or 10, w, h, len(record.prompt), seed)
        record.detections = _with_names(det, record.prompt)
    if "caption" in fields:
        record.caption = "a picture of " + " and ".join(t.name for t in record.tags[:3])
    return record


def naive_sam(stage: Any, record: Record) -> Record:
    """SAM one box per call, re-encoding the image each time (the slow way, same modules)."""
    predictor = stage._predictor
    det = record.detections
    h, w = record.image.shape[:2]
    masks, scores = [], []
    for box in det.xyxy:
        (m, s), = predictor.segment_batch([record.image], [box[None]], multimask=bool(stage.multimask),
                                          chunk_size=1, image_batch_size=1)
        masks.append(m[0])
        scores.append(s[0])
    det.mask = np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)
    det.data["mask_score"] = np.asarray(scores, dtype=np.float32)
    return record
