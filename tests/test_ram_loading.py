"""Loading official-format checkpoints: key handling of the official loader, safety, wrong files."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import golden_root
from ram_grounded.errors import WeightsError, WrongCheckpointError
from ram_grounded.models.ram import build_model
from ram_grounded.models.ram_checkpoint import (
    _bias_table_grid,
    identify_checkpoint,
    interpolate_relative_position_bias,
)
from ram_grounded.models.ram_family import golden_config, load_checkpoint_into


def _folder(arch: str) -> Path:
    folder = golden_root() / "ram" / arch
    if not (folder / "checkpoint.pth").is_file():
        pytest.fail(f"golden checkpoint {folder}/checkpoint.pth is missing")
    return folder


def _state(arch: str) -> dict[str, torch.Tensor]:
    return torch.load(_folder(arch) / "checkpoint.pth", map_location="cpu", weights_only=True)["model"]


def _fresh(arch: str) -> torch.nn.Module:
    return build_model(golden_config(_folder(arch))).eval()


def _save(tmp_path: Path, state: dict, name: str = "ckpt.pth") -> Path:
    path = tmp_path / name
    torch.save({"model": state}, path)
    return path


def _assert_same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key], value), key


def test_vision_multi_keys_are_renamed(tmp_path: Path) -> None:
    state = _state("ram")
    renamed = {k.replace("tagging_head", "vision_multi"): v for k, v in state.items()}
    assert any(k.startswith("vision_multi.") for k in renamed)
    model = _fresh("ram")
    load_checkpoint_into(model, _save(tmp_path, renamed))
    _assert_same_weights(model, state)


def test_module_prefix_and_missing_tied_alias(tmp_path: Path) -> None:
    state = _state("tag2text")
    alias = "tag_encoder.encoder.layer.0.crossattention.self.query.weight"
    reduced = {f"module.{k}": v for k, v in state.items() if k != alias}
    model = _fresh("tag2text")
    load_checkpoint_into(model, _save(tmp_path, reduced))
    _assert_same_weights(model, state)


def test_swin_buffers_are_dropped_and_recomputed(tmp_path: Path) -> None:
    state = _state("ram_plus")
    reference = _fresh("ram_plus").state_dict()
    buffers = [k for k in state if "relative_position_index" in k or "attn_mask" in k]
    assert any("attn_mask" in k for k in buffers) and any("relative_position_index" in k for k in buffers)
    # garbage buffers in the file are ignored (the official loader deletes them) ...
    garbage = {k: (torch.zeros_like(v) if k in buffers else v) for k, v in state.items()}
    model = _fresh("ram_plus")
    load_checkpoint_into(model, _save(tmp_path, garbage, "garbage.pth"))
    for key in buffers:
        assert torch.equal(model.state_dict()[key], reference[key]), key
    # ... and a file without them loads strictly too
    model2 = _fresh("ram_plus")
    load_checkpoint_into(model2, _save(tmp_path, {k: v for k, v in state.items() if k not in buffers}, "nobuf.pth"))
    _assert_same_weights(model2, state)


@pytest.mark.parametrize(
    ("model_arch", "file_arch", "named"),
    [("ram", "tag2text", "Tag2Text"), ("ram", "ram_plus", "RAM++"), ("tag2text", "ram", "RAM (Recognize"),
     ("ram_plus", "ram", "RAM (Recognize")],
)
def test_wrong_family_checkpoint_names_its_model(tmp_path: Path, model_arch: str, file_arch: str, named: str) -> None:
    path = _save(tmp_path, _state(file_arch))
    with pytest.raises(WrongCheckpointError) as info:
        load_checkpoint_into(_fresh(model_arch), path)
    assert named in str(info.value)


@pytest.mark.parametrize(
    ("keys", "named"),
    [(["backbone.0.body.layers.0.blocks.0.norm1.weight", "transformer.encoder.layers.0.linear1.weight"],
      "Grounding DINO"),
     (["image_encoder.patch_embed.proj.weight", "mask_decoder.iou_token.weight"], "Segment Anything")],
)
def test_foreign_checkpoint_names_its_model(tmp_path: Path, keys: list[str], named: str) -> None:
    path = _save(tmp_path, {k: torch.zeros(2, 2) for k in keys})
    with pytest.raises(WrongCheckpointError) as info:
        load_checkpoint_into(_fresh("ram"), path)
    assert named in str(info.value)


def test_unrelated_keys_fail_strictly(tmp_path: Path) -> None:
    state = _state("ram")
    state = {k: v for k, v in state.items() if k != "fc.bias"}
    state["something.else"] = torch.zeros(1)
    with pytest.raises(WeightsError) as info:
        load_checkpoint_into(_fresh("ram"), _save(tmp_path, state))
    assert "fc.bias" in str(info.value) and "something.else" in str(info.value)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"model": _state("ram"), "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(WeightsError) as info:
        load_checkpoint_into(_fresh("ram"), path)
    assert not isinstance(info.value, WrongCheckpointError)


def test_identify_checkpoint() -> None:
    assert identify_checkpoint(list(_state("ram"))) == "ram"
    assert identify_checkpoint(list(_state("ram_plus"))) == "ram_plus"
    assert identify_checkpoint(list(_state("tag2text"))) == "tag2text"
    assert identify_checkpoint(["foo.weight"]) is None


def test_bias_table_same_size_is_untouched() -> None:
    table = torch.randn(13 * 13, 3)
    assert interpolate_relative_position_bias(table, 13 * 13) is table


def test_bias_table_interpolation_reproduces_cubic_surfaces() -> None:
    # An interpolating bicubic spline reproduces cubic polynomials exactly: sample one on the
    # official (geometric) source grid and expect its values on the uniform target grid.
    src_size, dst_size = 13, 23
    src, dst = _bias_table_grid(src_size, dst_size)

    def surface(x: np.ndarray, y: np.ndarray, h: int) -> np.ndarray:
        return 0.3 * x**3 - 0.1 * x * y**2 + (h + 1) * y - 2.0

    table = torch.tensor(np.stack([surface(src[None, :], src[:, None], h).reshape(-1) for h in range(2)], -1),
                         dtype=torch.float32)
    out = interpolate_relative_position_bias(table, dst_size**2)
    assert out.shape == (dst_size**2, 2)
    want = np.stack([surface(dst[None, :], dst[:, None], h).reshape(-1) for h in range(2)], -1)
    assert np.abs(out.numpy() - want).max() <= 1e-3 * np.abs(want).max()
