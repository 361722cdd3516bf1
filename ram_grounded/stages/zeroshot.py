"""Zero-shot categories with CLIP: put each box (or the image) into the user's own taxonomy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from ..errors import ConfigError, StageError
from ..record import Record
from ..registry import register_stage
from .base import ModelStage
from .matching import FilterMode, check_filter, crop_box, detection_names, drop_detections, writable

#: Default prompt ensemble: neutral photo templates from CLIP's ImageNet template list
#: (the "origami"/"video game" ones suit whole-image benchmarks, not box crops).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
)


@register_stage
@dataclass(eq=False)
class ZeroShotClassifier(ModelStage):
    """CLIP zero-shot classification of each detection crop (or the whole image) into ``categories``.

    Each category's text embedding is the renormalised mean of its normalised embeddings
    under every template in ``templates`` (prompt ensembling); the score is the softmax
    over categories of CLIP's scaled cosine. ``target: detections`` writes
    ``detections.data["zeroshot_class"]`` / ``["zeroshot_score"]``; ``target: image`` writes
    ``checks[result_key] = {"class", "score"}``. All crops of a batch go through one forward.

    ``filter`` acts on ``score_threshold``: ``flag`` adds ``data["zeroshot_pass"]`` (or
    ``checks[result_key]["passed"]``); ``drop`` removes failing boxes, listed in
    ``meta["zeroshot_classify"]["dropped"]``. ``relabel: true`` replaces each passing box's
    ``class_name`` with its category and rebuilds ``prompt`` as ``categories`` followed by
    the old names still in use, so ``class_id`` indexes ``prompt`` again; the old names
    stay in ``data["class_name_original"]``.
    """

    name: ClassVar[str] = "zeroshot_classify"
    reads: ClassVar[frozenset[str]] = frozenset({"image", "detections"})
    writes: ClassVar[frozenset[str]] = frozenset({"detections", "prompt", "checks", "meta"})

    model: str = "clip-vit-base-patch16"
    categories: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    target: Literal["detections", "image"] = "detections"
    relabel: bool = False
    filter: FilterMode = "none"
    score_threshold: float = 0.0   # softmax probability of the best category
    result_key: str = "zeroshot"   # checks key for target: image

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.categories or any(not str(c).strip() for c in self.categories):
            raise ConfigError("stage 'zeroshot_classify': categories is empty or has an empty name",
                              hint="give your class names, e.g. categories: [cat, dog, person]")
        if len(set(self.categories)) != len(self.categories):
            raise ConfigError("stage 'zeroshot_classify': categories has duplicates", hint="list each class once")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ConfigError("stage 'zeroshot_classify': every template needs a '{}' for the class name",
                              hint="e.g. templates: ['a photo of a {}.']")
        if self.target not in ("detections", "image"):
            raise ConfigError(f"stage 'zeroshot_classify': target must be detections or image, got {self.target!r}",
                              hint="detections = each box crop, image = the whole image")
        check_filter(self.name, self.filter, {"score_threshold": self.score_threshold})
        if self.target == "image":
            if self.filter == "drop" or self.relabel:
                raise ConfigError("stage 'zeroshot_classify': target image cannot drop or relabel",
                                  hint="use filter none/flag and relabel false with target: image")
            self.reads = frozenset({"image"})
        self._bundle: Any = None
        self._class_embeds: Any = None

    def load(self) -> None:
        from ..zoo import load_model

        self._bundle = load_model(self.model, device=self.torch_device, arch="hf-clip")
        self._class_embeds = self._text_embeddings()

    # ------------------------------------------------------------------ scoring
    def _text_embeddings(self) -> Any:
        import torch
        import torch.nn.functional as F

        texts = [t.format(c) for c in self.categories for t in self.templates]
        inputs = self._bundle.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            feats = _pooled(self._bundle.model.get_text_features(
                input_ids=inputs["input_ids"].to(self.torch_device),
                attention_mask=inputs["attention_mask"].to(self.torch_device)))
        feats = F.normalize(feats.float(), dim=-1).view(len(self.categories), len(self.templates), -1)
        return F.normalize(feats.mean(dim=1), dim=-1)

    def classify(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Best category index and its probability for each image (one forward)."""
        import torch
        import torch.nn.functional as F

        self.ensure_loaded()
        if not images:
            return np.zeros(0, dtype=int), np.zeros(0, dtype=np.float32)
        model = self._bundle.model
        pixel_values = self._bundle.image_processor(images=writable(images), return_tensors="pt",
                                                     input_data_format="channels_last")["pixel_values"]
        with torch.inference_mode():
            feats = _pooled(model.get_image_features(pixel_values=pixel_values.to(self.torch_device)))
            feats = F.normalize(feats.float(), dim=-1)
            probs = (model.logit_scale.exp().float() * feats @ self._class_embeds.T).softmax(dim=-1)
            score, best = probs.max(dim=-1)
        return best.cpu().numpy().astype(int), score.cpu().numpy().astype(np.float32)

    # ------------------------------------------------------------------ process
    def process(self, records: list[Record]) -> list[Record]:
        for record in records:
            if record.image is None:
                raise StageError(f"{record.source}: no image", hint="load the image before zeroshot_classify")
        if self.target == "image":
            best, score = self.classify([r.image for r in records])
            for record, b, s in zip(records, best, score):
                result: dict[str, Any] = {"class": self.categories[int(b)], "score": float(s)}
                if self.filter == "flag":
                    result["passed"] = bool(s >= self.score_threshold)
                record.checks[self.result_key] = result
                record.meta[self.name] = self._meta()
            return records
        names = [detection_names(r) if len(r.detections) else [] for r in records]
        crops = [crop_box(r.image, box) for r in records for box in r.detections.xyxy]
        best, score = self.classify(crops)
        start = 0
        for record, old_names in zip(records, names):
            n = len(old_names)
            self._write(record, old_names, best[start:start + n], score[start:start + n])
            start += n
        return records

    def _write(self, record: Record, old_names: list[str], best: np.ndarray, score: np.ndarray) -> None:
        info = self._meta()
        record.meta[self.name] = info
        det = record.detections
        det.data["zeroshot_class"] = np.asarray([self.categories[int(b)] for b in best], dtype=object)
        det.data["zeroshot_score"] = np.asarray(score, dtype=np.float32)
        passed = det.data["zeroshot_score"] >= self.score_threshold
        if self.filter == "flag":
            det.data["zeroshot_pass"] = passed
        elif self.filter == "drop":
            info["dropped"] = drop_detections(record, passed, old_names, "zeroshot_score")
            info["dropped_boxes"] = len(info["dropped"])
            old_names = [n for n, keep in zip(old_names, passed) if keep]
            passed = passed[passed]
            det = record.detections
        if self.relabel:
            self._relabel(record, old_names, passed)

    def _relabel(self, record: Record, old_names: list[str], passed: np.ndarray) -> None:
        det = record.detections
        new_names = [str(z) if ok else old for z, old, ok in zip(det.data["zeroshot_class"], old_names, passed)]
        prompt = list(self.categories) + sorted({n for n in new_names if n not in self.categories})
        det.data["class_name_original"] = np.asarray(old_names, dtype=object)
        det.data["class_name"] = np.asarray(new_names, dtype=object)
        det.class_id = np.asarray([prompt.index(n) for n in new_names], dtype=int)
        record.prompt = prompt

    def _meta(self) -> dict[str, Any]:
        return {"model": self.model, "tiny": bool(getattr(self._bundle, "tiny", False)), "target": self.target,
                "categories": list(self.categories), "templates": list(self.templates), "relabel": self.relabel,
                "filter": self.filter, "score_threshold": self.score_threshold, "dropped_boxes": 0, "dropped": []}


def _pooled(out: Any) -> Any:
    """transformers 5 returns an output object from get_*_features, 4.x a tensor."""
    return out.pooler_output if hasattr(out, "pooler_output") else out
