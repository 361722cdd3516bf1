"""`ram-grounded serve`: refuses unsafe binds; starts with the tiny zoo and answers
/v1/annotate and Label Studio's /predict with a real ready pipeline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_serve_fakes import free_port, image_server, png_bytes
from typer.testing import CliRunner

from ram_grounded.cli import app
from ram_grounded.commands.serve import build_config
from ram_grounded.errors import ConfigError

TOKEN = "cli-test-token-abcdef0123456789"
PIPELINE = "ram_grounded_sam"


def test_non_loopback_bind_needs_a_token(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("RAM_GROUNDED_TOKEN", raising=False)
    kwargs = dict(pipeline="x", token_file=None, device="cpu", max_batch=4, max_wait_ms=5, allow_url_host=[],
                  label_studio_url=None, max_body_mb=1, fetch_timeout=1, request_timeout=1, warmup=False)
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.com"):
        with pytest.raises(ConfigError, match="without a token"):
            build_config(host=host, **kwargs)
    assert build_config(host="127.0.0.1", **kwargs).token is None
    assert build_config(host="::1", **kwargs).token is None
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    assert build_config(host="0.0.0.0", **{**kwargs, "token_file": token_file}).token == "s3cret"
    monkeypatch.setenv("RAM_GROUNDED_TOKEN", "from-env")
    assert build_config(host="0.0.0.0", **kwargs).token == "from-env"
    monkeypatch.delenv("RAM_GROUNDED_TOKEN")
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code == 2 and "without a token" in result.output


def _wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"serve exited with {proc.returncode}: {log.read_text()[-2000:]}", pytrace=False)
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if json.loads(resp.read())["status"] == "UP":
                    return
        except (OSError, ValueError):
            time.sleep(0.5)
    pytest.fail(f"serve did not answer /health in {timeout} s: {log.read_text()[-2000:]}", pytrace=False)


def _post(url: str, body: bytes, ctype: str) -> dict:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": ctype, "Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        return json.loads(resp.read())


def test_serve_answers_annotate_and_predict_with_the_tiny_zoo(tmp_path) -> None:
    port = free_port()
    env = {**os.environ, "RAM_GROUNDED_ZOO": "tiny", "HF_HUB_OFFLINE": "1", "RAM_GROUNDED_TOKEN": TOKEN}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out, image_server({"/t.png": png_bytes(48, 64, seed=3)}) as (img_base, hits):
        proc = subprocess.Popen(
            [sys.executable, "-m", "ram_grounded", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--pipeline", PIPELINE, "--device", "cpu", "--allow-url-host", "127.0.0.1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait(base, proc, log)
            boundary = "b0undary"
            body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
                    f"Content-Type: image/png\r\n\r\n").encode() + png_bytes(40, 56, seed=2) + f"\r\n--{boundary}--\r\n".encode()
            record = _post(base + "/v1/annotate", body, f"multipart/form-data; boundary={boundary}")
            assert record["error"] is None and record["meta"]["image_size"] == [40, 56]
            assert record["model_version"].startswith(PIPELINE) and record["model_version"].endswith("-tiny")
            assert all(0.0 <= t["score"] <= 1.0 for t in record["tags"])
            for box in record["detections"]["xyxy"]:
                assert 0 <= box[0] <= box[2] <= 56 and 0 <= box[1] <= box[3] <= 40
            config = ('<View><Image name="img" value="$pic"/><RectangleLabels name="r" toName="img">'
                      '<Label value="cat"/><Label value="dog"/></RectangleLabels>'
                      '<Choices name="c" toName="img" choice="multiple">'
                      + "".join(f'<Choice value="{t["name"]}"/>' for t in record["tags"][:3]) + "</Choices></View>")
            answer = _post(base + "/predict", json.dumps({
                "tasks": [{"id": 7, "data": {"pic": f"{img_base}/t.png"}}], "project": "3.1700000000",
                "label_config": config}).encode(), "application/json")
            (pred,) = answer["results"]
            assert pred["model_version"] == record["model_version"]
            for region in pred["result"]:
                assert region["from_name"] in ("r", "c") and region["to_name"] == "img"
                if region["type"] == "rectanglelabels":
                    assert region["value"]["rectanglelabels"][0] in ("cat", "dog")
                    assert region["original_width"] == 64 and region["original_height"] == 48
            assert hits == ["/t.png"]
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
