"""Turn what a user typed (folders, globs, list files, paths, URLs) into a list of sources.

- A folder is scanned recursively for image files (extensions in :data:`IMAGE_EXTENSIONS`,
  any case); hidden files and folders (name starting with ".") are skipped; the order is
  sorted by relative path, so it is the same on every machine.
- A glob pattern (``*``, ``?``, ``[``; ``**`` recurses) gives its matching files, sorted.
- A ``.txt``/``.lst``/``.list`` file lists one path or URL per line; blank lines and lines
  starting with ``#`` are ignored; relative paths are relative to the list file.  Entries
  are not opened here: a missing one becomes an error on its own Record later.
- Anything else is a single path or http(s) URL.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

from ram_grounded.errors import ConfigError
from ram_grounded.io.http import ALLOWED_SCHEMES, describe_url, looks_like_url, url_scheme

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
_GLOB_CHARS = frozenset("*?[")

SourceSpec = Union[str, "os.PathLike[str]"]


def iter_sources(spec: SourceSpec | Sequence[SourceSpec]) -> list[str]:
    """Expand one spec or a sequence of specs into image sources (paths and URLs), in order.

    Raises :class:`ConfigError` for a path that does not exist, a glob or folder with no
    images, an empty list file, or a URL whose scheme is not http(s).
    """
    if isinstance(spec, (str, os.PathLike)):
        return _expand(spec)
    sources: list[str] = []
    for item in spec:
        sources.extend(_expand(item))
    return sources


def _expand(spec: SourceSpec) -> list[str]:
    text = str(os.fspath(spec)).strip()
    if looks_like_url(text):
        _check_scheme(text, where=describe_url(text))
        return [text]
    path = Path(text).expanduser()
    if path.is_dir():
        return _scan_folder(path)
    if path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
        return _read_list(path)
    if path.exists():
        return [text]
    if any(char in text for char in _GLOB_CHARS):
        matches = sorted(m for m in glob.glob(os.path.expanduser(text), recursive=True)
                         if os.path.isfile(m))
        if not matches:
            raise ConfigError(f"{text}: the pattern matches no files",
                              hint="check the pattern; quote it so the shell does not expand it")
        return matches
    raise ConfigError(f"{text}: no such file or folder",
                      hint="check the path (relative paths start from the working directory)")


def _check_scheme(url: str, *, where: str) -> None:
    if url_scheme(url) not in ALLOWED_SCHEMES:
        raise ConfigError(f"{where}: the URL scheme {url_scheme(url)!r} is not allowed",
                          hint="only http:// and https:// URLs can be sources")


def _scan_folder(folder: Path) -> list[str]:
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # prune hidden folders
        found.extend(Path(root, f) for f in files
                     if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise ConfigError(f"{folder}: the folder holds no images",
                          hint="image extensions: " + " ".join(sorted(IMAGE_EXTENSIONS)))
    found.sort(key=lambda p: p.relative_to(folder).as_posix())
    return [str(p) for p in found]


def _read_list(list_file: Path) -> list[str]:
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{list_file}: cannot read the list of sources ({exc})",
                          hint="a list file is UTF-8 text with one path or URL per line") from exc
    sources: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if looks_like_url(line):
            _check_scheme(line, where=f"{list_file}:{number}")
            sources.append(line)
        else:
            entry = os.path.expanduser(line)
            if not os.path.isabs(entry):
                entry = os.path.normpath(os.path.join(list_file.parent, entry))
            sources.append(entry)
    if not sources:
        raise ConfigError(f"{list_file}: the list file names no sources",
                          hint="write one path or URL per line (# starts a comment)")
    return sources
