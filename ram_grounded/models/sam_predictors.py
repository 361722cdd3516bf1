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
        return self.segment_batch([image], [boxes_xyxy], multimask=multimask, chunk_size=chunk_size)[0]

    @torch.inference_mode()
    def segment_batch(
        self,
        images: list[np.ndarray],
        boxes: list[np.ndarray],
        multimask: bool = False,
        chunk_size: int = 64,
        image_batch_size: int = 4,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`segment_boxes` for several images, encoded ``image_batch_size`` per forward.

        Images without boxes are not encoded at all. (SAM's global-attention layers hold an
        N^2 attention map: about 1 GB per image for ViT-H in float32, hence the bound.)
        """
        if chunk_size < 1 or image_batch_size < 1:
            raise ConfigError(f"chunk_size and image_batch_size must be >= 1, got {chunk_size}, "
                              f"{image_batch_size}", hint="use e.g. 64 and 4")
        if len(images) != len(boxes):
            raise ConfigError(f"{len(images)} images but {len(boxes)} box arrays", hint="pass one per image")
        images = [_check_image(image) for image in images]
        boxes = [_check_boxes(b) for b in boxes]
        todo = [i for i, b in enumerate(boxes) if len(b)]
        states: dict[int, Any] = {}
        for start in range(0, len(todo), image_batch_size):
            group = todo[start : start + image_batch_size]
            states.update(zip(group, self._embed([images[i] for i in group])))
        results = []
        for i, image in enumerate(images):
            if i not in states:
                results.append((np.zeros((0, *image.shape[:2]), dtype=bool), np.zeros((0,), dtype=np.float32)))
                continue
            masks, scores = [], []
            for start in range(0, len(boxes[i]), chunk_size):
                chunk = torch.as_tensor(boxes[i][start : start + chunk_size], device=self.device)
                m, s = self._decode(states[i], chunk, multimask)  # m: bool [n,C,H,W], s: [n,C]
                best = s.argmax(dim=1)
                rows = torch.arange(len(best), device=best.device)
                masks.append(m[rows, best].cpu().numpy())
                scores.append(s[rows, best].float().cpu().numpy())
            results.append((np.concatenate(masks).astype(bool, copy=False), np.concatenate(scores)))
        return results

    def _embed(self, images: list[np.ndarray]) -> list[Any]:
        """Everything the decoder needs about each image (one encoder forward for all)."""
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

    def _embed(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        batch, states = [], []
        for image in images:
            resized = self.transform.apply_image(image)  # longest side -> encoder size (PIL bilinear)
            pixels = torch.as_tensor(resized, device=self.device).permute(2, 0, 1)[None].contiguous()
            batch.append(self.sam.preprocess(pixels))  # normalise + pad to a square: images stack
            states.append({"input_size": tuple(pixels.shape[-2:]), "original_size": image.shape[:2]})
        features = self.sam.image_encoder(torch.cat(batch))
        for state, feature in zip(states, features):
            state["features"] = feature[None]
        return states

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

    def _embed(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        inputs = self.image_processor(images=images, return_tensors="pt")  # resized + padded: stackable
        pixels = inputs["pixel_values"].to(self.device, dtype=next(self.model.parameters()).dtype)
        if self.is_hq:
            features, intermediate = self.model.get_image_embeddings(pixels)
        else:
            features, intermediate = self.model.get_image_embeddings(pixels), None
        states = []
        for i in range(len(images)):
            state: dict[str, Any] = {
                "features": features[i : i + 1],
                "original_size": tuple(int(v) for v in inputs["original_sizes"][i]),
                "reshaped_size": tuple(int(v) for v in inputs["reshaped_input_sizes"][i]),
            }
            if intermediate is not None:
                state["intermediate"] = [t[i : i + 1] for t in intermediate]
            states.append(state)
        return states

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
