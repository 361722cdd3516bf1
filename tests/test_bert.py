"""The med BERT: official key names/shapes, ties, and numerics against independent computations."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import golden_root
from ram_grounded.errors import ConfigError
from ram_grounded.models.bert import BertConfig, BertLMHeadModel, BertModel, tie_tagging_head

CLIP_DIM = 512  # RAM / RAM++ hard-code this encoder width for tag_encoder and tagging_head
PREFIXES = ("tag_encoder.", "text_decoder.", "tagging_head.")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is much faster (and immune to CPU oversubscription)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _folders() -> list[str]:
    root = golden_root() / "ram"
    found = sorted(p.parent.name for p in root.glob("*/config.json")) if root.is_dir() else []
    return sorted(set(found) | {"ram", "ram_plus", "tag2text"})


def _bert_parts(cfg: dict) -> dict[str, torch.nn.Module]:
    """The BERT modules the official constructor builds for this golden config."""
    width = cfg["vision_width"] if cfg["model"] == "tag2text" else CLIP_DIM
    parts: dict[str, torch.nn.Module] = {}
    parts["tagging_head."] = BertModel(BertConfig.from_dict(cfg["q2l_config"], encoder_width=width), tagging=True)
    if cfg["model"] in ("ram", "tag2text"):
        parts["tag_encoder."] = BertModel(BertConfig.from_dict(cfg["med_config"], encoder_width=width))
        parts["text_decoder."] = BertLMHeadModel(BertConfig.from_dict(cfg["med_config"]))
        tie_tagging_head(parts["tag_encoder."], parts["tagging_head."])
    return parts


@pytest.mark.parametrize("name", _folders())
def test_golden_bert_keys_shapes_and_strict_load(name: str) -> None:
    folder = golden_root() / "ram" / name
    if not (folder / "config.json").is_file():
        pytest.fail(f"golden folder {folder} is missing (set RAM_GROUNDED_GOLDEN)")
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    ref = cfg["state_dict_keys"]
    state = torch.load(folder / "checkpoint.pth", map_location="cpu", weights_only=True)["model"]
    parts = _bert_parts(cfg)
    for prefix in PREFIXES:
        expected = {k[len(prefix):]: v for k, v in ref.items() if k.startswith(prefix)}
        if prefix not in parts:
            assert not expected, f"{prefix} keys in the official model but not built"
            continue
        module = parts[prefix]
        assert {k: list(v.shape) for k, v in module.state_dict().items()} == expected, prefix
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(sub, strict=True)
        for k, v in module.state_dict().items():
            assert torch.equal(v, sub[k]), prefix + k
    assert parts["tagging_head."].encoder.layer[0].crossattention.self.num_heads == cfg["q2l_config"]["num_attention_heads"]


def _tiny(vocab: int = 40, hidden: int = 16, heads: int = 2, layers: int = 2, width: int = 16) -> BertConfig:
    return BertConfig.from_dict(dict(vocab_size=vocab, hidden_size=hidden, num_attention_heads=heads,
                                     num_hidden_layers=layers, intermediate_size=2 * hidden,
                                     max_position_embeddings=32, encoder_width=width))


def _randomize(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.1))


def test_ties_share_parameters_but_not_head_counts() -> None:
    enc = BertModel(_tiny(layers=3, heads=2, width=24))
    head = BertModel(_tiny(layers=2, heads=4, width=24), tagging=True)
    tie_tagging_head(enc, head)
    for i in range(2):
        for name, p in head.encoder.layer[i].named_parameters():
            assert p is dict(enc.encoder.layer[i].named_parameters())[name], name
    assert enc.encoder.layer[0].crossattention.self.num_heads == 2
    assert head.encoder.layer[0].crossattention.self.num_heads == 4
    assert not hasattr(head, "embeddings") and not hasattr(head.encoder.layer[0], "attention")
    dec = BertLMHeadModel(_tiny())
    assert dec.cls.predictions.decoder.weight is dec.bert.embeddings.word_embeddings.weight
    assert dec.cls.predictions.decoder.bias is dec.cls.predictions.bias
    keys = dec.state_dict().keys()
    assert "cls.predictions.decoder.weight" in keys and "cls.predictions.decoder.bias" in keys
    assert "bert.embeddings.position_ids" in keys


def test_decoder_matches_transformers_bert_lm_head() -> None:
    """Our causal decoder == transformers' BertLMHeadModel (zero token-type embedding) on the same weights."""
    from transformers import BertConfig as HFConfig
    from transformers import BertLMHeadModel as HFLMHead

    cfg = _tiny()
    ours = BertLMHeadModel(cfg).eval()
    _randomize(ours, 0)
    hf = HFLMHead(HFConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                           num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
                           max_position_embeddings=cfg.max_position_embeddings, is_decoder=True,
                           add_cross_attention=True, attn_implementation="eager")).eval()
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    assert set(missing) <= {"bert.embeddings.token_type_embeddings.weight"}, missing
    assert set(unexpected) <= {"bert.embeddings.position_ids"}, unexpected
    with torch.no_grad():
        hf.bert.embeddings.token_type_embeddings.weight.zero_()
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(5, cfg.vocab_size, (3, 7), generator=g)
        enc = torch.randn(3, 5, cfg.encoder_width, generator=g)
        ref = hf(input_ids=ids, encoder_hidden_states=enc).logits
        got = ours(ids, encoder_hidden_states=enc).logits
    assert (ref - got).abs().max().item() < 1e-5


