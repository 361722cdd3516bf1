"""Original Grounding DINO checkpoints converted to transformers reproduce the original outputs.

Reads every set under ``$RAM_GROUNDED_GOLDEN/groundingdino/`` (default ../shared/golden): the
tiny original checkpoint is converted with our key mapping, the model is built from the set's
config.json, and fed the stored pixel tensors and token ids. Sizes, captions and image counts
all come from the set's files.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import GroundingDinoForObjectDetection

from ram_grounded.models.groundingdino import model_from_original
from ram_grounded.models.groundingdino_convert import (
    ORIGINAL_CONFIGS,
    _DROP_PATTERNS,
    convert_original_checkpoint,
    map_keys,
)
from ram_grounded.errors import WrongCheckpointError

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("RAM_GROUNDED_GOLDEN", REPO.parent / "shared" / "golden"))
ROOT = GOLDEN / "groundingdino"
LOGIT_TOL = 1e-4
BOX_TOL = 1e-5
# keys_full.json config names -> the original config our loader uses for that release file
FULL_CONFIGS = {"GroundingDINO_SwinT_OGC": "swint_ogc", "GroundingDINO_SwinB": "swinb_cogcoor"}
PREDICT_SETTINGS = ("readme_defaults", "low", "low_remove_combined", "strict")


def _sets() -> list[Path]:
    return sorted(p for p in ROOT.iterdir() if p.is_dir()) if ROOT.is_dir() else []


def test_fixture_root_exists() -> None:
    assert ROOT.is_dir(), f"missing golden fixtures: {ROOT}"
    assert _sets(), f"no fixture set under {ROOT}"


class GoldenSet:
    """One fixture folder, converted once."""

    def __init__(self, folder: Path) -> None:
        for name in ("config.json", "checkpoint.pth", "inputs.safetensors", "expected.safetensors", "expected.json"):
            assert (folder / name).exists(), f"missing fixture file {folder / name}"
        self.folder = folder
        self.config = json.loads((folder / "config.json").read_text())
        self.inputs = load_file(str(folder / "inputs.safetensors"))
        self.expected = load_file(str(folder / "expected.safetensors"))
        self.expected_json = json.loads((folder / "expected.json").read_text())
        self.original_cfg = {
            **self.config["config"],
            "swin_backbone": self.config["swin_backbone"],
            "bert_config": self.config["bert_config"],
        }
        state = torch.load(str(folder / "checkpoint.pth"), map_location="cpu", weights_only=True)
        self.state_dict = state["model"]
        self.model = model_from_original(self.state_dict, self.original_cfg)
        self.n_images = len(self.config["images"])
        self.n_captions = len(self.config["captions"])
        self._pairs: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def run(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids, pixel_mask=pixel_mask)
        return out.logits, out.pred_boxes

    def pair(self, i: int, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs for image i with caption j (memoised: several tests read them)."""
        if (i, j) not in self._pairs:
            self._pairs[(i, j)] = self.run(self.inputs[f"pixel_values_img{i}"][None], *self.caption_inputs(j))
        return self._pairs[(i, j)]

    def caption_inputs(self, j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(self.inputs[f"{name}_cap{j}"][None] for name in ("input_ids", "attention_mask", "token_type_ids"))  # type: ignore[return-value]


_CACHE: dict[Path, GoldenSet] = {}


@pytest.fixture(params=_sets() or [ROOT / "<missing>"], ids=lambda p: p.name)
def gset(request: pytest.FixtureRequest) -> GoldenSet:
    folder: Path = request.param
    assert folder.is_dir(), f"missing golden fixture set {folder}"
    if folder not in _CACHE:
        _CACHE[folder] = GoldenSet(folder)
    return _CACHE[folder]


def assert_logits_match(ours: torch.Tensor, ref: torch.Tensor, what: str) -> float:
    assert ours.shape == ref.shape, what
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(ours), finite), f"{what}: -inf pattern differs"
    assert torch.equal(ours[~finite], ref[~finite]), f"{what}: non-finite values differ"
    diff = (ours[finite] - ref[finite]).abs().max().item()
    assert diff <= LOGIT_TOL, f"{what}: logits differ by {diff}"
    return diff


