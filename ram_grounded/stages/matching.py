"""Image-text matching (BLIP ITM): does the caption fit the image, does each box fit its label?

Also home of the crop and class-name helpers shared with :mod:`.zeroshot`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from ..errors import ConfigError, StageError
from ..record import Record
from ..registry import register_stage
from .base import ModelStage

FilterMode = Literal["none", "flag", "drop"]
FILTER_MODES = ("none", "flag", "drop")


# ------------------------------------------------------------------ shared helpers
def crop_box(image: np.ndarray, box: Any) -> np.ndarray:
    """The pixels of an xyxy box (clipped to the image, rounded outwards, at least 1x1)."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    left, right = _span(x0, x1, width)
    top, bottom = _span(y0, y1, height)
    return image[top:bottom, left:right]


def _span(lo: float, hi: float, size: int) -> tuple[int, int]:
    lo_i = min(max(math.floor(min(lo, hi)), 0), size - 1)
    hi_i = max(min(math.ceil(max(lo, hi)), size), lo_i + 1)  # a degenerate box still gives one pixel
    return lo_i, hi_i


def writable(images: list[np.ndarray]) -> list[np.ndarray]:
    """The images, copying read-only ones (torch warns on tensors over read-only memory)."""
    return [im if im.flags.writeable else im.copy() for im in images]


def detection_names(record: Record) -> list[str]:
    """Each detection's class name: ``data["class_name"]``, else ``prompt[class_id]``."""
    det = record.detections
    if "class_name" in det.data:
        return [str(n) for n in det.data["class_name"]]
    if det.class_id is not None and all(0 <= int(c) < len(record.prompt) for c in det.class_id):
        return [record.prompt[int(c)] for c in det.class_id]
    raise StageError(
        f"{record.source}: detections carry no class_name and their class_id does not index the prompt",
        hint="run a grounding stage that names its boxes before this stage",
    )


def check_filter(stage: str, mode: str, thresholds: dict[str, float]) -> None:
    """ConfigError unless ``mode`` is a filter mode and every threshold is within [0, 1]."""
    if mode not in FILTER_MODES:
        raise ConfigError(f"stage {stage!r}: filter must be one of {', '.join(FILTER_MODES)}, got {mode!r}",
                          hint="none = only score, flag = mark what fails, drop = remove failing boxes")
    for key, value in thresholds.items():
        if not 0.0 <= float(value) <= 1.0:
            raise ConfigError(f"stage {stage!r}: {key} must be within [0, 1], got {value!r}",
                              hint="scores are probabilities / cosines clipped to [0, 1]")


def drop_detections(record: Record, keep: np.ndarray, names: list[str], score_key: str) -> list[dict[str, Any]]:
    """Remove ``~keep`` detections; return a JSON-ready description of each removed one."""
    det = record.detections
    removed = [
        {"class_name": names[i], score_key: float(det.data[score_key][i]),
         "xyxy": [float(v) for v in det.xyxy[i]],
         "confidence": None if det.confidence is None else float(det.confidence[i])}
        for i in np.flatnonzero(~keep)
    ]
    if removed:
        record.detections = det[keep]
    return removed


