"""Tag2Text captions against the official outputs (token ids exact, strings exact).

Every folder under ``<golden>/ram/`` whose config.json says ``"model": "tag2text"`` is checked
(the public set must contain ``tag2text/``); the model comes from the folder's config.json +
checkpoint.pth, the tokenizer from its vocab.txt, the inputs from ``inputs.safetensors``.
"""

from __future__ import annotations

import json

import pytest
import torch

from ram_grounded.models.captioning import captions_from_embeds, generate_captions, user_tags_to_tag_input
from ram_grounded.models.tokenizer import decode_caption

# one golden-folder reader (and one model build per folder) for both golden test files
from test_golden_ram import FAMILY_DIR, fixture  # noqa: E402


def _tag2text_folders() -> list[str]:
    found = []
    if FAMILY_DIR.is_dir():
        for cfg in sorted(FAMILY_DIR.glob("*/config.json")):
            try:
                if json.loads(cfg.read_text(encoding="utf-8")).get("model") == "tag2text":
                    found.append(cfg.parent.name)
            except (OSError, ValueError):
                found.append(cfg.parent.name)  # unreadable: let the test fail loudly
    return sorted(set(found) | {"tag2text"})


FOLDERS = _tag2text_folders()


def _gen_kwargs(fx: dict) -> dict:
    """Generation arguments the official run logged (defaults of ``Tag2Text.generate`` otherwise)."""
    logged = fx["json"].get("generate_kwargs_logged", {})
    return {
        "num_beams": int(logged.get("num_beams", 3)),
        "max_length": int(logged.get("max_length", 50)),
        "min_length": int(logged.get("min_length", 10)),
        "repetition_penalty": float(logged.get("repetition_penalty", 1.0)),
    }


def _user_tag_inputs(fx: dict) -> list[str]:
    return [user_tags_to_tag_input(fx["json"]["images"][n]["user_tags_cli_string"]) for n in fx["order"]]


@pytest.mark.parametrize("name", FOLDERS)
def test_tokenizer_and_prompt_match_official(name: str) -> None:
    fx = fixture(name)
    tok, spec = fx["model"].tokenizer, fx["config"]["tokenizer"]
    assert len(tok) == spec["len_tokenizer"]
    assert (tok.bos_token_id, tok.enc_token_id, tok.pad_token_id, tok.sep_token_id, tok.cls_token_id) == (
        spec["bos_token_id"], spec["enc_token_id"], spec["pad_token_id"], spec["sep_token_id"], spec["cls_token_id"])
    assert tok(fx["model"].prompt).input_ids == spec["prompt_ids"]
    prompt = [spec["bos_token_id"]] + spec["prompt_ids"][1:-1]
    assert prompt == fx["json"]["decoder_prompt_input_ids"]
    # decoding the official ids gives the official strings
    for n in fx["order"]:
        im = fx["json"]["images"][n]
        assert decode_caption(tok, im["caption_ids"], fx["model"].prompt) == im["caption"]
        assert decode_caption(tok, im["caption_ids_user_tags"], fx["model"].prompt) == im["caption_user_tags"]


@pytest.mark.parametrize("name", FOLDERS)
def test_caption_ids_per_image(name: str) -> None:
    fx = fixture(name)
    kw, ok, total = _gen_kwargs(fx), 0, 0
    for i, n in enumerate(fx["order"]):
        im = fx["json"]["images"][n]
        pix = fx["pixels"][i : i + 1]
        auto = generate_captions(fx["model"], pix, None, **kw)
        user = generate_captions(fx["model"], pix, [user_tags_to_tag_input(im["user_tags_cli_string"])], **kw)
        assert auto.tags == [im["tags"]], n
        assert user.tags == [im["user_tags"]], n
        for out, key, text in ((auto, "caption_ids", "caption"), (user, "caption_ids_user_tags", "caption_user_tags")):
            total += 1
            same = torch.equal(out.ids[0], fx["expected"][f"{key}.{n}"]) and out.captions[0] == im[text]
            ok += same
            assert same, (n, key, out.ids[0].tolist(), fx["expected"][f"{key}.{n}"].tolist())
    assert ok == total == 2 * len(fx["order"])


@pytest.mark.parametrize("name", FOLDERS)
def test_caption_ids_batched(name: str) -> None:
    fx = fixture(name)
    kw, batch = _gen_kwargs(fx), fx["json"]["batch"]
    auto = generate_captions(fx["model"], fx["pixels"], None, **kw)
    user = generate_captions(fx["model"], fx["pixels"], _user_tag_inputs(fx), **kw)
    assert torch.equal(auto.ids, fx["expected"]["batch.caption_ids"])
    assert torch.equal(user.ids, fx["expected"]["batch.caption_ids_user_tags"])
    assert auto.captions == batch["captions"]
    assert user.captions == batch["captions_user_tags"]
    assert auto.tags == batch["tags"]


@pytest.mark.parametrize("name", FOLDERS)
def test_text_side_from_official_image_tokens(name: str) -> None:
    """The caption branch alone, fed the official visual-encoder output and tag strings."""
    fx = fixture(name)
    kw = _gen_kwargs(fx)
    embeds = torch.stack([fx["expected"][f"visual_encoder_out.{n}"] for n in fx["order"]])
    tags = [fx["json"]["images"][n]["tags"] for n in fx["order"]]
    out = captions_from_embeds(fx["model"], embeds, tags, **kw)
    assert torch.equal(out.ids, fx["expected"]["batch.caption_ids"])
    out = captions_from_embeds(fx["model"], embeds, _user_tag_inputs(fx), **kw)
    assert torch.equal(out.ids, fx["expected"]["batch.caption_ids_user_tags"])
