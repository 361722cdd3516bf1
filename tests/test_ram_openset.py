"""Open-set label embeddings (templates / RAM++ LLM descriptions) with a tiny random CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ram_grounded.errors import ConfigError
from ram_grounded.models.openset import (
    ClipTextEncoder,
    article,
    build_openset_label_embedding,
    load_tag_descriptions,
    processed_name,
    template_prompts,
)


@pytest.fixture(scope="module")
def tiny_clip() -> ClipTextEncoder:
    from tokenizers import pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]
    vocab = {t: i for i, t in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=512,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    model = CLIPTextModelWithProjection(config)
    return ClipTextEncoder(model, tokenizer, "cpu", name="tiny-clip-test")


def test_official_prompt_rules() -> None:
    assert article("apple") == "an" and article("Apple") == "a"  # official: case-sensitive vowel test
    assert processed_name("traffic_light/signal.", rm_dot=True) == "traffic light or signal"
    prompts = template_prompts("apple")
    assert len(prompts) == 63
    assert prompts[0] == "There is an apple in the scene."
    assert prompts[2] == "This is a photo of an apple in the scene."
    assert prompts[-1] == "This is a painting of a apple."


def test_tiny_encoder_is_padding_independent(tiny_clip: ClipTextEncoder) -> None:
    alone = tiny_clip(["a cat"])
    padded = tiny_clip(["a cat", "a much longer sentence about a dog"])
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_template_embedding_matches_manual_ensemble(tiny_clip: ClipTextEncoder, tmp_path: Path) -> None:
    cats = ["red square", "Blue_circle"]
    embed, names = build_openset_label_embedding(cats, encoder=tiny_clip, cache_dir=tmp_path)
    assert names == cats and embed.shape == (2, 512)
    for row, cat in zip(embed, cats):
        feats = tiny_clip(template_prompts(cat))
        feats = feats / feats.norm(dim=-1, keepdim=True)
        mean = feats.mean(dim=0)
        assert torch.allclose(row, mean / mean.norm(), atol=1e-6)
    assert torch.allclose(embed.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_llm_descriptions_rows_grouped_per_category(tiny_clip: ClipTextEncoder, tmp_path: Path) -> None:
    des = [{"cat": ["a photo of a cat.", "A small furry pet."]}, {"dog": ["a photo of a dog.", "a loyal animal."]}]
    path = tmp_path / "des.json"
    path.write_text(json.dumps(des), encoding="utf-8")
    embed, names = build_openset_label_embedding(descriptions=load_tag_descriptions(path), encoder=tiny_clip,
                                                 cache_dir=tmp_path)
    assert names == ["cat", "dog"] and embed.shape == (4, 512)
    want = tiny_clip(["a photo of a cat.", "A small furry pet.", "a photo of a dog.", "a loyal animal."])
    assert torch.allclose(embed, want / want.norm(dim=-1, keepdim=True), atol=1e-6)


def test_cache_hit_skips_the_encoder(tiny_clip: ClipTextEncoder, tmp_path: Path) -> None:
    calls = []

    class Counting(ClipTextEncoder):
        def __call__(self, texts):  # type: ignore[override]
            calls.append(len(texts))
            return super().__call__(texts)

    enc = Counting(tiny_clip.model, tiny_clip.tokenizer, "cpu", name="tiny-clip-test")
    first, _ = build_openset_label_embedding(["kite"], encoder=enc, cache_dir=tmp_path)
    n = len(calls)
    second, names = build_openset_label_embedding(["kite"], encoder=enc, cache_dir=tmp_path)
    assert len(calls) == n > 0 and names == ["kite"] and torch.equal(first, second)
    build_openset_label_embedding(["kite", "tree"], encoder=enc, cache_dir=tmp_path)
    assert len(calls) > n  # other content, other key
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_bad_descriptions_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        build_openset_label_embedding(descriptions=[{"a": ["x"]}, {"b": ["y", "z"]}], cache_dir=tmp_path)
    with pytest.raises(ConfigError):
        build_openset_label_embedding(descriptions={"a": ["x"]}, cache_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        build_openset_label_embedding([], cache_dir=tmp_path)
