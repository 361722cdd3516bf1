"""Small model-free stages for the annotate/export tests (tags, prompt, boxes + masks).

They compute everything from the pixels, deterministically, so a run's output can be
checked independently and two runs give the same bytes. Importing this module registers
them; ``python tests/test_export_fakes.py ARGS`` runs the CLI with them available.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import supervision as sv

from ram_grounded.record import Record, Tag
from ram_grounded.registry import register_stage
from ram_grounded.stages.base import Stage

COLORS = ("red", "green", "blue")

FAKE_PIPELINE_YAML = """\
name: fake_annotate
description: colour tags -> prompt -> one box+mask per bright colour channel
stages:
  - stage: fake_tagger
    params: {threshold: 0.05}
  - stage: fake_prompt
    params: {}
  - stage: fake_detector
    params: {level: 128}
"""


@register_stage
@dataclass(eq=False)
class FakeTagger(Stage):
    """Tags ``red``/``green``/``blue`` with score = share of pixels where that channel is high."""

    name: ClassVar[str] = "fake_tagger"
    reads: ClassVar[frozenset[str]] = frozenset({"image"})
    writes: ClassVar[frozenset[str]] = frozenset({"tags", "caption"})
    threshold: float = 0.05
    exclude: list[str] = field(default_factory=list)

    def process(self, records: list[Record]) -> list[Record]:
        for r in records:
            shares = (r.image > 128).mean(axis=(0, 1))
            r.tags = [Tag(c, float(s), {"zh": c.upper()}) for c, s in zip(COLORS, shares)
                      if s >= self.threshold and c not in self.exclude]
            r.caption = "an image with " + (" and ".join(t.name for t in r.tags) or "nothing")
        return records


@register_stage
@dataclass(eq=False)
class FakePrompt(Stage):
    """Prompt = tag names plus ``classes``, minus ``exclude`` (like prompt_from_tags)."""

    name: ClassVar[str] = "fake_prompt"
    reads: ClassVar[frozenset[str]] = frozenset({"tags"})
    writes: ClassVar[frozenset[str]] = frozenset({"prompt"})
    classes: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)

    def process(self, records: list[Record]) -> list[Record]:
        for r in records:
            names = [t.name for t in r.tags] + [c for c in self.classes if c not in {t.name for t in r.tags}]
            r.prompt = [n for n in names if n not in self.exclude]
        return records


@register_stage
@dataclass(eq=False)
class FakeDetector(Stage):
    """One detection per prompt colour: mask = channel > level; box = the mask's extent."""

    name: ClassVar[str] = "fake_detector"
    reads: ClassVar[frozenset[str]] = frozenset({"image", "prompt"})
    writes: ClassVar[frozenset[str]] = frozenset({"detections"})
    level: int = 128
    delay: float = 0.0  # seconds per batch, so a test can kill a run in the middle

    def process(self, records: list[Record]) -> list[Record]:
        time.sleep(self.delay)
        for r in records:
            boxes, masks, ids, conf = [], [], [], []
            for i, name in enumerate(r.prompt):
                if name not in COLORS:
                    continue
                mask = r.image[:, :, COLORS.index(name)] > self.level
                if not mask.any():
                    continue
                ys, xs = np.nonzero(mask)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                masks.append(mask)
                ids.append(i)
                conf.append(mask.mean())
            if boxes:
                r.detections = sv.Detections(
                    xyxy=np.asarray(boxes, np.float32), confidence=np.asarray(conf, np.float32),
                    class_id=np.asarray(ids, int), mask=np.stack(masks),
                    data={"class_name": np.asarray([r.prompt[i] for i in ids]),
                          "mask_score": np.asarray(conf, np.float32) / 2},
                )
            else:
                r.detections = sv.Detections.empty()
                r.detections.mask = np.zeros((0, *r.image.shape[:2]), bool)
        return records


def test_fake_detector_masks_match_channels():
    img = np.zeros((20, 30, 3), np.uint8)
    img[2:8, 3:9, 0] = 255
    img[10:15, 20:28, 2] = 200
    (rec,) = FakeDetector()(FakePrompt()(FakeTagger()([Record(image=img)])))
    assert rec.prompt == ["red", "blue"]
    np.testing.assert_array_equal(rec.detections.xyxy, [[3, 2, 9, 8], [20, 10, 28, 15]])
    assert rec.detections.mask[1].sum() == 40


if __name__ == "__main__":  # run the CLI with the fake stages registered
    from ram_grounded.cli import main

    sys.argv = ["ram-grounded", *sys.argv[1:]]
    main()