def assert_boxes_match(ours: torch.Tensor, ref: torch.Tensor, what: str) -> float:
    assert ours.shape == ref.shape, what
    diff = (ours - ref).abs().max().item()
    assert diff <= BOX_TOL, f"{what}: boxes differ by {diff}"
    return diff


def test_config_mapping(gset: GoldenSet) -> None:
    cfg = gset.model.config
    oc, sw = gset.config["config"], gset.config["swin_backbone"]
    assert cfg.d_model == oc["hidden_dim"]
    assert cfg.encoder_layers == oc["enc_layers"] and cfg.decoder_layers == oc["dec_layers"]
    assert cfg.encoder_ffn_dim == oc["dim_feedforward"] and cfg.num_queries == oc["num_queries"]
    assert cfg.backbone_config.embed_dim == sw["embed_dim"]
    assert list(cfg.backbone_config.depths) == list(sw["depths"])
    assert cfg.backbone_config.out_indices == [i + 1 for i in oc["return_interm_indices"]]
    assert cfg.text_config.hidden_size == gset.config["bert_config"]["hidden_size"]


def test_every_key_used(gset: GoldenSet) -> None:
    new, dropped = map_keys(gset.state_dict)
    assert all(any(p.fullmatch(k) for p in _DROP_PATTERNS) for k in dropped)
    assert len(gset.state_dict) == gset.config["num_state_dict_keys"]
    model_keys = set(gset.model.state_dict())
    assert set(new) <= model_keys
    assert {k for k in model_keys - set(new) if ".swin.layernorm." not in k} == set()


def test_single_pairs(gset: GoldenSet) -> None:
    worst = [0.0, 0.0]
    for i in range(gset.n_images):
        for j in range(gset.n_captions):
            logits, boxes = gset.pair(i, j)
            worst[0] = max(worst[0], assert_logits_match(logits[0], gset.expected[f"pred_logits_img{i}_cap{j}"], f"img{i} cap{j}"))
            worst[1] = max(worst[1], assert_boxes_match(boxes[0], gset.expected[f"pred_boxes_img{i}_cap{j}"], f"img{i} cap{j}"))
    print(f"single pairs: max |dlogits| {worst[0]:.2e}, max |dboxes| {worst[1]:.2e}")


def _padded_batch(gset: GoldenSet) -> tuple[torch.Tensor, torch.Tensor]:
    pad_true = gset.inputs["imagebatch_pixel_mask_padded_true"]
    b, h, w = pad_true.shape
    pixels = torch.zeros(b, 3, h, w)
    for i in range(b):
        img = gset.inputs[f"pixel_values_img{i}"]
        pixels[i, :, : img.shape[1], : img.shape[2]] = img
    return pixels, (~pad_true).long()  # transformers' pixel_mask: 1 = real pixel


def test_padded_image_batches(gset: GoldenSet) -> None:
    pixels, pixel_mask = _padded_batch(gset)
    names = [k[: -len("_pred_logits")] for k in gset.expected if re.fullmatch(r"batch_images_cap\d+_pred_logits", k)]
    assert names, "no padded image batches in the fixture"
    for name in names:
        j = int(re.search(r"cap(\d+)", name).group(1))
        text = [t.expand(pixels.shape[0], -1) for t in gset.caption_inputs(j)]
        logits, boxes = gset.run(pixels, *text, pixel_mask=pixel_mask)
        assert_logits_match(logits, gset.expected[f"{name}_pred_logits"], name)
        assert_boxes_match(boxes, gset.expected[f"{name}_pred_boxes"], name)


