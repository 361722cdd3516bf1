"""The ram-grounded command: help, listings, and one-line user errors without traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "ram_grounded", *args], capture_output=True, text=True,
                          env=full_env, timeout=300)


def test_help_lists_commands():
    res = _cli("--help")
    assert res.returncode == 0
    for cmd in ("pipelines", "models", "run"):
        assert cmd in res.stdout


def test_models_lists_names_sizes_and_cache_state():
    res = _cli("models")
    assert res.returncode == 0, res.stderr
    assert "ram_plus" in res.stdout and "3.01 GB" in res.stdout and "sam_vit_h" in res.stdout
    assert " no " in res.stdout  # nothing is cached on a test machine


def test_pipelines_command_runs():
    res = _cli("pipelines")
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("body", ["stages:\n  - stage: definitely_not_a_stage\n"])
def test_unknown_stage_is_one_line_exit_2(tmp_path, body):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    img = tmp_path / "a.png"
    img.write_bytes(b"")
    res = _cli("run", str(path), str(img), "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "definitely_not_a_stage" in lines[0] and "known stages" in lines[0]