def test_kv_cache_decoding_equals_full_forward() -> None:
    dec = BertLMHeadModel(_tiny()).eval()
    _randomize(dec, 2)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 40, (2, 9), generator=g)
    enc = torch.randn(2, 4, 16, generator=g)
    with torch.no_grad():
        full = dec(ids, encoder_hidden_states=enc).logits
        out = dec(ids[:, :4], encoder_hidden_states=enc, use_cache=True)
        steps = [out.logits]
        for t in range(4, 9):
            out = dec(ids[:, t : t + 1], encoder_hidden_states=enc, past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-5


def _ln(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], ln.weight, ln.bias, ln.eps)


def test_tagging_mode_equals_manual_cross_attention_ffn() -> None:
    cfg = _tiny(heads=4, width=24)
    head = BertModel(cfg, tagging=True).eval()
    _randomize(head, 4)
    g = torch.Generator().manual_seed(5)
    queries = torch.randn(2, 6, 16, generator=g)
    image = torch.randn(2, 5, 24, generator=g)
    with torch.no_grad():
        got = head(encoder_embeds=queries, encoder_hidden_states=image, mode="tagging").last_hidden_state
        x = queries
        for layer in head.encoder.layer:
            att = layer.crossattention
            q, k, v = (lin(src).view(2, -1, 4, 4).transpose(1, 2)
                       for lin, src in ((att.self.query, x), (att.self.key, image), (att.self.value, image)))
            w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
            ctx = (w @ v).transpose(1, 2).reshape(2, -1, 16)
            x = _ln(att.output.dense(ctx) + x, att.output.LayerNorm)
            h = F.gelu(layer.intermediate.dense(x))
            x = _ln(layer.output.dense(h) + x, layer.output.LayerNorm)
    assert (got - x).abs().max().item() < 1e-5


def test_padding_mask_hides_padded_tokens_of_the_tag_encoder() -> None:
    enc = BertModel(_tiny()).eval()
    _randomize(enc, 6)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(5, 40, (1, 6), generator=g)
    image = torch.randn(1, 3, 16, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    other = ids.clone()
    other[0, 4:] = torch.tensor([7, 9])  # padded positions differ; real positions must not notice
    with torch.no_grad():
        a = enc(ids, attention_mask=mask, encoder_hidden_states=image).last_hidden_state
        b = enc(other, attention_mask=mask, encoder_hidden_states=image).last_hidden_state
    assert (a[:, :4] - b[:, :4]).abs().max().item() < 1e-6


def test_config_errors() -> None:
    with pytest.raises(ConfigError):
        BertConfig.from_dict({"hidden_size": 30, "num_attention_heads": 4})
    head = BertModel(_tiny(), tagging=True)
    with pytest.raises(ConfigError):
        head(encoder_embeds=torch.zeros(1, 2, 16), encoder_hidden_states=torch.zeros(1, 2, 16), mode="multimodal")
    with pytest.raises(ConfigError):
        tie_tagging_head(BertModel(_tiny(layers=1)), BertModel(_tiny(layers=2), tagging=True))
