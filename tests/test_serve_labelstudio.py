"""Label Studio protocol pieces without a Label Studio: configs, results, task images, tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_serve_fakes import fake_box, fake_caption, fake_mask, fake_pipeline, image_server, png_bytes, run_uvicorn
from test_serve_rest import TOKEN, call

from ram_grounded.errors import ConfigError
from ram_grounded.serve.app import create_app
from ram_grounded.serve.backend import ServeConfig
from ram_grounded.serve.labelstudio import brush_rle_to_mask, mask_to_brush_rle, parse_label_config

CONFIG = """<View>
  <Image name="photo" value="$img"/>
  <RectangleLabels name="boxes" toName="photo">
    <Label value="Feline" predicted_values="cat,kitten"/><Label value="dog"/>
  </RectangleLabels>
  <Choices name="scene" toName="photo"><Choice value="Dog"/><Choice value="tree"/></Choices>
  <TextArea name="desc" toName="photo"/>
</View>"""


def test_parse_label_config() -> None:
    config = parse_label_config(CONFIG)
    assert config.image_key() == "img"
    assert config.prompt_classes == ["cat", "kitten", "dog"]
    boxes, scene, desc = config.controls
    assert (boxes.kind, boxes.name, boxes.to_name) == ("rectanglelabels", "boxes", "photo")
    assert boxes.class_to_value == {"cat": "Feline", "kitten": "Feline", "dog": "dog"}
    assert (scene.kind, scene.values, scene.multiple) == ("choices", ["Dog", "tree"], False)
    assert desc.kind == "textarea"
    with pytest.raises(ConfigError, match="not valid XML"):
        parse_label_config("<View><Image")
    with pytest.raises(ConfigError, match="no <Image>"):
        parse_label_config("<View><Text name='t' value='$t'/></View>")


def test_brush_rle_round_trips_through_label_studio_sdk() -> None:
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (7, 13), (64, 48)]:
        mask = rng.random((h, w)) > 0.6
        rle = mask_to_brush_rle(mask)
        assert all(isinstance(v, int) and 0 <= v < 256 for v in rle)
        assert np.array_equal(brush_rle_to_mask(rle, h, w), mask)


@pytest.fixture(scope="module")
def ls_backend():
    config = ServeConfig(token=TOKEN, allow_url_hosts=("127.0.0.1",), max_wait=0.05)
    app = create_app(config, pipeline=fake_pipeline())
    with run_uvicorn(app) as base:
        yield base, app.state.backend


def test_predict_answers_the_config(ls_backend) -> None:
    base, backend = ls_backend
    auth: list = []
    redirects: dict[str, str] = {}
    with image_server({"/elsewhere.png": png_bytes(20, 24)}, auth_log=auth) as (other, _), \
            image_server({"/data/upload/1/x.png": png_bytes(30, 40)}, redirects, auth_log=auth) as (fake_ls, _):
        redirects["/data/upload/1/moved.png"] = f"{other}/elsewhere.png"  # another origin
        status, out, _ = call(base, "POST", "/setup", json.dumps({
            "project": "5.1712345678", "schema": CONFIG, "hostname": fake_ls, "access_token": "ls-token"}).encode(),
            {"Content-Type": "application/json"})
        assert status == 200 and out["model_version"] == backend.model_version
        tasks = [{"id": 1, "data": {"img": "/data/upload/1/x.png"}},
                 {"id": 2, "data": {"img": "/data/upload/1/missing.png"}},
                 {"id": 3, "data": {"img": f"{fake_ls}/data/upload/1/moved.png"}},
                 {"id": 4, "data": {"img": "http://10.0.0.1/x.png"}}]
        status, out, _ = call(base, "POST", "/predict", json.dumps({"tasks": tasks, "project": "5.1712345678"}).encode(),
                              {"Content-Type": "application/json"})
    assert status == 200, out
    first, missing, moved, refused = out["results"]
    assert missing["result"] == [] and refused["result"] == [] and missing["score"] == 0.0
    assert all(r["model_version"] == backend.model_version for r in out["results"])
    # Label Studio's token goes to Label Studio only: a redirect elsewhere does not get it
    assert ("/data/upload/1/x.png", "Token ls-token") in auth
    assert ("/data/upload/1/moved.png", "Token ls-token") in auth
    assert [a for p, a in auth if p == "/elsewhere.png"] == [None]
    for pred, (h, w) in [(first, (30, 40)), (moved, (20, 24))]:
        rects = [r for r in pred["result"] if r["type"] == "rectanglelabels"]
        # prompt classes cat, kitten, dog -> labels Feline, Feline, dog
        assert [r["value"]["rectanglelabels"] for r in rects] == [["Feline"], ["Feline"], ["dog"]]
        for i, r in enumerate(rects):
            x1, y1, x2, y2 = fake_box(i, h, w)
            assert np.allclose([r["value"]["x"], r["value"]["width"]], [100 * x1 / w, 100 * (x2 - x1) / w], atol=1e-3)
            assert r["from_name"] == "boxes" and r["to_name"] == "photo"
        (choice,) = [r for r in pred["result"] if r["type"] == "choices"]
        assert choice["value"]["choices"] == ["Dog"]  # single choice: the best matching tag (dog 0.6 > tree 0.3)
        (text,) = [r for r in pred["result"] if r["type"] == "textarea"]
        assert text["value"]["text"] == [fake_caption(h, w)]
        assert pred["score"] > 0
    assert fake_mask(0, 30, 40).any()


def test_webhook_and_health(ls_backend) -> None:
    base, backend = ls_backend
    status, out, _ = call(base, "POST", "/webhook", json.dumps({"action": "TASKS_CREATED"}).encode(),
                          {"Content-Type": "application/json"})
    assert status == 200 and out["action"] == "TASKS_CREATED"
    status, out, _ = call(base, "GET", "/health", token=None)
    assert out == {"status": "UP", "model_class": "ram-grounded", "model_version": backend.model_version}
    status, out, _ = call(base, "POST", "/predict", json.dumps({"tasks": []}).encode(),
                          {"Content-Type": "application/json"})
    assert status == 400 and "labeling config" in out["error"]
    status, out, _ = call(base, "POST", "/predict", b'{"nope": 1}', {"Content-Type": "application/json"})
    assert status == 422 and out["error"] == "invalid request body"


def test_label_values_become_the_prompt_of_prompt_from_tags() -> None:
    from test_serve_fakes import TAGS, FakeDetector, FakeTagger

    from ram_grounded.pipeline import Pipeline
    from ram_grounded.pipeline_yaml import build_stage
    from ram_grounded.record import Record
    from ram_grounded.serve.backend import pipeline_for_classes

    pipe = Pipeline([FakeTagger(), build_stage("prompt_from_tags", {"classes": ["car"]}), FakeDetector()], name="p")
    image = np.zeros((20, 30, 3), np.uint8)
    only = pipeline_for_classes(pipe, ["zebra", "cat"], only=True)(Record(image=image))
    assert only.prompt == ["zebra", "cat"]
    assert list(only.detections.data["class_name"]) == ["zebra", "cat"]
    extra = pipeline_for_classes(pipe, ["zebra"])(Record(image=image))
    assert extra.prompt[: len(TAGS)] == [n for n, _ in TAGS] and extra.prompt[len(TAGS):] == ["car", "zebra"]
    assert pipe.stages[1].classes == ["car"] and pipe(Record(image=image)).prompt[-1] == "car"  # untouched
    assert pipeline_for_classes(pipe, ["x"], only=True).stages[0] is pipe.stages[0]  # models shared
