"""The CVAT nuclio handler, called directly with CVAT-shaped events."""

from __future__ import annotations

import base64
import json
import types
from pathlib import Path

import numpy as np
import yaml
from test_serve_fakes import fake_box, fake_mask, fake_pipeline, png_bytes

from ram_grounded.serve.cvat import handler as cvat

FUNCTION_YAML = Path(cvat.__file__).with_name("function.yaml")


class Response:
    def __init__(self, body: str, headers: dict, content_type: str, status_code: int) -> None:
        self.body, self.headers, self.content_type, self.status_code = body, headers, content_type, status_code


def make_context():  # noqa: ANN201
    logs: list[str] = []
    ctx = types.SimpleNamespace(user_data=types.SimpleNamespace(), Response=Response,
                                logger=types.SimpleNamespace(info=logs.append, error=logs.append))
    cvat.init_context(ctx, pipeline=fake_pipeline())
    return ctx


def event(body) -> types.SimpleNamespace:  # noqa: ANN001
    return types.SimpleNamespace(body=body)


def test_masks_and_rectangles_out() -> None:
    ctx = make_context()
    h, w = 50, 80
    b64 = base64.b64encode(png_bytes(h, w)).decode()
    resp = cvat.handler(ctx, event({"image": b64, "threshold": 0.0, "labels": ["cat", "dog"]}))
    assert resp.status_code == 200 and resp.content_type == "application/json"
    shapes = json.loads(resp.body)
    assert [s["label"] for s in shapes] == ["cat", "dog"]
    for i, shape in enumerate(shapes):
        assert shape["type"] == "mask"
        assert abs(float(shape["confidence"]) - (0.9 - 0.1 * i)) < 1e-4
        expected = fake_mask(i, h, w)
        ys, xs = np.nonzero(expected)
        xtl, ytl, xbr, ybr = shape["mask"][-4:]
        assert (xtl, ytl, xbr, ybr) == (xs.min(), ys.min(), xs.max(), ys.max())
        crop = np.array(shape["mask"][:-4]).reshape(ybr - ytl + 1, xbr - xtl + 1)
        full = np.zeros((h, w), dtype=bool)
        full[ytl:ybr + 1, xtl:xbr + 1] = crop.astype(bool)
        assert np.array_equal(full, expected)
        poly = np.array(shape["points"]).reshape(-1, 2)
        assert poly[:, 0].min() == xtl and poly[:, 0].max() == xbr
        assert poly[:, 1].min() == ytl and poly[:, 1].max() == ybr
    # the threshold drops the weaker detection; a JSON string body is accepted too
    resp = cvat.handler(ctx, event(json.dumps({"image": b64, "threshold": 0.85, "labels": ["cat", "dog"]})))
    assert [s["label"] for s in json.loads(resp.body)] == ["cat"]


def test_rectangles_when_there_are_no_masks() -> None:
    pipe = fake_pipeline()
    rec = pipe(cvat.Record(image=np.zeros((40, 60, 3), np.uint8), prompt=["car"]))
    rec.detections.mask = None
    shapes = cvat.record_to_shapes(rec)
    assert shapes == [{"label": "car", "confidence": "0.9000", "type": "rectangle",
                       "points": [float(np.float32(v)) for v in fake_box(0, 40, 60)]}]


def test_bad_events_get_json_errors() -> None:
    ctx = make_context()
    for body, status in [({}, 400), ({"image": "***"}, 400), ({"image": base64.b64encode(b"no image").decode()}, 422),
                         (b"not json", 400)]:
        resp = cvat.handler(ctx, event(body))
        assert resp.status_code == status, (body, resp.body)
        assert json.loads(resp.body)["error"]


def test_function_yaml_is_a_detector_listing_the_ram_tags() -> None:
    spec = yaml.safe_load(FUNCTION_YAML.read_text(encoding="utf-8"))
    annotations = spec["metadata"]["annotations"]
    assert annotations["type"] == "detector"
    labels = json.loads(annotations["spec"])
    assert labels == cvat.detector_spec()
    tag_file = Path(cvat.__file__).parents[2] / "data" / "recognize_anything" / "ram_tag_list.txt"
    tags = [t.strip() for t in tag_file.read_text(encoding="utf-8").splitlines() if t.strip()]
    assert [label["name"] for label in labels] == tags
    assert spec["spec"]["handler"] == "ram_grounded.serve.cvat.handler:handler"
    assert int(str(spec["spec"]["eventTimeout"]).rstrip("s")) >= 120  # CPU inference takes a while