def test_same_size_batch_and_flip(gset: GoldenSet) -> None:
    img = gset.inputs["pixel_values_img0"]
    text = gset.caption_inputs(0)
    logits, boxes = gset.run(torch.stack([img, img.flip(-1)]), *[t.expand(2, -1) for t in text])
    name = "batch_same_size_img0_img0flip_cap0"
    assert_logits_match(logits, gset.expected[f"{name}_pred_logits"], name)
    assert_boxes_match(boxes, gset.expected[f"{name}_pred_boxes"], name)
    logits, boxes = gset.run(img.flip(-1)[None], *text)
    assert_logits_match(logits[0], gset.expected["single_img0flip_cap0_pred_logits"], "single flip")
    assert_boxes_match(boxes[0], gset.expected["single_img0flip_cap0_pred_boxes"], "single flip")


def test_mixed_caption_batch(gset: GoldenSet) -> None:
    """transformers batches mixed captions correctly, so it matches the original single-caption
    runs; the original batch itself is wrong (head-major mask expansion, see README)."""
    n = gset.inputs["textbatch_input_ids"].shape[0]
    pixels = gset.inputs["pixel_values_img0"][None].expand(n, -1, -1, -1)
    logits, boxes = gset.run(pixels, gset.inputs["textbatch_input_ids"], gset.inputs["textbatch_attention_mask"],
                             gset.inputs["textbatch_token_type_ids"])
    for j in range(n):
        assert_logits_match(logits[j], gset.expected[f"pred_logits_img0_cap{j}"], f"text batch row {j}")
        assert_boxes_match(boxes[j], gset.expected[f"pred_boxes_img0_cap{j}"], f"text batch row {j}")


