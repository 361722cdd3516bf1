"""Released configurations, built on the meta device, have exactly the official keys and shapes."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import golden_root
from ram_grounded.models.ram import build_model
from ram_grounded.models.ram_family import released_config


def _keys_full(arch: str) -> dict:
    path = golden_root() / "ram" / arch / "keys_full.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing (set RAM_GROUNDED_GOLDEN to the public golden set)")
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("arch", ["ram", "ram_plus", "tag2text"])
def test_released_model_has_official_keys(arch: str) -> None:
    ref = _keys_full(arch)
    config = released_config(arch)
    assert config.num_class == ref["num_class"]
    assert config.med_config is None or config.med_config["vocab_size"] == ref["tokenizer_len"]
    with torch.device("meta"):
        model = build_model(config)
    params = dict(model.named_parameters(remove_duplicate=False))
    ours = {}
    for key, tensor in model.state_dict().items():
        ours[key] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch."),
                     "kind": "parameter" if key in params else "buffer"}
    assert ours == ref["keys"]
    assert len(ours) == ref["num_keys"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters_unique"]
    # tied groups: the same Parameter object under every name of a group
    for group in ref["tied_parameter_groups"]:
        assert len({id(params[name]) for name in group}) == 1, group
    groups = {}
    for name, p in params.items():
        groups.setdefault(id(p), []).append(name)
    ours_tied = sorted(sorted(g) for g in groups.values() if len(g) > 1)
    assert ours_tied == sorted(sorted(g) for g in ref["tied_parameter_groups"])
