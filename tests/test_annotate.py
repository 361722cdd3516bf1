"""`ram-grounded annotate`: kill -9 then resume gives identical files; broken images are
listed with exit code 1; changed settings are refused; --classes/--exclude reach the stages.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

import test_export_fakes as fakes
from ram_grounded.cli import app

FAKES_SCRIPT = Path(fakes.__file__)
BROKEN = {"empty.jpg": "empty", "text.jpg": "not an image", "trunc.png": "truncated"}


def make_folder(folder: Path, n: int = 10, broken: bool = True) -> None:
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.zeros((48, 64, 3), np.uint8)
        for c in range(3):
            if rng.random() < 0.7:
                y, x = int(rng.integers(0, 24)), int(rng.integers(0, 32))
                img[y:y + int(rng.integers(6, 24)), x:x + int(rng.integers(6, 32)), c] = 255
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    if broken:
        (folder / "empty.jpg").write_bytes(b"")
        (folder / "text.jpg").write_text("this is text, not a JPEG\n")
        data = (folder / "00.png").read_bytes()
        (folder / "trunc.png").write_bytes(data[: len(data) // 2])


def write_yaml(path: Path, delay: float = 0.0) -> Path:
    path.write_text(fakes.FAKE_PIPELINE_YAML.replace("{level: 128}", f"{{level: 128, delay: {delay}}}"))
    return path


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes; records.jsonl without timings)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name == "records.jsonl":
                rows = [json.loads(line) for line in data.splitlines()]
                for row in rows:
                    row["meta"].pop("timings", None)
                data = json.dumps(rows).encode()
            files[path.relative_to(folder).as_posix()] = data
    return files


def cli_args(src: Path, out: Path, yaml_path: Path) -> list[str]:
    return ["annotate", str(src), "--out", str(out), "--pipeline", str(yaml_path),
            "--format", "coco,yolo,voc,labelstudio,jsonl", "--batch-size", "2"]


def test_kill_9_then_resume_gives_identical_outputs(tmp_path):
    src = tmp_path / "src"
    make_folder(src, n=14)
    yaml_path = write_yaml(tmp_path / "slow.yaml", delay=0.3)
    command = [sys.executable, str(FAKES_SCRIPT)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    # the uninterrupted run goes on beside the one that gets killed (saves a start-up)
    full = subprocess.Popen(command + cli_args(src, tmp_path / "full", yaml_path), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    total = len(list(src.iterdir()))

    out = tmp_path / "killed"
    proc = subprocess.Popen(command + cli_args(src, out, yaml_path), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = out / "records.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if records.is_file() and records.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    stored = records.read_bytes().count(b"\n")
    assert 4 <= stored < total, f"kill came too late ({stored} of {total} stored)"
    assert not (out / "coco").exists()  # formats are written only at the end
    _, full_err = full.communicate(timeout=300)
    assert full.returncode == 1, full_err  # the broken files

    resumed = subprocess.run(command + cli_args(src, out, yaml_path), cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 1, resumed.stderr
    assert f"resuming: {stored} of {total}" in resumed.stderr
    expected, got = tree(tmp_path / "full"), tree(out)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], name
    assert any(n.startswith("yolo-seg/labels/") for n in got) and "coco/annotations.json" in got


def test_broken_files_are_listed_and_the_exit_code_says_so(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_folder(src, n=3)
    yaml_path = write_yaml(tmp_path / "p.yaml")
    result = CliRunner().invoke(app, cli_args(src, out, yaml_path))
    assert result.exit_code == 1, result.output
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert sorted(Path(e["source"]).name for e in errors) == sorted(BROKEN)
    for e in errors:
        assert BROKEN[Path(e["source"]).name] in e["error"]
    assert "6 images" in result.output and "3 errors" in result.output and "Traceback" not in result.output
    coco = json.loads((out / "coco" / "annotations.json").read_text())
    assert sorted(im["file_name"] for im in coco["images"]) == ["00.png", "01.png", "02.png"]

    clean, clean_out = tmp_path / "clean", tmp_path / "clean_out"
    make_folder(clean, n=2, broken=False)
    ok = CliRunner().invoke(app, cli_args(clean, clean_out, yaml_path))
    assert ok.exit_code == 0, ok.output
    assert (clean_out / "errors.jsonl").read_text() == ""


def test_changed_settings_are_refused_then_overwrite_starts_over(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_folder(src, n=2, broken=False)
    yaml_path = write_yaml(tmp_path / "p.yaml")
    assert CliRunner().invoke(app, cli_args(src, out, yaml_path)).exit_code == 0
    before = (out / "records.jsonl").read_bytes()
    refused = CliRunner().invoke(app, cli_args(src, out, yaml_path) + ["--classes", "purple"])
    assert refused.exit_code == 2 and "different pipeline settings" in refused.output
    assert "Traceback" not in refused.output and (out / "records.jsonl").read_bytes() == before
    again = CliRunner().invoke(app, cli_args(src, out, yaml_path) + ["--classes", "purple", "--overwrite"])
    assert again.exit_code == 0, again.output
    prompts = [json.loads(line)["prompt"] for line in (out / "records.jsonl").read_text().splitlines()]
    assert all("purple" in p for p in prompts) and len(prompts) == 2


def test_classes_and_exclude_reach_the_stages(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    make_folder(src, n=4, broken=False)
    yaml_path = write_yaml(tmp_path / "p.yaml")
    result = CliRunner().invoke(app, cli_args(src, out, yaml_path) + ["--classes", "purple,blue", "--exclude", "red"])
    assert result.exit_code == 0, result.output
    stages = {s["stage"]: s["params"] for s in json.loads((out / "run.json").read_text())["pipeline"]["stages"]}
    assert stages["fake_prompt"]["classes"] == ["purple", "blue"]
    assert stages["fake_prompt"]["exclude"] == stages["fake_tagger"]["exclude"] == ["red"]
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert all("red" not in [t["name"] for t in r["tags"]] and "purple" in r["prompt"] for r in rows)
    classes = [c["name"] for c in json.loads((out / "coco" / "annotations.json").read_text())["categories"]]
    assert "red" not in classes and classes == sorted(classes)


def test_usage_errors_are_one_line_exit_2(tmp_path):
    src = tmp_path / "src"
    make_folder(src, n=1, broken=False)
    yaml_path = write_yaml(tmp_path / "p.yaml")
    bad_format = CliRunner().invoke(app, cli_args(src, tmp_path / "o", yaml_path) + ["--format", "tiff"])
    assert bad_format.exit_code == 2 and "unknown export format 'tiff'" in bad_format.output
    missing = CliRunner().invoke(app, cli_args(tmp_path / "nope", tmp_path / "o", yaml_path))
    assert missing.exit_code == 2 and "no such file or folder" in missing.output
    tagger_only = tmp_path / "tagger.yaml"
    tagger_only.write_text("name: tags\nstages:\n  - stage: fake_tagger\n")
    no_field = CliRunner().invoke(app, ["annotate", str(src), "--out", str(tmp_path / "o2"),
                                        "--pipeline", str(tagger_only), "--classes", "x"])
    assert no_field.exit_code == 2 and "no stage of pipeline 'tags' has a 'classes' parameter" in no_field.output
    for r in (bad_format, missing, no_field):
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_unwritable_out_is_a_one_line_error(tmp_path):
    src = tmp_path / "src"
    make_folder(src, n=1, broken=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(app, cli_args(src, blocker / "out", write_yaml(tmp_path / "p.yaml")))
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output
