"""iter_sources: folders, globs, list files, single paths/URLs, and their errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ram_grounded.errors import ConfigError
from ram_grounded.io import iter_sources, load_image


def _tree(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # iter_sources never opens files


IMAGES = ["b.png", "b/c.JPG", "b/d/e.TIFF", "a.Jpeg", "z.webp", "m.bmp", "g.GIF", "t.tif"]
OTHERS = ["notes.txt", "b/meta.json", ".hidden.jpg", ".cache/x.png", "b/d/._e.jpg", "noext"]


def test_folder_is_recursive_filtered_and_sorted(tmp_path: Path) -> None:
    _tree(tmp_path, IMAGES + OTHERS)
    got = iter_sources(tmp_path)
    # Independent expectation: sorted by relative posix path ("." sorts before "/").
    expected = [str(tmp_path / n) for n in
                ["a.Jpeg", "b.png", "b/c.JPG", "b/d/e.TIFF", "g.GIF", "m.bmp", "t.tif", "z.webp"]]
    assert got == expected
    assert iter_sources(str(tmp_path)) == expected
    assert iter_sources(tmp_path) == got  # deterministic


def test_glob_patterns(tmp_path: Path) -> None:
    _tree(tmp_path, IMAGES + OTHERS)
    assert iter_sources(str(tmp_path / "*.png")) == [str(tmp_path / "b.png")]
    deep = iter_sources(str(tmp_path / "**" / "*.[jJ]*"))
    assert deep == sorted(deep) and str(tmp_path / "b" / "c.JPG") in deep
    assert all(os.path.isfile(p) for p in deep)
    with pytest.raises(ConfigError, match="matches no files") as info:
        iter_sources(str(tmp_path / "*.heic"))
    assert info.value.hint


def test_list_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    absolute = tmp_path / "abs.png"
    (lists / "sources.txt").write_text(
        "\ufeff# a comment\n\n  rel/one.jpg  \n../two.png\n"
        f"{absolute}\nhttps://example.org/x.jpg\n   # indented comment\nhttp://example.org/y.png\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path.parent)  # relative entries must not depend on the cwd
    assert iter_sources(lists / "sources.txt") == [
        str(lists / "rel" / "one.jpg"), str(tmp_path / "two.png"), str(absolute),
        "https://example.org/x.jpg", "http://example.org/y.png",
    ]


def test_list_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.lst"
    bad.write_text("a.jpg\nftp://example.org/b.jpg\n")
    with pytest.raises(ConfigError, match=r"bad\.lst:2: the URL scheme 'ftp'"):
        iter_sources(bad)
    empty = tmp_path / "empty.list"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="names no sources"):
        iter_sources(empty)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ConfigError, match="cannot read"):
        iter_sources(binary)


def test_single_sources_and_sequences(tmp_path: Path) -> None:
    _tree(tmp_path, ["dir/a.png", "dir/b.jpg", "one.jpg", "odd.dat"])
    assert iter_sources(str(tmp_path / "one.jpg")) == [str(tmp_path / "one.jpg")]
    assert iter_sources(tmp_path / "odd.dat") == [str(tmp_path / "odd.dat")]  # named: kept
    assert iter_sources(" https://example.org/a.jpg ") == ["https://example.org/a.jpg"]
    mixed = iter_sources([tmp_path / "one.jpg", str(tmp_path / "dir"), "http://example.org/b"])
    assert mixed == [str(tmp_path / "one.jpg"), str(tmp_path / "dir" / "a.png"),
                     str(tmp_path / "dir" / "b.jpg"), "http://example.org/b"]
    assert iter_sources([]) == []


@pytest.mark.parametrize("spec,words", [
    ("missing/photo.jpg", "no such file or folder"),
    ("file:///etc/passwd", "scheme 'file'"),
    ("ftp://example.org/a.jpg", "scheme 'ftp'"),
])
def test_bad_specs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, words: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=words) as info:
        iter_sources(spec)
    assert info.value.hint


def test_empty_folder(tmp_path: Path) -> None:
    _tree(tmp_path, ["readme.md", ".hidden/a.png"])
    with pytest.raises(ConfigError, match="holds no images") as info:
        iter_sources(tmp_path)
    assert ".png" in (info.value.hint or "")


def test_folder_sources_load(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    for name in ("x.PNG", "sub/y.bmp", "sub/z.tiff"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / name)
    sources = iter_sources(tmp_path)
    assert len(sources) == 3
    for source in sources:
        np.testing.assert_array_equal(load_image(source), pixels)
