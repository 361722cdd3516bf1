"""Box-prompted SAM predictors behind one interface.

:class:`SamBoxPredictor.segment_boxes` takes an RGB image and xyxy boxes in original-image
pixels and returns one bool mask per box at the original size plus its predicted IoU. The
image embedding is computed once per call; the boxes go through the prompt encoder and
mask decoder in batches of ``chunk_size`` (one decoder call per chunk, so memory stays
bounded by ``chunk_size x H x W`` however many boxes there are).

Two backends: the official ``segment-anything`` package (:class:`OfficialSamPredictor`)
and transformers' ``SamModel`` / ``SamHQModel`` (:class:`HFSamPredictor`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

logger = logging.getLogger(__name__)


class SamBoxPredictor(nn.Module):
    """Common interface: ``segment_boxes(image, boxes_xyxy) -> (masks, iou_scores)``.

    An ``nn.Module`` so ``.to(device)`` / ``.eval()`` move and switch the wrapped model.
    """

    backend: str = ""

    def __init__(self, model_id: str) -> None:
        super().__init__()
        self.model_id = model_id

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.inference_mode()
    def segment_boxes(
        self,
        image: np.ndarray,
        boxes_xyxy: np.ndarray,
        multimask: bool = False,
        chunk_size: int = 64,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks bool [N,H,W] at the image's size and predicted IoU float32 [N], one per box.

        ``multimask=True`` asks the decoder for its three candidates per box and keeps the
        one with the highest predicted IoU; ``False`` (default) takes the single-mask output.
        """
        image = _check_image(image)
        boxes = _check_boxes(boxes_xyxy)
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}", hint="use e.g. 64")
        height, width = image.shape[:2]
        if len(boxes) == 0:
            return np.zeros((0, height, width), dtype=bool), np.zeros((0,), dtype=np.float32)
        state = self._embed(image)
        masks, scores = [], []
        for start in range(0, len(boxes), chunk_size):
            chunk = torch.as_tensor(boxes[start : start + chunk_size], device=self.device)
            m, s = self._decode(state, chunk, multimask)  # m: bool [n,C,H,W], s: [n,C]
            best = s.argmax(dim=1)
            rows = torch.arange(len(best), device=best.device)
            masks.append(m[rows, best].cpu().numpy())
            scores.append(s[rows, best].float().cpu().numpy())
        return np.concatenate(masks).astype(bool, copy=False), np.concatenate(scores).astype(np.float32)

    def _embed(self, image: np.ndarray) -> Any:
        """Everything the decoder needs about one image (computed once)."""
        raise NotImplementedError

    def _decode(self, state: Any, boxes: torch.Tensor, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (original pixels) -> (bool masks [n,C,H,W] at original size, IoU [n,C])."""
        raise NotImplementedError


class OfficialSamPredictor(SamBoxPredictor):
    """The official ``segment_anything.modeling.Sam``, driven like its ``SamPredictor``."""

    backend = "segment_anything"

    def __init__(self, sam: nn.Module, model_id: str) -> None:
        super().__init__(model_id)
        from segment_anything.utils.transforms import ResizeLongestSide

        self.sam = sam.eval()
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)

    def _embed(self, image: np.ndarray) -> dict[str, Any]:
        resized = self.transform.apply_image(image)  # longest side -> encoder size (PIL bilinear)
        pixels = torch.as_tensor(resized, device=self.device).permute(2, 0, 1)[None].contiguous()
        input_size = tuple(pixels.shape[-2:])
        features = self.sam.image_encoder(self.sam.preprocess(pixels))  # normalise + pad
        return {"features": features, "input_size": input_size, "original_size": image.shape[:2]}

    def _decode(self, state: dict[str, Any], boxes: torch.Tensor, multimask: bool):
        boxes = self.transform.apply_boxes_torch(boxes.float(), state["original_size"])
        sparse, dense = self.sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        low_res, iou = self.sam.mask_decoder(
            image_embeddings=state["features"],
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        logits = self.sam.postprocess_masks(low_res, state["input_size"], state["original_size"])
        return logits > self.sam.mask_threshold, iou


class HFSamPredictor(SamBoxPredictor):
    """transformers' ``SamModel`` or ``SamHQModel`` with its ``SamImageProcessor``."""

    backend = "transformers"

    def __init__(self, model: nn.Module, image_processor: Any, model_id: str, hq_token_only: bool = False) -> None:
        super().__init__(model_id)
        self.model = model.eval()
        self.image_processor = image_processor
        self.is_hq = type(model).__name__ == "SamHQModel"
        # SAM-HQ's own default: the HQ token corrects SAM's mask rather than replacing it
        self.hq_token_only = hq_token_only

    def _embed(self, image: np.ndarray) -> dict[str, Any]:
        inputs = self.image_processor(images=image, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, dtype=next(self.model.parameters()).dtype)
        state: dict[str, Any] = {
            "original_size": tuple(int(v) for v in inputs["original_sizes"][0]),
            "reshaped_size": tuple(int(v) for v in inputs["reshaped_input_sizes"][0]),
        }
        if self.is_hq:
            state["features"], state["intermediate"] = self.model.get_image_embeddings(pixels)
        else:
            state["features"] = self.model.get_image_embeddings(pixels)
        return state

    def _decode(self, state: dict[str, Any], boxes: torch.Tensor, multimask: bool):
        (h, w), (rh, rw) = state["original_size"], state["reshaped_size"]
        # same scaling as the processor's box normalisation: original pixels -> resized pixels
        scale = torch.tensor([rw / w, rh / h, rw / w, rh / h], device=boxes.device)
        kwargs: dict[str, Any] = {}
        if self.is_hq:
            kwargs = {"intermediate_embeddings": state["intermediate"], "hq_token_only": self.hq_token_only}
        out = self.model(
            image_embeddings=state["features"],
            input_boxes=(boxes.float() * scale)[None],
            multimask_output=multimask,
            **kwargs,
        )
        masks = self.image_processor.post_process_masks(
            [out.pred_masks[0].float()], [state["original_size"]], [state["reshaped_size"]], binarize=True
        )[0]
        return masks.to(torch.bool), out.iou_scores[0]


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}"
        raise ConfigError(f"SAM needs an RGB uint8 HxWx3 array, got {got}", hint="decode with ram_grounded.io")
    return np.ascontiguousarray(image)


def _check_boxes(boxes: np.ndarray) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all():
        raise ConfigError(
            f"boxes must be a finite [N,4] xyxy array in pixels, got shape {arr.shape}",
            hint="pass detections.xyxy",
        )
    return arr