def predict_selection(logits: torch.Tensor, boxes: torch.Tensor, box_threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes/scores of the original ``util/inference.predict``: queries whose max token sigmoid
    exceeds box_threshold, in query order (text_threshold and remove_combined only shape phrases).
    Returns (boxes cxcywh, scores, per-query max sigmoid)."""
    probs = logits.sigmoid().max(dim=-1).values
    keep = probs > box_threshold
    return boxes[keep], probs[keep], probs


def _match_with_borderline(ours_scores: torch.Tensor, ours_boxes: torch.Tensor, ref_boxes: torch.Tensor,
                           ref_scores: torch.Tensor, thr: float, what: str) -> None:
    """Compare predict() outputs; a query within float tolerance of the threshold may go either way."""
    sure = ours_scores > thr + LOGIT_TOL
    maybe = ours_scores > thr - LOGIT_TOL
    r = 0
    for q in torch.nonzero(maybe).flatten().tolist():
        close = r < len(ref_boxes) and (ours_boxes[q] - ref_boxes[r]).abs().max() <= BOX_TOL
        if sure[q] or close:
            assert close, f"{what}: query {q} selected by us, not by the original (or boxes differ)"
            assert abs(ours_scores[q].item() - ref_scores[r].item()) <= LOGIT_TOL, f"{what}: score differs"
            r += 1
    assert r == len(ref_boxes), f"{what}: original selected {len(ref_boxes)} boxes, matched {r}"


def test_predict_settings(gset: GoldenSet) -> None:
    predict_json: dict[str, Any] = gset.expected_json["predict"]
    checked = 0
    for i in range(gset.n_images):
        for j in range(gset.n_captions):
            logits, boxes = gset.pair(i, j)
            for setting in PREDICT_SETTINGS:
                key = f"img{i}_cap{j}_{setting}"
                assert key in predict_json, f"missing predict fixture {key}"
                thr = float(predict_json[key]["box_threshold"])
                ref_boxes = gset.expected[f"predict_boxes_{key}"]
                ref_scores = gset.expected[f"predict_scores_{key}"]
                assert len(ref_boxes) == predict_json[key]["num"]
                sel_boxes, sel_scores, all_scores = predict_selection(logits[0], boxes[0], thr)
                if len(sel_boxes) == len(ref_boxes):
                    assert_boxes_match(sel_boxes, ref_boxes, key)
                    if len(ref_scores):
                        assert (sel_scores - ref_scores).abs().max().item() <= LOGIT_TOL, key
                else:
                    _match_with_borderline(all_scores, boxes[0], ref_boxes, ref_scores, thr, key)
                checked += 1
    assert checked == gset.n_images * gset.n_captions * len(PREDICT_SETTINGS)


def _full_keys() -> dict[str, Any]:
    sets = _sets()
    assert sets, f"no fixture set under {ROOT}"
    path = sets[0] / "keys_full.json"
    assert path.exists(), f"missing fixture {path}"
    return json.loads(path.read_text())


@pytest.mark.parametrize("config_name", sorted(FULL_CONFIGS))
def test_full_size_keys_covered(config_name: str) -> None:
    """Every key of the real checkpoints maps onto the full-size transformers model (meta tensors)."""
    info = _full_keys()[config_name]
    assert len(info["keys"]) == info["num_keys"]
    # released files add the DDP prefix and two training-only entries; the converter drops them
    fake = {f"module.{k}": torch.empty(shape, device="meta") for k, shape in info["keys"].items()}
    fake["module.label_enc.weight"] = torch.empty(2001, 256, device="meta")
    fake["module.bert.embeddings.position_ids"] = torch.empty(1, 512, device="meta")
    original_cfg = ORIGINAL_CONFIGS[FULL_CONFIGS[config_name]]
    config, new = convert_original_checkpoint({"model": fake}, original_cfg)
    _, dropped = map_keys(fake)
    with torch.device("meta"):
        model = GroundingDinoForObjectDetection(config)
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(new) <= set(target), sorted(set(new) - set(target))[:5]
    missing = {k for k in target if k not in new and ".swin.layernorm." not in k}
    assert not missing, sorted(missing)[:5]
    wrong = {k: (tuple(v.shape), target[k]) for k, v in new.items() if tuple(v.shape) != target[k]}
    assert not wrong, list(wrong.items())[:5]
    # nothing beyond the documented drops is left out
    assert all(any(p.fullmatch(k) for p in _DROP_PATTERNS) for k in dropped)
    assert {"label_enc.weight", "bert.embeddings.position_ids"} <= set(dropped)


def test_leftover_key_fails() -> None:
    with pytest.raises(WrongCheckpointError):
        map_keys({"transformer.something_new.weight": torch.zeros(1)})


def test_load_original_file_and_cache(gset: GoldenSet, tmp_path: Path) -> None:
    """The zoo loader path: a released-style file (``module.`` prefix, training extras) is
    converted once, cached as safetensors, and reloaded from the cache with the same weights."""
    from types import SimpleNamespace

    from ram_grounded.models.groundingdino import load_original

    released = {f"module.{k}": v for k, v in gset.state_dict.items()}
    released["module.label_enc.weight"] = torch.zeros(3, gset.model.config.d_model)
    released["module.bert.embeddings.position_ids"] = torch.arange(8)[None]
    path = tmp_path / "groundingdino_tiny.pth"
    torch.save({"model": released}, path)
    card = SimpleNamespace(name="golden-tiny", revision=None, extra={
        "variant": "swint_ogc", "original_config": gset.original_cfg, "tokenizer": str(gset.folder / gset.config["bert_dir"])})
    bundle = load_original(card, path, "cpu")
    assert (tmp_path / "groundingdino_tiny.pth.hf" / "model.safetensors").exists()
    # the fixture tokenizer gives the original token ids
    for cap in gset.config["captions"]:
        assert bundle.tokenizer(cap["caption"])["input_ids"] == cap["input_ids"]
    with torch.no_grad():
        out = bundle.model(pixel_values=gset.inputs["pixel_values_img0"][None], input_ids=gset.caption_inputs(0)[0])
    assert_logits_match(out.logits[0], gset.expected["pred_logits_img0_cap0"], "load_original")
    assert_boxes_match(out.pred_boxes[0], gset.expected["pred_boxes_img0_cap0"], "load_original")
    cached = load_original(card, path, "cpu").model.state_dict()
    first = bundle.model.state_dict()
    assert set(cached) == set(first)
    assert all(torch.equal(cached[k], first[k]) for k in first)