# ----------------------------------------------------------------------- the stage
@register_stage
@dataclass(eq=False)
class ItmChecker(ModelStage):
    """Image-text matching with BLIP: caption vs whole image, class name vs box crop.

    Writes ``checks["caption_itm"]`` (ITM match probability of the caption) and
    ``detections.data["itm_score"]`` (ITM probability of each box's class name against its
    crop; text = ``text_template.format(name)``). With ``use_itc`` also the contrastive
    cosine: ``checks["caption_itc"]``, ``data["itc_score"]``. Every pair of a batch (captions
    and all boxes of all records) goes through one forward (``max_pairs`` > 0 splits it).

    ``filter`` acts on the ITM probability: ``none`` only scores; ``flag`` adds
    ``checks["caption_itm_pass"]`` and ``data["itm_pass"]``; ``drop`` also removes boxes under
    ``box_threshold`` and lists them in ``meta["itm"]["dropped"]`` (count in
    ``dropped_boxes``). A caption is never dropped: under ``caption_threshold`` it is kept and
    flagged (``caption_itm_pass`` False) in both ``flag`` and ``drop``.
    """

    name: ClassVar[str] = "itm"
    reads: ClassVar[frozenset[str]] = frozenset({"image", "caption", "detections"})
    writes: ClassVar[frozenset[str]] = frozenset({"checks", "detections", "meta"})

    model: str = "blip-itm-base-coco"
    score_caption: bool = True      # score record.caption (then the stage reads "caption")
    score_boxes: bool = True        # score detections (then the stage reads "detections")
    use_itc: bool = False           # also the ITC cosine (one more text pass, no extra vision pass)
    text_template: str = "{}"       # text scored against a box crop
    filter: FilterMode = "flag"
    caption_threshold: float = 0.5  # ITM probability under which a caption is flagged
    box_threshold: float = 0.5      # ITM probability under which a box is flagged / dropped
    max_pairs: int = 0              # pairs per forward; 0 = all pairs of the batch at once

    def __post_init__(self) -> None:
        super().__post_init__()
        check_filter(self.name, self.filter,
                     {"caption_threshold": self.caption_threshold, "box_threshold": self.box_threshold})
        if "{}" not in self.text_template:
            raise ConfigError(f"stage 'itm': text_template {self.text_template!r} has no '{{}}' for the class name",
                              hint="e.g. 'a photo of a {}'")
        # what it reads depends on what it scores, so a caption-only pipeline validates
        self.reads = frozenset({"image"} | ({"caption"} if self.score_caption else set())
                               | ({"detections"} if self.score_boxes else set()))
        self._bundle: Any = None

    def load(self) -> None:
        from ..zoo import load_model

        self._bundle = load_model(self.model, device=self.torch_device, arch="hf-blip-itm")

    # ------------------------------------------------------------------ scoring
    def score_pairs(self, images: list[np.ndarray], texts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """ITM match probabilities (and ITC cosines if ``use_itc``) of image/text pairs."""
        self.ensure_loaded()
        step = self.max_pairs if self.max_pairs > 0 else max(len(images), 1)
        itm, itc = [], []
        for start in range(0, len(images), step):
            a, b = self._forward(images[start:start + step], texts[start:start + step])
            itm.append(a)
            itc.append(b)
        if not itm:
            return np.zeros(0, np.float32), (np.zeros(0, np.float32) if self.use_itc else None)
        return np.concatenate(itm), (np.concatenate(itc) if self.use_itc else None)

    def _forward(self, images: list[np.ndarray], texts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        import torch
        import torch.nn.functional as F

        model, device = self._bundle.model, self.torch_device
        inputs = self._bundle.processor(images=writable(images), text=texts, return_tensors="pt",
                                        padding=True, truncation=True, input_data_format="channels_last")
        ids = inputs["input_ids"].to(device)
        mask = inputs["attention_mask"].to(device)
        with torch.inference_mode():
            # one vision pass shared by the ITM and ITC heads (transformers' forward runs it per head)
            image_embeds = model.vision_model(pixel_values=inputs["pixel_values"].to(device)).last_hidden_state
            image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=device)
            fused = model.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image_embeds,
                                       encoder_attention_mask=image_mask).last_hidden_state
            itm = model.itm_head(fused[:, 0, :]).softmax(dim=-1)[:, 1]
            itc = None
            if self.use_itc:
                text = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
                image_feat = F.normalize(model.vision_proj(image_embeds[:, 0, :]), dim=-1)
                text_feat = F.normalize(model.text_proj(text[:, 0, :]), dim=-1)
                itc = (image_feat * text_feat).sum(dim=-1).float().cpu().numpy()
        return itm.float().cpu().numpy(), itc

    # ------------------------------------------------------------------ process
    def process(self, records: list[Record]) -> list[Record]:
        images: list[np.ndarray] = []
        texts: list[str] = []
        plan: list[tuple[Record, int, int, list[str]]] = []  # record, caption slot (-1), first box slot, names
        for record in records:
            if record.image is None:
                raise StageError(f"{record.source}: no image", hint="load the image before the itm stage")
            caption_slot = -1
            if self.score_caption and record.caption:
                caption_slot = len(images)
                images.append(record.image)
                texts.append(record.caption)
            names = detection_names(record) if self.score_boxes and len(record.detections) else []
            first_box = len(images)
            for box, class_name in zip(record.detections.xyxy[: len(names)], names):
                images.append(crop_box(record.image, box))
                texts.append(self.text_template.format(class_name))
            plan.append((record, caption_slot, first_box, names))
        itm, itc = self.score_pairs(images, texts)
        for record, caption_slot, first_box, names in plan:
            info = self._meta(record)
            if caption_slot >= 0:
                self._write_caption(record, info, float(itm[caption_slot]),
                                    None if itc is None else float(itc[caption_slot]))
            if self.score_boxes:
                stop = first_box + len(names)
                self._write_boxes(record, info, names, itm[first_box:stop],
                                  None if itc is None else itc[first_box:stop])
        return records

    def _meta(self, record: Record) -> dict[str, Any]:
        info = {"model": self.model, "tiny": bool(getattr(self._bundle, "tiny", False)), "filter": self.filter,
                "caption_threshold": self.caption_threshold, "box_threshold": self.box_threshold,
                "use_itc": self.use_itc, "text_template": self.text_template,
                "caption_scored": False, "caption_flagged": False, "dropped_boxes": 0, "dropped": []}
        record.meta[self.name] = info
        return info

    def _write_caption(self, record: Record, info: dict[str, Any], itm: float, itc: float | None) -> None:
        record.checks["caption_itm"] = itm
        if itc is not None:
            record.checks["caption_itc"] = itc
        info["caption_scored"] = True
        if self.filter != "none":  # a caption is flagged, never removed
            passed = itm >= self.caption_threshold
            record.checks["caption_itm_pass"] = passed
            info["caption_flagged"] = not passed

    def _write_boxes(self, record: Record, info: dict[str, Any], names: list[str],
                     itm: np.ndarray, itc: np.ndarray | None) -> None:
        det = record.detections
        det.data["itm_score"] = np.asarray(itm, dtype=np.float32)
        if itc is not None:
            det.data["itc_score"] = np.asarray(itc, dtype=np.float32)
        keep = det.data["itm_score"] >= self.box_threshold
        if self.filter == "flag":
            det.data["itm_pass"] = keep
        elif self.filter == "drop":
            info["dropped"] = drop_detections(record, keep, names, "itm_score")
            info["dropped_boxes"] = len(info["dropped"])
