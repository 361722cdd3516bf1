"""Records draw themselves: plot(), PNG and HTML representations for notebooks."""

from __future__ import annotations

import io

import numpy as np
import supervision as sv
from PIL import Image

from ram_grounded import Record, Tag


def _record() -> Record:
    img = np.full((60, 80, 3), 200, np.uint8)
    mask = np.zeros((1, 60, 80), bool)
    mask[0, 10:30, 20:50] = True
    det = sv.Detections(xyxy=np.array([[20, 10, 50, 30]], np.float32), confidence=np.array([0.9], np.float32),
                        class_id=np.array([0]), mask=mask, data={"class_name": np.array(["cat"])})
    return Record(image=img, source="cat.jpg", tags=[Tag("cat", 0.9, {"zh": "猫"})], caption="a cat",
                  prompt=["cat"], detections=det)


def test_plot_draws_masks_and_boxes_and_keeps_the_original():
    rec = _record()
    before = rec.image.copy()
    drawn = rec.plot(header=False)
    assert drawn.shape == rec.image.shape and drawn.dtype == np.uint8
    np.testing.assert_array_equal(rec.image, before)
    inside = drawn[15:25, 30:40].astype(int)
    assert np.abs(inside - 200).sum() > 0  # the mask tinted the object
    assert (drawn[50:60, 0:10] == 200).all()  # the background is untouched
    with_header = rec.plot()
    assert with_header.shape[0] > rec.image.shape[0]  # a band with tags and caption on top


def test_png_and_html_representations():
    rec = _record()
    png = rec._repr_png_()
    assert Image.open(io.BytesIO(png)).size == (80, 60)
    html = rec._repr_html_()
    assert "data:image/png;base64" in html and "猫" in html and "a cat" in html and "1 (cat 0.90)" in html
