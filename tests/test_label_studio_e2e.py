"""End to end against a real Label Studio (its own venv, ``.ci/install_label_studio.sh``).

A session fixture starts ``label-studio`` on loopback (telemetry and version checks off,
a temporary data dir); our backend runs on another loopback port with a token, which
Label Studio sends as basic auth. The test creates a project (RectangleLabels +
BrushLabels + Choices + TextArea), connects the backend, imports tasks (loopback URLs and
an upload), asks Label Studio for predictions and checks what Label Studio stored.
Fails, never skips, when Label Studio cannot start.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_serve_fakes import TAGS, fake_box, fake_caption, fake_mask, fake_pipeline, free_port, image_server, \
    png_bytes, run_uvicorn

from ram_grounded.serve.app import create_app
from ram_grounded.serve.backend import ServeConfig
from ram_grounded.serve.labelstudio import brush_rle_to_mask

REPO = Path(__file__).resolve().parents[1]
LS_EXE_ENV = "RAM_GROUNDED_LABEL_STUDIO"
START_TIMEOUT = float(os.environ.get("RAM_GROUNDED_LS_START_TIMEOUT", "300"))
BACKEND_TOKEN = "backend-token-" + secrets.token_hex(8)

LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="box" toName="image">
    <Label value="Cat" predicted_values="cat"/>
    <Label value="Dog"/>
  </RectangleLabels>
  <BrushLabels name="mask" toName="image">
    <Label value="Cat" predicted_values="cat"/>
    <Label value="Dog"/>
  </BrushLabels>
  <Choices name="tags" toName="image" choice="multiple">
    <Choice value="cat"/><Choice value="tree"/><Choice value="car"/>
  </Choices>
  <TextArea name="caption" toName="image"/>
</View>"""


