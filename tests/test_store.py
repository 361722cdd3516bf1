"""RecordStore: append + read back, fingerprint refusal, overwrite, torn tail, errors.jsonl."""

from __future__ import annotations

import json

import numpy as np
import pytest
import supervision as sv

from ram_grounded.errors import ConfigError
from ram_grounded.record import Record, Tag
from ram_grounded.store import RecordStore, pipeline_fingerprint

PIPE = {"name": "p", "stages": [{"stage": "a", "params": {"device": "auto", "threshold": 0.5}}]}


def _record(i: int, error: str | None = None) -> Record:
    mask = np.zeros((1, 6, 8), bool)
    mask[0, 1:4, i % 5:(i % 5) + 3] = True
    det = sv.Detections(xyxy=np.array([[i, 1, i + 3, 4]], np.float32), confidence=np.array([0.5], np.float32),
                        class_id=np.array([0]), mask=mask, data={"class_name": np.array(["cat"])})
    if error:
        return Record(source=f"img{i}.png", error=error)
    return Record(source=f"img{i}.png", tags=[Tag("cat", 0.9)], prompt=["cat"], detections=det,
                  meta={"image_size": [6, 8], "timings": {"a": 0.01}})


def test_append_and_read_back(tmp_path):
    store = RecordStore.create_or_resume(tmp_path, PIPE)
    store.append([_record(0), _record(1, "broken")])
    store.append([_record(2)])
    back = list(store.iter_records())
    assert [r.source for r in back] == ["img0.png", "img1.png", "img2.png"]
    np.testing.assert_array_equal(back[2].detections.mask, _record(2).detections.mask)
    assert store.done_sources() == {"img0.png", "img1.png", "img2.png"}
    assert [json.loads(line) for line in store.errors_path.read_text().splitlines()] == \
        [{"source": "img1.png", "error": "broken"}]
    manifest = json.loads(store.manifest_path.read_text())
    assert manifest["pipeline"] == PIPE and manifest["fingerprint"] == pipeline_fingerprint(PIPE)


def test_resume_keeps_records_and_cuts_a_torn_tail(tmp_path):
    store = RecordStore.create_or_resume(tmp_path, PIPE)
    store.append([_record(0), _record(1)])
    good = store.records_path.read_bytes()
    with store.records_path.open("ab") as fh:  # what kill -9 in the middle of a write leaves
        fh.write(b'{"source": "img2.png", "tags": [{"na')
    assert [d["source"] for d in RecordStore(tmp_path).iter_dicts()] == ["img0.png", "img1.png"]
    again = RecordStore.create_or_resume(tmp_path, PIPE)
    assert again.records_path.read_bytes() == good
    again.append([_record(2)])
    assert len(again) == 3 and json.loads(again.records_path.read_text().splitlines()[-1])["source"] == "img2.png"


def test_a_corrupt_complete_line_is_dropped_with_what_follows(tmp_path):
    store = RecordStore.create_or_resume(tmp_path, PIPE)
    store.append([_record(0)])
    with store.records_path.open("ab") as fh:
        fh.write(b"\x00\x00garbage\n")
    RecordStore.create_or_resume(tmp_path, PIPE)
    assert store.done_sources() == {"img0.png"}


def test_changed_settings_are_refused_unless_overwrite(tmp_path):
    store = RecordStore.create_or_resume(tmp_path, PIPE)
    store.append([_record(0)])
    changed = {"name": "p", "stages": [{"stage": "a", "params": {"device": "auto", "threshold": 0.6}}]}
    with pytest.raises(ConfigError, match="different pipeline settings") as info:
        RecordStore.create_or_resume(tmp_path, changed)
    assert "--overwrite" in str(info.value)
    assert store.done_sources() == {"img0.png"}  # nothing was touched
    fresh = RecordStore.create_or_resume(tmp_path, changed, overwrite=True)
    assert len(fresh) == 0 and not fresh.errors_path.exists()
    assert json.loads(fresh.manifest_path.read_text())["pipeline"] == changed


def test_device_does_not_change_the_fingerprint():
    on_cpu = {"name": "p", "stages": [{"stage": "a", "params": {"device": "cpu", "threshold": 0.5}}]}
    assert pipeline_fingerprint(on_cpu) == pipeline_fingerprint(PIPE)
    other = {"name": "p", "stages": [{"stage": "b", "params": {"device": "cpu", "threshold": 0.5}}]}
    assert pipeline_fingerprint(other) != pipeline_fingerprint(PIPE)


def test_foreign_records_file_is_not_overwritten(tmp_path):
    (tmp_path / "records.jsonl").write_text('{"mine": 1}\n')
    with pytest.raises(ConfigError, match="run.json"):
        RecordStore.create_or_resume(tmp_path, PIPE)
    assert (tmp_path / "records.jsonl").read_text() == '{"mine": 1}\n'


def test_finalize_rewrites_errors_from_the_records(tmp_path):
    store = RecordStore.create_or_resume(tmp_path, PIPE)
    store.append([_record(0, "bad one"), _record(1)])
    store.errors_path.write_text("stale\nstale\n")
    assert store.finalize() == 1
    assert store.errors_path.read_text() == json.dumps({"source": "img0.png", "error": "bad one"}) + "\n"


def test_open_needs_an_existing_store(tmp_path):
    with pytest.raises(ConfigError, match="no run store"):
        RecordStore.open(tmp_path)


def test_tail_scan_and_source_fast_path_with_odd_names(tmp_path):
    from ram_grounded.store import _last_good_end

    store = RecordStore.create_or_resume(tmp_path, PIPE)
    odd = ['a "quoted" \\ name.png', "日本/画像.jpg", None]
    store.append([Record(source=s) for s in odd])
    assert store.done_sources() == {s for s in odd if s is not None}
    assert [d["source"] for d in store.iter_dicts()] == odd
    size = store.records_path.stat().st_size
    for block in (1, 7, 1 << 20):  # small blocks: the backwards scan must grow across lines
        assert _last_good_end(store.records_path, size, block=block) == size
    with store.records_path.open("ab") as fh:
        fh.write(b'{"source":"x"')
    assert _last_good_end(store.records_path, store.records_path.stat().st_size, block=5) == size
    only_torn = tmp_path / "torn.jsonl"
    only_torn.write_bytes(b'{"source":"x"')
    assert _last_good_end(only_torn, only_torn.stat().st_size) == 0
