"""Named checkpoints: where each file comes from, its checksum, and which loader builds it.

``load_model(name_or_path)`` resolves a zoo name (downloading through huggingface_hub into
its cache, or from the publisher's URL into the torch hub cache, and checking the sha256)
or takes a local file or directory, then calls the card's loader. With
``RAM_GROUNDED_ZOO=tiny`` every name resolves to a seeded tiny random-weight model of the
same structure instead (offline, seconds; outputs are meaningless and we say so, loudly).
The cards themselves are in :mod:`ram_grounded.zoo_cards`.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ChecksumError, ConfigError, MissingWeightsError, WeightsError

logger = logging.getLogger(__name__)

TINY_ENV = "RAM_GROUNDED_ZOO"
TINY_WARNING = (
    "RAM_GROUNDED_ZOO=tiny: every model is a TINY RANDOM-WEIGHT stand-in. "
    "Outputs are meaningless; use this only for tests and dry runs."
)


@dataclass(frozen=True)
class ModelCard:
    """One named checkpoint: source, checksum, size, license and how to build it."""

    name: str
    arch: str                      # ram | ram_plus | tag2text | groundingdino | sam | hf-... | tokenizer
    loader: str                    # "module:function", called as loader(card, location, device)
    tiny: str                      # "module:function", called as tiny(card, seed)
    license: str
    description: str = ""
    repo: str | None = None        # hub repo (a single file in it, or the whole transformers repo)
    revision: str | None = None    # pinned commit
    filename: str | None = None    # file inside ``repo``; None = whole repo (from_pretrained)
    url: str | None = None         # publisher URL for files outside the hub
    sha256: str | None = None
    size: int | None = None        # bytes
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        if self.url:
            return self.url
        return f"hf://{self.repo}/{self.filename}" if self.filename else f"hf://{self.repo}"


_CARDS: dict[str, ModelCard] = {}


def register(card: ModelCard) -> ModelCard:
    """Add a card (third-party code may add its own)."""
    _CARDS[card.name] = card
    return card


def cards() -> dict[str, ModelCard]:
    """Every known card by name."""
    from . import zoo_cards  # noqa: F401 - registers the built-in cards on import

    return dict(_CARDS)


def get_card(name: str) -> ModelCard:
    known = cards()
    if name not in known:
        raise ConfigError(f"unknown model {name!r}", hint=f"known models: {', '.join(sorted(known))}; or give a local path")
    return known[name]


def default_card(arch: str) -> ModelCard:
    """The first card of ``arch`` (gives the loader for a local file of that kind)."""
    for card in cards().values():
        if card.arch == arch:
            return card
    raise ConfigError(f"no model of kind {arch!r} in the zoo", hint="check the stage's 'model' parameter")


def tiny_mode() -> bool:
    """True when ``RAM_GROUNDED_ZOO=tiny`` (tests, dry runs)."""
    return os.environ.get(TINY_ENV, "").strip().lower() == "tiny"


_warned = False
_tiny_cache: dict[tuple[str, int], Any] = {}
_tiny_lock = threading.Lock()


def mark_tiny_warned() -> None:
    """The caller (e.g. the CLI) has shown the tiny-zoo warning itself."""
    global _warned
    _warned = True


def warn_tiny_once() -> None:
    global _warned
    if tiny_mode() and not _warned:
        _warned = True
        logger.warning(TINY_WARNING)


# ------------------------------------------------------------------ resolving
def resolve_file(card: ModelCard) -> Path:
    """Local path of a card's file: cached or downloaded, checksum verified."""
    from huggingface_hub import constants

    if card.filename is None and card.url is None:
        raise ConfigError(f"model {card.name!r} is a hub repository, not a file", hint="use load_model")
    if card.url:
        return _resolve_url(card, offline=constants.HF_HUB_OFFLINE)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(hf_hub_download(card.repo, card.filename, revision=card.revision))
    except LocalEntryNotFoundError as exc:
        raise MissingWeightsError(
            f"{card.name}: {card.filename} is not in the Hugging Face cache and cannot be downloaded",
            hint=f"download it elsewhere and pass its path as the model, or run "
                 f"`huggingface-cli download {card.repo} {card.filename} --revision {card.revision}` "
                 f"on a machine with network and copy the cache ({constants.HF_HUB_CACHE})",
        ) from exc
    verify_file(path, card)
    return path


def _url_cache_path(card: ModelCard) -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(card.url).name