class LabelStudio:
    """A running Label Studio and a tiny client for its API."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def api(self, method: str, path: str, body=None, *, files: dict[str, bytes] | None = None):  # noqa: ANN001, ANN201
        headers = {"Authorization": f"Token {self.token}"}
        data = None
        if files:
            boundary = "lsboundary" + secrets.token_hex(6)
            parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + content + b"\r\n" for name, content in files.items()]
            data = b"".join(parts) + f"--{boundary}--\r\n".encode()
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: HTTP {exc.code}: {exc.read()[:500]!r}") from None
        return json.loads(raw) if raw else None


def _ls_executable() -> Path:
    exe = Path(os.environ.get(LS_EXE_ENV) or REPO / ".venv-ls" / "bin" / "label-studio")
    if not exe.is_file():
        pytest.fail(f"Label Studio not found at {exe}: run `bash .ci/install_label_studio.sh` "
                    f"or set {LS_EXE_ENV}", pytrace=False)
    return exe


def _template(exe: Path) -> tuple[Path | None, dict[str, str]]:
    """The database made by the install script (fast start), or None (first start: ~1 min)."""
    folder = Path(os.environ.get("RAM_GROUNDED_LABEL_STUDIO_TEMPLATE") or exe.parents[1] / "e2e-template")
    creds = folder / "credentials.json"
    if creds.is_file() and (folder / "data").is_dir():
        return folder / "data", json.loads(creds.read_text(encoding="utf-8"))
    return None, {"username": "e2e@example.com", "password": secrets.token_hex(12), "token": secrets.token_hex(20)}


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):  # noqa: ANN001, ANN201
    exe = _ls_executable()
    template, creds = _template(exe)
    data_dir = tmp_path_factory.mktemp("label-studio") / "data"
    if template is not None:
        shutil.copytree(template, data_dir)
    else:
        data_dir.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "DJANGO"))}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "DJANGO_DB": "sqlite", "SECRET_KEY": "ram-grounded-e2e",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false", "LATEST_VERSION_CHECK": "false", "ML_BLOCK_LOCAL_IP": "false",
        "USE_DEFAULT_BANNED_SUBNETS": "false", "LABEL_STUDIO_HOST": f"http://127.0.0.1:{port}",
        "HOME": str(data_dir.parent),
    })
    log_path = data_dir.parent / "label-studio.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed in the finaliser
    proc = subprocess.Popen(
        [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port),
         "--username", creds["username"], "--password", creds["password"], "--user-token", creds["token"],
         "--enable-legacy-api-token"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url = _wait_ready(proc, log_path, port)
        yield LabelStudio(url, creds["token"])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group we started (Django's autoreloader child too)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()


def _wait_ready(proc: subprocess.Popen, log_path: Path, port: int) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    url = f"http://127.0.0.1:{port}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"Label Studio exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}",
                        pytrace=False)
        found = re.search(r"Starting development server at (http://[\d.]+:\d+)", log_path.read_text(errors="replace"))
        if found:  # a busy port is silently replaced by the next one: trust the log line
            url = found.group(1).rstrip("/")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as resp:
                if json.loads(resp.read()).get("status") == "UP":
                    return url
        except (OSError, ValueError):
            pass
        time.sleep(1.0)
    pytest.fail(f"Label Studio did not answer /health within {START_TIMEOUT:.0f} s:\n"
                f"{log_path.read_text(errors='replace')[-3000:]}", pytrace=False)


@pytest.fixture(scope="session")
def backend(label_studio):  # noqa: ANN001, ANN201
    config = ServeConfig(token=BACKEND_TOKEN, allow_url_hosts=("127.0.0.1",), label_studio_url=label_studio.url,
                         max_wait=0.05)
    app = create_app(config, pipeline=fake_pipeline())
    with run_uvicorn(app) as url:
        yield url, app.state.backend


def test_label_studio_stores_our_predictions(label_studio, backend) -> None:
    ls = label_studio
    backend_url, state = backend
    sizes = {"a.png": (60, 90), "b.png": (75, 50), "up.png": (40, 64)}
    images = {name: png_bytes(h, w, seed=i) for i, (name, (h, w)) in enumerate(sizes.items())}
    project = ls.api("POST", "/api/projects", {"title": "ram-grounded e2e", "label_config": LABEL_CONFIG})
    pid = project["id"]
    with image_server({"/a.png": images["a.png"], "/b.png": images["b.png"]}) as (img_base, hits):
        ls.api("POST", f"/api/projects/{pid}/import", [{"image": f"{img_base}/a.png"}, {"image": f"{img_base}/b.png"}])
        ls.api("POST", f"/api/projects/{pid}/import", files={"up.png": images["up.png"]})  # -> /data/upload/...
        ml = ls.api("POST", "/api/ml", {"url": backend_url, "project": pid, "title": "ram-grounded",
                                        "is_interactive": False, "auth_method": "BASIC_AUTH",
                                        "basic_auth_user": "label-studio", "basic_auth_pass": BACKEND_TOKEN})
        assert ml["state"] == "CO", ml
        ls.api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
               {"selectedItems": {"all": True, "excluded": []}})
        tasks = ls.api("GET", f"/api/tasks?project={pid}&page_size=50")
    tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
    assert len(tasks) == 3
    assert sorted(hits) == ["/a.png", "/b.png"]  # the backend downloaded the URL tasks itself
    assert str(pid) in state.projects and state.projects[str(pid)].access_token == ls.token  # from /setup
    labels = ["Cat", "Dog"]  # prompt classes "cat" (Cat's predicted_values) and "dog"
    for task in tasks:
        ref = task["data"]["image"]
        name = "up.png" if ref.startswith("/data/upload/") else ref.rsplit("/", 1)[-1]
        if name == "up.png":
            assert ref.endswith("up.png")
        h, w = sizes[name]
        preds = ls.api("GET", f"/api/predictions?task={task['id']}")
        assert len(preds) == 1, preds
        pred = preds[0]
        assert pred["model_version"] == state.model_version
        assert 0.0 < pred["score"] <= 1.0
        by_type: dict[str, list[dict]] = {}
        for region in pred["result"]:
            by_type.setdefault(region["type"], []).append(region)
        rects = sorted(by_type["rectanglelabels"], key=lambda r: r["value"]["x"])
        assert [r["value"]["rectanglelabels"] for r in rects] == [[lab] for lab in labels]
        for i, r in enumerate(rects):
            x1, y1, x2, y2 = fake_box(i, h, w)
            v = r["value"]
            assert (r["from_name"], r["to_name"]) == ("box", "image")
            assert (r["original_width"], r["original_height"]) == (w, h)
            assert np.allclose([v["x"], v["y"], v["width"], v["height"]],
                               [100 * x1 / w, 100 * y1 / h, 100 * (x2 - x1) / w, 100 * (y2 - y1) / h], atol=1e-3)
        brushes = by_type["brushlabels"]
        assert sorted(b["value"]["brushlabels"][0] for b in brushes) == labels
        for b in brushes:
            i = labels.index(b["value"]["brushlabels"][0])
            assert b["value"]["format"] == "rle" and (b["from_name"], b["to_name"]) == ("mask", "image")
            assert np.array_equal(brush_rle_to_mask(b["value"]["rle"], h, w), fake_mask(i, h, w))
        (choice,) = by_type["choices"]
        tag_names = [n for n, _ in TAGS]
        assert choice["from_name"] == "tags" and choice["value"]["choices"] == [n for n in tag_names if n in ("cat", "tree")]
        (text,) = by_type["textarea"]
        assert text["from_name"] == "caption" and text["value"]["text"] == [fake_caption(h, w)]


def test_label_studio_with_the_tiny_real_models(label_studio, monkeypatch) -> None:
    """RAM -> prompt_from_tags -> Grounding DINO -> SAM (tiny random weights): real masks
    through label-studio-sdk's brush RLE are stored by Label Studio with the config's labels."""
    from ram_grounded.pipeline import Pipeline
    from ram_grounded.pipeline_yaml import build_stage

    monkeypatch.setenv("RAM_GROUNDED_ZOO", "tiny")
    pipe = Pipeline([build_stage("ram", device="cpu"), build_stage("prompt_from_tags"),
                     # thresholds 0: random weights still give boxes to check
                     build_stage("grounding_dino", {"box_threshold": 0.0, "text_threshold": 0.0}, device="cpu"),
                     build_stage("sam", device="cpu")], name="tiny_ram_grounded_sam")
    ls = label_studio
    config = ServeConfig(token=BACKEND_TOKEN, allow_url_hosts=("127.0.0.1",), label_studio_url=ls.url)
    app = create_app(config, pipeline=pipe)
    app.state.backend.warmup()
    sizes = [(48, 64), (64, 40)]
    project = ls.api("POST", "/api/projects", {"title": "ram-grounded tiny", "label_config": LABEL_CONFIG})
    pid = project["id"]
    with run_uvicorn(app) as backend_url:
        for i, (h, w) in enumerate(sizes):
            ls.api("POST", f"/api/projects/{pid}/import", files={f"t{i}.png": png_bytes(h, w, seed=10 + i)})
        ml = ls.api("POST", "/api/ml", {"url": backend_url, "project": pid, "title": "tiny", "is_interactive": False,
                                        "auth_method": "BASIC_AUTH", "basic_auth_user": "ls",
                                        "basic_auth_pass": BACKEND_TOKEN})
        assert ml["state"] == "CO", ml
        ls.api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={pid}",
               {"selectedItems": {"all": True, "excluded": []}})
        tasks = ls.api("GET", f"/api/tasks?project={pid}&page_size=50")
    tasks = tasks["tasks"] if isinstance(tasks, dict) else tasks
    kinds: set[str] = set()
    for task in tasks:
        h, w = sizes[int(re.search(r"t(\d)\.png$", task["data"]["image"]).group(1))]
        (pred,) = ls.api("GET", f"/api/predictions?task={task['id']}")
        assert pred["model_version"] == app.state.backend.model_version
        for region in pred["result"]:
            kinds.add(region["type"])
            v = region["value"]
            assert (region["original_width"], region["original_height"]) == (w, h)
            if region["type"] == "rectanglelabels":
                assert v["rectanglelabels"][0] in ("Cat", "Dog")
                assert -1e-3 <= v["x"] <= v["x"] + v["width"] <= 100 + 1e-3
                assert -1e-3 <= v["y"] <= v["y"] + v["height"] <= 100 + 1e-3
            elif region["type"] == "brushlabels":
                assert v["brushlabels"][0] in ("Cat", "Dog")
                assert brush_rle_to_mask(v["rle"], h, w).any()
    assert {"rectanglelabels", "brushlabels"} <= kinds
