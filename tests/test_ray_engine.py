"""The Ray Data engine against the local engine, on a private loopback-only local Ray.

One Ray session (2 CPUs) is shared by the module; RAM_GROUNDED_ZOO=tiny in the driver and
in the workers. The reference is the local engine's store on the same folder (good and
broken images); per-stage timings are the only thing allowed to differ.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ram_grounded.engine.local import run_local
from ram_grounded.engine.ray import KILL_ENV, import_ray, pending_chunks, require_ray, run_ray
from ram_grounded.engine.ray_env import RAY_LOOPBACK_VARS, loopback_environment
from ram_grounded.errors import ConfigError
from ram_grounded.export import export_store
from ram_grounded.io.sources import iter_sources
from ram_grounded.pipeline_yaml import load_yaml
from ram_grounded.store import RecordStore

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BATCH = 2
# a real built-in model stage that runs with the tiny zoo; short generations keep it fast
PIPELINE_YAML = """\
name: ray_engine_test
stages:
  - stage: git_caption
    params: {max_new_tokens: 4, device: cpu}
"""
WORKER_ENV = {"RAM_GROUNDED_ZOO": "tiny", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
LOOPBACK = "127.0.0.1"

# Ray reads some of these once, when it is first imported: set them before anything imports it
os.environ.update(RAY_LOOPBACK_VARS)


@pytest.fixture(scope="module")
def ray_session():
    """A private 2-CPU Ray on 127.0.0.1 with the loopback environment (no outside probes).

    Module-scoped so that its environment (tiny zoo, proxy settings) is undone before
    other test modules run."""
    env = {**loopback_environment(), "RAM_GROUNDED_ZOO": "tiny"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    ray = import_ray(local=True)
    temp_dir = tempfile.mkdtemp(prefix="rg_ray_")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024**2,
             _temp_dir=temp_dir, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": WORKER_ENV})
    try:
        assert [n["NodeManagerAddress"] for n in ray.nodes()] == [LOOPBACK]
        yield ray
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[str]:
    """Four good photos and three broken files: 7 sources, 4 chunks of 2 (the last one partial)."""
    folder = tmp_path_factory.mktemp("images")
    photos = sorted(ASSETS.glob("*.jpg"))
    assert len(photos) >= 4, f"demo photos missing in {ASSETS}"
    for photo in photos[:4]:
        shutil.copy(photo, folder / photo.name)
    (folder / "broken.jpg").write_bytes(b"this is not an image")
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(photos[0].read_bytes()[:400])
    found = list(iter_sources([str(folder)]))
    assert len(found) == 7
    return found


def _pipeline():
    return load_yaml(PIPELINE_YAML)


@pytest.fixture(scope="module")
def local_store(sources, tmp_path_factory, ray_session) -> RecordStore:
    """The reference: the local engine's store, finalized and exported to every format."""
    pipe = _pipeline()
    store = RecordStore.create_or_resume(tmp_path_factory.mktemp("local"), pipe.to_dict())
    for _ in run_local(pipe, sources, store, batch_size=BATCH):
        pass
    store.finalize()
    export_store(store, ["all"], images=False)
    return store


def _run_ray(pipe, sources, out: Path, num_actors: int = 2):
    store = RecordStore.create_or_resume(out, pipe.to_dict())
    # 2 CPUs: the actors share one, the decoding task gets the other
    events = [
        (e.done, e.resumed, e.processed, e.errors)
        for e in run_ray(pipe, sources, store, batch_size=BATCH, num_actors=num_actors,
                         cpus_per_actor=1 / num_actors, decode_cpus=1.0)
    ]
    store.finalize()
    export_store(store, ["all"], images=False)
    return store, events


