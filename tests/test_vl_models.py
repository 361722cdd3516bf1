"""models/hf.py: the real loader path (from_pretrained) on saved tiny models, offline errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ram_grounded import zoo
from ram_grounded.errors import MissingWeightsError
from ram_grounded.models.hf import build_tiny, load_hub


@pytest.mark.parametrize("card_name", ["blip-itm-base-coco", "git-base-coco", "clip-vit-base-patch16"])
def test_load_hub_reads_a_saved_folder_and_gives_the_same_outputs(card_name: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAM_GROUNDED_ZOO", raising=False)
    card = zoo.get_card(card_name)
    tiny = build_tiny(card, seed=3)
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    loaded = zoo.load_model(str(tmp_path), device="cpu", arch=card.arch)
    assert type(loaded.model) is type(tiny.model) and not loaded.model.training and not loaded.tiny
    image = np.random.default_rng(0).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    kwargs = {"images": [image], "return_tensors": "pt"}
    if card.arch != "hf-git":
        kwargs.update(text=["a photo of a cat"], padding=True)
    inputs_a = tiny.processor(**kwargs)
    inputs_b = loaded.processor(**kwargs)
    for key in inputs_a:
        torch.testing.assert_close(inputs_a[key], inputs_b[key])
    if card.arch == "hf-git":
        ids = torch.tensor([[tiny.tokenizer.cls_token_id]])
        inputs_a, inputs_b = dict(inputs_a, input_ids=ids), dict(inputs_b, input_ids=ids)
    with torch.inference_mode():
        out_a, out_b = tiny.model(**inputs_a), loaded.model(**inputs_b)
    key = {"hf-blip-itm": "itm_score", "hf-git": "logits", "hf-clip": "logits_per_image"}[card.arch]
    torch.testing.assert_close(out_a[key], out_b[key], atol=1e-5, rtol=0)


def test_missing_hub_weights_raise_a_weights_error_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    card = zoo.ModelCard("not-cached", "hf-clip", "ram_grounded.models.hf:load_hub",
                         "ram_grounded.models.hf:build_tiny", "MIT", repo="ram-grounded-tests/does-not-exist")
    with pytest.raises(MissingWeightsError) as info:
        load_hub(card, card.repo, "cpu")
    assert "does-not-exist" in str(info.value) and info.value.hint
