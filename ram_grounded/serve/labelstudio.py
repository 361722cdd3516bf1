"""Label Studio ML backend protocol: labeling configs in, prediction results out.

What a project's labeling config asks for decides what we answer, per control tag:

- ``RectangleLabels``: one region per detection whose class is one of its labels, in
  percent of the image size, the label in ``value.rectanglelabels`` (without it Label
  Studio rejects or mislabels the region).
- ``BrushLabels``: the same detections' masks, as Label Studio's brush RLE made by
  label-studio-sdk's own encoder (``converter.brush.mask2rle``).
- ``Choices``: the recognised tags that are among its choices (all of them for
  ``choice="multiple"``, else the best one).
- ``TextArea``: the caption.

Label values are the prompt classes; a ``<Label value="Cat" predicted_values="cat,kitten"/>``
grounds "cat" and "kitten" and labels both "Cat".
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..export.brush import brush_rle_to_mask, mask_to_brush_rle  # noqa: F401 - re-exported
from ..record import Record

logger = logging.getLogger(__name__)

_OBJECT_TAGS = {"image"}


@dataclass
class Control:
    """One control tag of a labeling config."""

    kind: str                      # "rectanglelabels" | "brushlabels" | "choices" | "textarea"
    name: str                      # from_name
    to_name: str                   # the object tag it labels
    values: list[str] = field(default_factory=list)
    class_to_value: dict[str, str] = field(default_factory=dict)  # prompt class -> label value
    multiple: bool = False


@dataclass
class LabelConfig:
    """The parts of a Label Studio labeling config this backend answers."""

    controls: list[Control]
    image_keys: dict[str, str]     # object tag name -> task data key ("$image" -> "image")

    @property
    def prompt_classes(self) -> list[str]:
        """Classes to ground: every region label's prompt names, first-seen order."""
        seen: dict[str, None] = {}
        for control in self.controls:
            if control.kind in ("rectanglelabels", "brushlabels"):
                seen.update(dict.fromkeys(control.class_to_value))
        return list(seen)

    def data_key(self, control: Control) -> str:
        return self.image_keys.get(control.to_name) or next(iter(self.image_keys.values()), "image")

    def image_key(self) -> str:
        """The task data key holding the image URL (the first Image tag's ``$value``)."""
        return next(iter(self.image_keys.values()), "image")


def parse_label_config(xml: str) -> LabelConfig:
    """Parse a labeling config; ConfigError when it is not XML or has no Image tag."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ConfigError(f"the labeling config is not valid XML ({exc})", hint="check the project's config") from None
    image_keys: dict[str, str] = {}
    controls: list[Control] = []
    for el in root.iter():
        tag = el.tag.lower()
        if tag in _OBJECT_TAGS and el.get("name"):
            image_keys[el.get("name", "")] = el.get("value", "$image").lstrip("$")
        elif tag in ("rectanglelabels", "brushlabels", "choices", "textarea") and el.get("name"):
            control = Control(tag, el.get("name", ""), (el.get("toName") or el.get("toname") or "").split(",")[0],
                              multiple=(el.get("choice") or "").lower() == "multiple")
            child_tag = "choice" if tag == "choices" else "label"
            for child in el.iter():
                if child.tag.lower() != child_tag or child.get("value") is None:
                    continue
                value = child.get("value", "")
                control.values.append(value)
                names = [n.strip() for n in (child.get("predicted_values") or "").split(",") if n.strip()]
                for name in names or [value]:
                    control.class_to_value.setdefault(name.lower(), value)
            controls.append(control)
    if not image_keys:
        raise ConfigError("the labeling config has no <Image> tag", hint="this backend labels images")
    return LabelConfig(controls, image_keys)




# ---------------------------------------------------------------- results
def _class_names(record: Record) -> list[str]:
    det = record.detections
    if "class_name" in det.data:
        return [str(n) for n in det.data["class_name"]]
    if det.class_id is not None:
        return [record.prompt[i] if 0 <= i < len(record.prompt) else "" for i in det.class_id.tolist()]
    return [""] * len(det)


def record_to_prediction(record: Record, config: LabelConfig, model_version: str) -> dict[str, Any]:
    """One Label Studio prediction (``result`` list, ``score``, ``model_version``) for a record."""
    if not record.ok or record.size is None:
        return {"result": [], "score": 0.0, "model_version": model_version, "error": record.error}
    height, width = record.size
    det = record.detections
    names = [n.lower() for n in _class_names(record)]
    conf = det.confidence if det.confidence is not None else np.ones(len(det), dtype=np.float32)
    results: list[dict[str, Any]] = []
    scores: list[float] = []
    for control in config.controls:
        base = {"from_name": control.name, "to_name": control.to_name,
                "original_width": width, "original_height": height, "image_rotation": 0}
        if control.kind == "rectanglelabels":
            for i, name in enumerate(names):
                label = control.class_to_value.get(name)
                if label is None:
                    continue
                x1, y1, x2, y2 = (float(v) for v in det.xyxy[i])
                x1, x2 = max(0.0, min(x1, width)), max(0.0, min(x2, width))
                y1, y2 = max(0.0, min(y1, height)), max(0.0, min(y2, height))
                value = {"x": 100.0 * x1 / width, "y": 100.0 * y1 / height,
                         "width": 100.0 * (x2 - x1) / width, "height": 100.0 * (y2 - y1) / height,
                         "rotation": 0, "rectanglelabels": [label]}
                results.append({**base, "id": f"r{i}", "type": "rectanglelabels", "value": value,
                                "score": float(conf[i])})
                scores.append(float(conf[i]))
        elif control.kind == "brushlabels" and det.mask is not None:
            for i, name in enumerate(names):
                label = control.class_to_value.get(name)
                if label is None or not det.mask[i].any():
                    continue
                value = {"format": "rle", "rle": mask_to_brush_rle(det.mask[i]), "brushlabels": [label]}
                mask_score = det.data.get("mask_score")
                score = float(mask_score[i]) if mask_score is not None else float(conf[i])
                results.append({**base, "id": f"b{i}", "type": "brushlabels", "value": value, "score": score})
                scores.append(float(conf[i]))
        elif control.kind == "choices":
            by_value = {v.lower(): v for v in control.values}
            hits = [(t.score, by_value[t.name.lower()]) for t in record.tags if t.name.lower() in by_value]
            if not hits:
                continue
            hits.sort(key=lambda h: -h[0])
            chosen = [v for _, v in hits] if control.multiple else [hits[0][1]]
            results.append({**base, "id": f"c-{control.name}", "type": "choices",
                            "value": {"choices": chosen}, "score": float(hits[0][0])})
            scores.append(float(hits[0][0]))
        elif control.kind == "textarea" and record.caption:
            results.append({**base, "id": f"t-{control.name}", "type": "textarea",
                            "value": {"text": [record.caption]}})
    score = float(np.mean(scores)) if scores else 0.0
    return {"result": results, "score": score, "model_version": model_version}


# ------------------------------------------------------------ project state
@dataclass
class ProjectInfo:
    """What ``/setup`` told us about a project."""

    hostname: str | None = None
    access_token: str | None = None
    schema: str | None = None


def project_key(project: Any) -> str:
    """``"12.1700000000"`` (id.timestamp, as /setup sends it) or ``12`` -> ``"12"``."""
    return str(project).split(".")[0] if project is not None else ""
