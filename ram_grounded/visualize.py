"""Drawing Records with supervision's annotators (used by the CLI, notebooks and servers)."""

from __future__ import annotations

import numpy as np
import supervision as sv

from .record import Record


def detection_labels(record: Record) -> list[str]:
    """'class 0.87' per detection (mask score added when present)."""
    det = record.detections
    names = det.data.get("class_name")
    labels = []
    for i in range(len(det)):
        if names is not None:
            name = str(names[i])
        elif det.class_id is not None and 0 <= det.class_id[i] < len(record.prompt):
            name = record.prompt[det.class_id[i]]
        else:
            name = "object"
        score = f" {det.confidence[i]:.2f}" if det.confidence is not None else ""
        labels.append(name + score)
    return labels


def plot_record(record: Record, *, masks: bool = True, boxes: bool = True, labels: bool = True,
                header: bool = True, chinese: bool = False) -> np.ndarray:
    """RGB uint8 image with the record's masks, boxes, labels, and its tags/caption on top."""
    if record.image is None:
        raise ValueError("record has no pixels to draw on; run it again or pass the image")
    scene = record.image.copy()
    det = record.detections
    if len(det):
        # colour by class so one class keeps one colour across images
        lookup = sv.ColorLookup.CLASS if det.class_id is not None else sv.ColorLookup.INDEX
        if masks and det.mask is not None:
            scene = sv.MaskAnnotator(color_lookup=lookup, opacity=0.45).annotate(scene, det)
        if boxes:
            scene = sv.BoxAnnotator(color_lookup=lookup, thickness=2).annotate(scene, det)
        if labels:
            scene = sv.LabelAnnotator(color_lookup=lookup, text_scale=0.45, text_padding=3).annotate(
                scene, det, labels=detection_labels(record))
    if header:
        scene = _draw_header(scene, header_lines(record, chinese=chinese))
    return scene


def header_lines(record: Record, *, chinese: bool = False, width: int = 90) -> list[str]:
    """Tags (and caption) as short text lines."""
    lines = []
    if record.tags:
        names = [t.translations.get("zh", t.name).strip() if chinese else t.name for t in record.tags]
        text = "tags: " + " | ".join(names)
        lines += [text[i:i + width] for i in range(0, len(text), width)][:3]
    if record.caption:
        lines.append(("caption: " + record.caption)[:width])
    if record.error:
        lines.append(("error: " + record.error)[:width])
    return lines


def _draw_header(scene: np.ndarray, lines: list[str]) -> np.ndarray:
    if not lines:
        return scene
    import cv2

    line_h = 18
    band = np.full((line_h * len(lines) + 6, scene.shape[1], 3), 255, dtype=np.uint8)
    for i, line in enumerate(lines):
        # OpenCV's Hershey font has no CJK glyphs; Chinese text renders in notebooks (HTML) instead
        cv2.putText(band, line, (4, line_h * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, scene], axis=0)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG-encoded RGB image (for notebooks and HTTP answers)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def record_html(record: Record, *, chinese: bool = True, max_width: int = 640) -> str:
    """Notebook view: the annotated image, then tags (with Chinese names), caption and checks."""
    import base64
    import html

    parts = []
    if record.image is not None:
        data = base64.b64encode(png_bytes(plot_record(record, header=False))).decode("ascii")
        parts.append(f'<img src="data:image/png;base64,{data}" style="max-width:{max_width}px"/>')
    if record.tags:
        items = []
        for t in record.tags:
            zh = t.translations.get("zh", "").strip() if chinese else ""
            label = f"{t.name} / {zh}" if zh else t.name
            items.append(f"<code>{html.escape(label)}</code>&nbsp;{t.score:.2f}")
        parts.append("<div><b>tags</b>: " + ", ".join(items) + "</div>")
    if record.caption:
        parts.append(f"<div><b>caption</b>: {html.escape(record.caption)}</div>")
    if len(record.detections):
        parts.append(f"<div><b>detections</b>: {len(record.detections)} "
                     f"({html.escape(', '.join(sorted(set(detection_labels(record)))))})</div>")
    if record.checks:
        parts.append(f"<div><b>checks</b>: {html.escape(str(record.checks))}</div>")
    if record.error:
        parts.append(f'<div style="color:#b00"><b>error</b>: {html.escape(record.error)}</div>')
    source = html.escape(str(record.source or ""))
    return f'<div class="ram-grounded-record"><div><small>{source}</small></div>{"".join(parts)}</div>'


def save_image(image: np.ndarray, path: str) -> None:
    """Write an RGB image (BGR exists only inside the OpenCV call)."""
    import cv2

    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
