"""Model zoo: checksums, truncation, unsafe pickles, offline messages, tiny mode."""

from __future__ import annotations

import hashlib
import logging

import pytest
import torch

from ram_grounded import zoo
from ram_grounded.errors import ChecksumError, ConfigError, MissingWeightsError, WeightsError
from ram_grounded.zoo import ModelCard


def _card(**kw) -> ModelCard:
    base = dict(name="test-model", arch="test", loader="tests.test_zoo:_loader", tiny="tests.test_zoo:_tiny",
                license="MIT")
    base.update(kw)
    return ModelCard(**base)


def _tiny(card, seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(2, 2)


def _loader(card, location, device):
    return ("loaded", str(location))


@pytest.fixture
def url_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    return tmp_path / "checkpoints"


def test_url_file_is_verified_by_size_and_sha256(url_cache):
    data = b"weights" * 100
    (url_cache / "w.pth").write_bytes(data)
    good = _card(url="https://example.invalid/w.pth", sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    assert zoo._resolve_url(good, offline=True) == url_cache / "w.pth"
    assert (url_cache / "w.pth.sha256").exists()  # verified once, remembered

    with pytest.raises(ChecksumError, match="truncated"):
        zoo._resolve_url(_card(url=good.url, sha256=good.sha256, size=len(data) + 1), offline=True)
    with pytest.raises(ChecksumError, match="sha256") as err:
        zoo._resolve_url(_card(url=good.url, sha256="0" * 64, size=len(data)), offline=True)
    assert "download again" in str(err.value)


def test_offline_missing_file_says_where_to_put_it(url_cache):
    card = _card(url="https://example.invalid/missing.pth", sha256="0" * 64)
    with pytest.raises(MissingWeightsError) as err:
        zoo._resolve_url(card, offline=True)
    assert str(url_cache / "missing.pth") in str(err.value)


def test_offline_missing_hub_file_names_repo_and_file():
    with pytest.raises(MissingWeightsError) as err:
        zoo.resolve_file(zoo.get_card("ram_plus"))
    msg = str(err.value)
    assert "ram_plus_swin_large_14m.pth" in msg and "xinyu1205/recognize-anything-plus-model" in msg


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": Evil()}, path)
    with pytest.raises(WeightsError, match="pickled"):
        zoo.load_state_dict(path)


def test_state_dict_loading_unwraps_and_reads_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.save({"model": {"w": torch.ones(3)}}, tmp_path / "a.pth")
    assert torch.equal(zoo.load_state_dict(tmp_path / "a.pth")["w"], torch.ones(3))
    save_file({"w": torch.arange(3.0)}, str(tmp_path / "b.safetensors"))
    assert torch.equal(zoo.load_state_dict(tmp_path / "b.safetensors")["w"], torch.arange(3.0))
    (tmp_path / "c.pth").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        zoo.load_state_dict(tmp_path / "c.pth")


def test_tiny_mode_is_seeded_cached_and_warns(monkeypatch, caplog):
    card = _card()
    zoo.cards()  # built-in cards first, so ours is removed again by monkeypatch afterwards
    monkeypatch.setitem(zoo._CARDS, card.name, card)
    monkeypatch.setenv(zoo.TINY_ENV, "tiny")
    monkeypatch.setattr(zoo, "_warned", False)
    with caplog.at_level(logging.WARNING):
        a = zoo.load_model(card.name)
        b = zoo.load_model(card.name)
    assert a is b  # built once, cached
    assert sum("TINY RANDOM-WEIGHT" in r.message for r in caplog.records) == 1
    torch.manual_seed(0)
    assert torch.equal(a.weight, torch.nn.Linear(2, 2).weight)


def test_local_path_needs_known_kind(tmp_path):
    f = tmp_path / "x.pth"
    f.write_bytes(b"")
    with pytest.raises(ConfigError, match="which kind"):
        zoo.load_model(f)
    with pytest.raises(ConfigError, match="neither a zoo name"):
        zoo.load_model(tmp_path / "nope.pth", arch="ram")


def test_every_card_is_complete():
    for card in zoo.cards().values():
        assert card.license and card.loader and card.tiny and (card.repo or card.url)
        if card.filename or card.url:
            assert card.arch == "tokenizer" or (card.sha256 and len(card.sha256) == 64 and card.size)