def _resolve_url(card: ModelCard, offline: bool) -> Path:
    target = _url_cache_path(card)
    if not target.exists():
        if offline:
            raise MissingWeightsError(
                f"{card.name}: {target.name} is not cached and HF_HUB_OFFLINE is set",
                hint=f"put the file at {target} (from {card.url}) or pass its path as the model",
            )
        import torch.hub

        target.parent.mkdir(parents=True, exist_ok=True)
        logger.warning("downloading %s (%.2f GB) from %s to %s", card.name, (card.size or 0) / 1e9, card.url, target)
        torch.hub.download_url_to_file(card.url, str(target), progress=False)
    verify_file(target, card)
    return target


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, card: ModelCard) -> None:
    """Size then sha256 against the card; a ``.sha256`` marker skips re-hashing a verified file."""
    if card.size is not None and path.stat().st_size != card.size:
        raise ChecksumError(
            f"{card.name}: {path} has {path.stat().st_size} bytes, expected {card.size} (truncated or another file)",
            hint=f"delete it and download again from {card.source}",
        )
    if card.sha256 is None:
        return
    marker = path.with_name(path.name + ".sha256")
    stat = path.stat()
    stamp = f"{card.sha256} {stat.st_size} {stat.st_mtime_ns}"
    if marker.exists() and marker.read_text() == stamp:
        return
    actual = sha256_file(path)
    if actual != card.sha256:
        raise ChecksumError(
            f"{card.name}: sha256 of {path} is {actual}, expected {card.sha256}",
            hint=f"the file is corrupt or not the released one; delete it and download again from {card.source}",
        )
    try:
        marker.write_text(stamp)
    except OSError:  # read-only cache: verify again next time
        pass


# ------------------------------------------------------------------- loading
def _import(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_model(name_or_path: str | Path, device: Any = "cpu", arch: str | None = None, seed: int = 0) -> Any:
    """Build the model named ``name_or_path`` (zoo name or local path) on ``device``.

    ``arch`` picks the loader for a local path (e.g. "ram_plus"); for a zoo name it must match.
    """
    from .devices import resolve_device

    device = resolve_device(device) if isinstance(device, str) else device
    name = str(name_or_path)
    known = cards()
    if tiny_mode():
        warn_tiny_once()
        card = known.get(name) or default_card(arch or _guess_arch(name))
        key = (card.name, seed)
        with _tiny_lock:
            if key not in _tiny_cache:
                _tiny_cache[key] = _import(card.tiny)(card, seed)
        model = _tiny_cache[key]
        return model.to(device) if hasattr(model, "to") else model
    if name in known:
        card = known[name]
        if arch is not None and card.arch != arch:
            raise ConfigError(f"model {name!r} is a {card.arch} model, not {arch}", hint=f"pick a {arch} model")
        location: Any = card.repo if (card.filename is None and card.url is None) else resolve_file(card)
        return _import(card.loader)(card, location, device)
    path = Path(name).expanduser()
    if not path.exists():
        raise ConfigError(f"model {name!r} is neither a zoo name nor an existing path",
                          hint=f"known models: {', '.join(sorted(known))}")
    if arch is None:
        raise ConfigError(f"cannot tell which kind of model {path} is", hint="pass arch=..., e.g. 'ram_plus'")
    card = default_card(arch)
    return _import(card.loader)(card, path, device)


def _guess_arch(name: str) -> str:
    raise ConfigError(f"unknown model {name!r} in tiny mode", hint="use a zoo name from `ram-grounded models`")


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Tensors of a checkpoint via safetensors or ``torch.load(weights_only=True)``, never pickle.

    A ``{'model': ...}`` / ``{'state_dict': ...}`` wrapper is unwrapped.
    """
    import pickle

    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise WeightsError(f"{path} is not a readable safetensors file: {exc}",
                               hint="the file is truncated or corrupt; download it again") from exc
    import zipfile

    try:
        # mmap (zip-format files): a multi-GB file is paged in as load_state_dict copies it,
        # not held twice in memory
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path} contains pickled Python objects that are not plain tensors; refusing to unpickle it",
            hint="use the released checkpoint, or re-save only its state_dict (or as safetensors)",
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint: {exc}",
                           hint="the file is truncated or corrupt; delete it and download again") from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} does not hold a state dict", hint="give the released checkpoint file")
    return obj


def is_cached(card: ModelCard) -> bool:
    """True if the card's file (or repo snapshot) is already on disk."""
    if card.url:
        return _url_cache_path(card).exists()
    from huggingface_hub import try_to_load_from_cache

    filename = card.filename or "config.json"
    hit = try_to_load_from_cache(card.repo, filename, revision=card.revision)
    return isinstance(hit, str)