def _normalized(path: Path):
    """File contents with the per-stage timings (wall-clock, never reproducible) taken out."""
    if path.suffix == ".json":
        return _drop_timings(json.loads(path.read_text(encoding="utf-8")))
    if path.suffix == ".jsonl":
        return [_drop_timings(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]
    return path.read_bytes()


def _drop_timings(obj):
    if isinstance(obj, dict):
        return {k: _drop_timings(v) for k, v in obj.items() if k != "timings"}
    if isinstance(obj, list):
        return [_drop_timings(v) for v in obj]
    return obj


def _assert_same_outputs(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    assert Path("records.jsonl") in files_a and Path("coco/annotations.json") in files_a
    for rel in files_a:
        if rel.name == "run.json":
            continue  # compared below: same fingerprint
        assert _normalized(a / rel) == _normalized(b / rel), f"{rel} differs"
    assert json.loads((a / "run.json").read_text())["fingerprint"] == json.loads((b / "run.json").read_text())["fingerprint"]


def _sources_in(store: RecordStore) -> list[str]:
    return [d["source"] for d in store.iter_dicts()]


def test_ray_output_is_identical_to_local(ray_session, sources, local_store, tmp_path):
    store, events = _run_ray(_pipeline(), sources, tmp_path / "ray")
    _assert_same_outputs(local_store.directory, store.directory)
    assert _sources_in(store) == sources
    # one progress event before the start, then one per chunk; 3 broken images are error records
    assert [e[0] for e in events] == [0, 2, 4, 6, 7]
    assert events[-1][3] == 3 == sum(1 for d in store.iter_dicts() if d["error"])
    assert all(d["caption"] for d in store.iter_dicts() if not d["error"])


def test_killed_actor_is_replaced_and_nothing_is_lost_or_doubled(ray_session, sources, local_store, tmp_path,
                                                                 monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ENV, str(marker))
    store, events = _run_ray(_pipeline(), sources, tmp_path / "ray")
    assert marker.exists(), "the test hook never killed an actor"
    assert _sources_in(store) == sources  # every record exactly once, in order
    assert events[-1][2] == len(sources)
    _assert_same_outputs(local_store.directory, store.directory)


def test_resume_sends_only_unfinished_chunks(ray_session, sources, local_store, tmp_path, caplog):
    out = tmp_path / "resumed"
    shutil.copytree(local_store.directory, out)
    lines = (out / "records.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "records.jsonl").write_text("".join(lines[:3]), encoding="utf-8")  # chunk 0 + half of chunk 1
    keys = sources
    assert pending_chunks(keys, set(keys[:3]), BATCH) == [2, 4, 6]
    with caplog.at_level(logging.INFO, logger="ram_grounded.engine.ray"):
        # one actor with 1 CPU, decoding tasks with 1 CPU: equal resources, which Ray Data
        # would fuse into one operator (decoding inside the actor) unless the engine stops it
        store, events = _run_ray(_pipeline(), sources, out, num_actors=1)
    stats = "\n".join(r.getMessage() for r in caplog.records if "ray engine" in r.getMessage())
    assert "Map(_decode_chunk)" in stats and "MapBatches(PipelineActor)" in stats
    assert "Map(_decode_chunk)->MapBatches" not in stats, "decoding was fused into the actors"
    assert events[0][:3] == (3, 3, 0)
    assert events[-1][2] == len(sources) - 3  # only the missing records were stored
    assert _sources_in(store) == sources
    _assert_same_outputs(local_store.directory, store.directory)


def test_engine_starts_its_local_ray_on_loopback_only():
    """What ``--engine ray`` without --address does, in a fresh process (Ray not yet imported)."""
    code = (
        "from ram_grounded.engine.ray import import_ray\n"
        "from ram_grounded.engine.ray_env import start_local_ray\n"
        "ray = import_ray(local=True)\n"
        "start_local_ray(num_cpus=1, object_store_memory=128 * 1024**2)\n"
        "print(ray.nodes()[0]['NodeManagerAddress'], ray.get_runtime_context().gcs_address)\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in RAY_LOOPBACK_VARS}  # the engine must set them
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    node, gcs = done.stdout.split()[-2:]
    assert node == LOOPBACK and gcs.startswith(LOOPBACK + ":")


def test_without_ray_the_error_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    for check in (import_ray, require_ray):
        with pytest.raises(ConfigError) as info:
            check()
        assert "ram-grounded[ray]" in info.value.hint
    pipe = _pipeline()
    store = RecordStore.create_or_resume(tmp_path / "out", pipe.to_dict())
    with pytest.raises(ConfigError):
        next(run_ray(pipe, [str(ASSETS / "rocket.jpg")], store))


# ------------------------------------------------------------------ the command line
def _cli(args):
    from typer.testing import CliRunner

    from ram_grounded.cli import app

    return CliRunner().invoke(app, args)


def test_annotate_engine_ray_matches_local(ray_session, sources, local_store, tmp_path):
    pipeline_file = tmp_path / "pipeline.yaml"
    pipeline_file.write_text(PIPELINE_YAML, encoding="utf-8")
    out = tmp_path / "cli"
    folder = str(Path(sources[0]).parent)
    result = _cli(["annotate", folder, "--out", str(out), "--pipeline", str(pipeline_file), "--format", "all",
                   "--no-images", "--batch-size", str(BATCH), "--engine", "ray", "--num-actors", "1"])
    assert result.exit_code == 1, result.output  # 1: some images failed (the broken ones)
    _assert_same_outputs(local_store.directory, out)


def test_annotate_engine_ray_without_ray_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "never"
    result = _cli(["annotate", str(ASSETS / "rocket.jpg"), "--out", str(out), "--engine", "ray"])
    assert result.exit_code == 2
    assert "pip install 'ram-grounded[ray]'" in result.output
    assert not out.exists()  # nothing written before the check
