"""grounding stages: prompt building, chunking, one class per box, pixel boxes, NMS.

The stage runs on the tiny random-weight transformers model, and on a scripted stand-in
model whose outputs are known, so class naming and box geometry are checked exactly.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import box_convert
from transformers import GroundingDinoImageProcessor

from ram_grounded.errors import ConfigError
from ram_grounded.models.groundingdino import GroundingDinoBundle, build_tiny, tiny_tokenizer
from ram_grounded.models.groundingdino_text import (
    TextChunk,
    assign_classes,
    build_chunks,
    class_token_ids,
)
from ram_grounded.record import Record, Tag
from ram_grounded.stages.grounding import GroundingDinoDetector, PromptFromTags, normalise_classes

SPECIAL = (101, 102, 1012)  # [CLS], [SEP], "." in the tiny vocab (bert-base-uncased ids)
WORDS = ["apple", "bicycle", "traffic light", "dining table", "giraffe", "hot dog", "umbrella", "teddy bear"]


def long_prompt(n: int = 80) -> list[str]:
    """Distinct class names; with the character-level tiny vocab this is ~850 tokens."""
    return [f"{WORDS[i % len(WORDS)]} {chr(97 + i // len(WORDS) % 26)}{i}" for i in range(n)]


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------ prompt_from_tags
def test_prompt_from_tags_order_dedupe_exclude() -> None:
    rec = Record(tags=[Tag("Dog", 0.9), Tag("grass", 0.8), Tag("dog", 0.7), Tag("Indoor", 0.6)])
    stage = PromptFromTags(classes=["Person", "  traffic   light ", "GRASS"], exclude=["indoor"])
    stage([rec])
    assert rec.prompt == ["dog", "grass", "person", "traffic light"]
    assert stage.reads == frozenset({"tags"})
    fixed = PromptFromTags(classes=["cat"], use_tags=False)
    assert fixed.reads == frozenset()
    rec2 = Record(tags=[Tag("dog", 1.0)])
    fixed([rec2])
    assert rec2.prompt == ["cat"]
    assert normalise_classes(["A", "a", "", "b"], ["B"]) == ["a"]


def test_stage_parameters_checked() -> None:
    with pytest.raises(ConfigError):
        GroundingDinoDetector(box_threshold=1.5)
    with pytest.raises(ConfigError):
        PromptFromTags(classes="cat")  # type: ignore[arg-type]


# ------------------------------------------------------------------ chunking
def test_chunks_cover_every_class_and_match_tokenizer() -> None:
    tok = tiny_tokenizer()
    names = long_prompt()
    ids = class_token_ids(tok, names)
    total = sum(len(t) + 1 for t in ids) + 2
    assert total > 600, "the prompt must need several chunks"
    chunks, skipped = build_chunks(ids, 256, *SPECIAL)
    assert not skipped and len(chunks) >= 3
    seen = [c for ch in chunks for c in ch.class_ids]
    assert seen == list(range(len(names)))  # every class exactly once, order kept
    for ch in chunks:
        assert ch.text_length <= 256
        # the chunk is exactly what the tokenizer makes of "a . b . c ." (independent check)
        text = " . ".join(names[c] for c in ch.class_ids) + " ."
        assert ch.input_ids == tok(text)["input_ids"]
        for c, (s, e) in zip(ch.class_ids, ch.spans):
            assert ch.input_ids[s:e] == ids[c]
            assert ch.input_ids[e] == SPECIAL[2]
    # greedy packing: the next class would not have fit in the previous chunk
    for prev, nxt in zip(chunks, chunks[1:]):
        assert prev.text_length + len(ids[nxt.class_ids[0]]) + 1 > 256


def test_chunk_edge_cases() -> None:
    chunks, skipped = build_chunks([[5, 6], [], [7] * 400], 16, *SPECIAL)
    assert skipped == [1]
    assert [c.class_ids for c in chunks] == [[0], [2]]
    assert all(c.text_length <= 16 for c in chunks)


# ------------------------------------------------------------------ one class per box
def test_one_class_per_box_on_constructed_logits() -> None:
    # [CLS] c a t . d o g . x y . [SEP] with spans (1,4) (5,8) (9,11)
    chunk = TextChunk([101, 1, 2, 3, 1012, 4, 5, 6, 1012, 7, 8, 1012, 102], [10, 11, 12], [(1, 4), (5, 8), (9, 11)])
    logits = torch.full((6, 256), -10.0)
    logits[:, 13:] = float("-inf")
    logits[0, 6] = 3.0                              # dog only
    logits[1, 0] = 3.0                              # only [CLS] lit: a box, but no class
    logits[2, 2], logits[2, 10] = 0.0, 1.0          # cat 0.5 vs xy 0.73 -> xy
    logits[3, 2] = -2.0                             # below box threshold: no box
    logits[4, 3], logits[4, 4] = -0.9, 2.0          # box from "." (0.88); best class cat 0.29 > 0.25
    logits[5, 7], logits[5, 12] = 0.5, 5.0          # [SEP] highest, dog 0.62 -> dog
    a = assign_classes(logits, chunk, box_threshold=0.35, text_threshold=0.25)
    assert a.queries.tolist() == [0, 2, 4, 5]
    assert a.class_ids.tolist() == [11, 12, 10, 11]  # global prompt indexes
    assert torch.allclose(a.scores, torch.sigmoid(torch.tensor([3.0, 1.0, -0.9, 0.5])))
    assert a.unmatched == 1


# ------------------------------------------------------------------ scripted model
class ScriptedModel(nn.Module):
    """Stand-in for GroundingDinoForObjectDetection: query q lights the q-th phrase of its row
    (found from the delimiter ids, independently of the stage) with a box given by ``box_of``."""

    def __init__(self, num_queries: int, box_of) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.num_queries = num_queries
        self.box_of = box_of
        self.calls: list[tuple[int, ...]] = []

    def forward(self, pixel_values, input_ids, attention_mask, token_type_ids, pixel_mask):
        self.calls.append(tuple(pixel_values.shape))
        b, length = input_ids.shape
        logits = torch.full((b, self.num_queries, 256), -8.0)
        logits[:, :, length:] = float("-inf")
        logits[:, :, :length] = logits[:, :, :length].masked_fill(attention_mask[:, None, :] == 0, float("-inf"))
        boxes = torch.full((b, self.num_queries, 4), 0.5)
        for i in range(b):
            ids = input_ids[i][attention_mask[i] == 1].tolist()
            starts = [0] + [p for p, t in enumerate(ids) if t in SPECIAL]
            phrases = [(s + 1, e) for s, e in zip(starts, starts[1:]) if e > s + 1]
            for q, (s, e) in enumerate(phrases[: self.num_queries]):
                logits[i, q, e - 1] = 4.0
                boxes[i, q] = torch.tensor(self.box_of(q, ids[s:e]))
        return SimpleNamespace(logits=logits, pred_boxes=boxes)


def scripted_stage(box_of, num_queries: int = 64, **params) -> tuple[GroundingDinoDetector, ScriptedModel]:
    model = ScriptedModel(num_queries, box_of)
    proc = GroundingDinoImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    bundle = GroundingDinoBundle(model, tiny_tokenizer(), proc, 256, "scripted")  # type: ignore[arg-type]
    stage = GroundingDinoDetector(device="cpu", **params)
    stage._bundle, stage._loaded = bundle, True
    return stage, model


def test_long_prompt_every_class_reachable_and_merged() -> None:
    names = long_prompt()
    # a distinct box per phrase position so nothing is suppressed
    stage, model = scripted_stage(lambda q, ids: (0.1 + 0.01 * q, 0.5, 0.05, 0.05), iou_threshold=0.5)
    sizes = [(120, 160), (120, 160), (90, 200)]
    records = [Record(image=image(h, w, k), prompt=list(names)) for k, (h, w) in enumerate(sizes)]
    stage(records)
    chunks = records[0].meta["grounding_dino"]["chunks"]
    assert chunks >= 3
    # same-size images share forwards; each forward holds at most batch_size rows
    assert len(model.calls) == -(-2 * chunks // stage.batch_size) + -(-chunks // stage.batch_size)
    for rec in records:
        det = rec.detections
        assert sorted(det.class_id.tolist()) == list(range(len(names)))  # every class once
        assert list(det.data["class_name"]) == [names[c] for c in det.class_id]
        assert list(det.data["phrase"]) == list(det.data["class_name"])
        assert rec.meta["grounding_dino"]["unmatched_boxes"] == 0
        assert np.all(det.confidence > stage.box_threshold)


@pytest.mark.parametrize("size", [(120, 160), (160, 120), (77, 301), (300, 50)])
def test_boxes_in_original_pixels(size: tuple[int, int]) -> None:
    h, w = size
    stage, _ = scripted_stage(lambda q, ids: [(0.5, 0.5, 0.5, 0.25), (0.2, 0.7, 0.2, 0.2)][q])
    rec = Record(image=image(h, w), prompt=["cat", "dog"])
    stage([rec])
    det = rec.detections
    expected = {"cat": [0.25 * w, 0.375 * h, 0.75 * w, 0.625 * h], "dog": [0.1 * w, 0.6 * h, 0.3 * w, 0.8 * h]}
    for xyxy, name in zip(det.xyxy, det.data["class_name"]):
        np.testing.assert_allclose(xyxy, expected[name], rtol=1e-5, atol=1e-4)


def test_class_aware_nms() -> None:
    # cat and "cat b" and dog share one box; two further copies of "cat" from a second chunk
    # are impossible here, so use same-box classes: only same-class overlaps are suppressed
    same = (0.5, 0.5, 0.4, 0.4)
    stage, _ = scripted_stage(lambda q, ids: same, iou_threshold=0.5)
    rec = Record(image=image(64, 64), prompt=["cat", "dog"])
    stage([rec])
    assert sorted(rec.detections.data["class_name"]) == ["cat", "dog"]  # different classes both kept

    # two queries for the same class with overlapping boxes: the lower-scored one goes
    class TwoBoxes(ScriptedModel):
        def forward(self, pixel_values, input_ids, attention_mask, token_type_ids, pixel_mask):
            out = super().forward(pixel_values, input_ids, attention_mask, token_type_ids, pixel_mask)
            out.logits[:, 1] = out.logits[:, 0] - 1.0  # query 1 = weaker copy of query 0 (same class)
            out.pred_boxes[:, 1] = torch.tensor([0.52, 0.5, 0.4, 0.4])
            out.pred_boxes[:, 2] = torch.tensor([0.9, 0.9, 0.1, 0.1])  # far away
            out.logits[:, 2] = out.logits[:, 0] - 2.0
            return out

    for iou, expected in [(0.5, 2), (0.99, 3)]:
        stage, _ = scripted_stage(lambda q, ids: same, iou_threshold=iou)
        stage._bundle.model = TwoBoxes(8, lambda q, ids: same)
        rec = Record(image=image(64, 64), prompt=["cat"])
        stage([rec])
        assert len(rec.detections) == expected
        assert rec.meta["grounding_dino"]["nms_removed"] == 3 - expected
        assert np.all(np.diff(rec.detections.confidence) <= 0)


# ------------------------------------------------------------------ tiny transformers model
@pytest.fixture(scope="module")
def tiny_bundle() -> GroundingDinoBundle:
    return build_tiny(None, seed=0)


def test_tiny_model_boxes_match_direct_forward(tiny_bundle: GroundingDinoBundle) -> None:
    """The stage's boxes equal an independent post-processing of a direct model call."""
    stage = GroundingDinoDetector(device="cpu", box_threshold=0.0, text_threshold=0.0, iou_threshold=1.0)
    stage._bundle, stage._loaded = tiny_bundle, True
    prompt = ["cat", "dog", "traffic light"]
    sizes = [(96, 128), (96, 128), (130, 70)]
    records = [Record(image=image(h, w, k), prompt=list(prompt)) for k, (h, w) in enumerate(sizes)]
    stage(records)
    tok = tiny_bundle.tokenizer
    text = tok(["cat . dog . traffic light ."], return_tensors="pt")
    for rec, (h, w) in zip(records, sizes):
        pv = tiny_bundle.image_processor(images=rec.image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = tiny_bundle.model(pixel_values=pv, **text)
        ref = box_convert(out.pred_boxes[0], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
        ref[:, 0::2] = ref[:, 0::2].clamp(0, w)
        ref[:, 1::2] = ref[:, 1::2].clamp(0, h)
        det = rec.detections
        assert len(det) == tiny_bundle.model.config.num_queries  # thresholds 0: every query kept
        assert det.class_id.min() >= 0 and det.class_id.max() < len(prompt)
        # match each detection to the query with the same box
        for xyxy in det.xyxy:
            assert torch.cdist(torch.tensor(xyxy)[None], ref).min() < 1e-3
        assert np.all((det.xyxy[:, 0::2] >= 0) & (det.xyxy[:, 0::2] <= w))
        assert np.all((det.xyxy[:, 1::2] >= 0) & (det.xyxy[:, 1::2] <= h))


def test_tiny_model_batch_equals_single(tiny_bundle: GroundingDinoBundle) -> None:
    params = dict(device="cpu", box_threshold=0.3, text_threshold=0.2, iou_threshold=0.5)
    names = long_prompt(40)
    batch = [Record(image=image(96, 128, k), prompt=list(names)) for k in range(2)]
    stage = GroundingDinoDetector(**params)
    stage._bundle, stage._loaded = tiny_bundle, True
    stage(batch)
    assert batch[0].meta["grounding_dino"]["chunks"] >= 2
    for k, rec in enumerate(batch):
        single = Record(image=image(96, 128, k), prompt=list(names))
        stage([single])
        assert list(single.detections.class_id) == list(rec.detections.class_id)
        np.testing.assert_allclose(single.detections.xyxy, rec.detections.xyxy, atol=1e-3)
        assert rec.detections.class_id.max(initial=0) < len(names)


def test_empty_prompt_gives_empty_detections(tiny_bundle: GroundingDinoBundle) -> None:
    stage = GroundingDinoDetector(device="cpu")
    stage._bundle, stage._loaded = tiny_bundle, True
    rec = Record(image=image(50, 60), prompt=[])
    stage([rec])
    assert len(rec.detections) == 0 and rec.meta["grounding_dino"]["chunks"] == 0
