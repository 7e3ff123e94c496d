"""Raw HCQNet outputs -> per-image people in original-image pixels.

Coordinates: the model predicts normalised xy of its input image. Without letterbox the input is the original
image resized, so normalised xy times the original (w, h) gives pixels. With letterbox the original image was
scaled by ``scale`` and placed at (pad_x, pad_y) inside the ``input_size`` canvas:
``input_px = original_px * scale + pad`` and so ``original_px = (normalised * input_size - pad) / scale``.

Keypoint confidence = 1 - mean(sigma_x, sigma_y) of the predicted RLE scale (sigma is in units of the person's
box scale, so 0.2 means "expected error about a fifth of the person's size"), clamped to [0, 1]. Models trained
without RLE have no sigma: the person's score is used for every joint then. Detectors without pose report
keypoints with confidence 0 (= not predicted).

Duplicates (``nms_iou`` < 1): a set-prediction decoder should not need NMS, but a small one trained on CPUs
(engines/hcq_small) often puts two queries on one person. Each duplicate starts its own track, which the
robot sees as a phantom person and MOT scores as false positives and id switches (README, pipeline table), so
the product drops a box that overlaps a higher-scored one by more than ``nms_iou`` (OpenCV's NMSBoxes).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hcq_ros.data.schema import NUM_KEYPOINTS


def suppress_duplicates(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS: indices of the boxes kept, highest score first. boxes: [N, 4] xyxy; scores: [N];
    a box is dropped when its IoU with a kept, higher-scored box is > ``iou`` (1.0 keeps every box)."""
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"nms iou must be in (0, 1], got {iou}")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    order = np.argsort(-scores, kind="stable")
    if iou >= 1.0 or len(boxes) < 2:
        return order
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    # NMSBoxes keeps scores above its (>= 0) threshold: shifted scores keep the order and drop nothing.
    kept = cv2.dnn.NMSBoxes(xywh.tolist(), (scores - scores.min() + 1.0).tolist(), 0.0, float(iou))
    kept = np.asarray(kept, np.int64).reshape(-1)
    return kept[np.argsort(-scores[kept], kind="stable")]


class HCQPostProcess(nn.Module):
    """Thresholds, top-k and coordinate mapping of HCQNet outputs.

    Args:
        score_threshold: people with sigmoid(logit) <= this are dropped.
        max_people: keep at most this many (highest scores) per image.
        mask_threshold: mask pixel is on where sigmoid(mask logit) > this.
        box_margin: masks are pasted only inside the box grown by this fraction of its size on every side
            (plus 2 pixels), which removes far-away spurious blobs of a query's mask.
        nms_iou: drop a box whose IoU with a higher-scored one is > this, before ``max_people`` (1.0: off).
    forward(outputs, target_sizes, letterbox=None, input_size=None) -> one dict per image:
        scores [K] float, boxes [K, 4] xyxy original pixels (clipped to the image), keypoints [K, 17, 3]
        (x, y original pixels, not clipped; confidence), masks [K, h, w] bool; sorted by score, K <= max_people.
        target_sizes: B (h, w) original image sizes. letterbox: B (scale, pad_x, pad_y) or None.
        input_size: (H, W) of the model input (default: 4 x the mask logits' size); only used with letterbox.
    """

    def __init__(self, score_threshold: float = 0.5, max_people: int = 100, mask_threshold: float = 0.5,
                 box_margin: float = 0.1, nms_iou: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1), got {score_threshold}")
        if max_people < 1:
            raise ValueError(f"max_people must be >= 1, got {max_people}")
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {mask_threshold}")
        self.score_threshold, self.max_people = score_threshold, max_people
        if not 0.0 < nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {nms_iou}")
        self.mask_threshold, self.box_margin, self.nms_iou = mask_threshold, box_margin, nms_iou

    @torch.no_grad()
    def forward(self, outputs: dict, target_sizes: Sequence[Sequence[int]],
                letterbox: Sequence[Sequence[float]] | None = None,
                input_size: Sequence[int] | None = None) -> list[dict[str, torch.Tensor]]:
        logits = outputs["pred_logits"]
        batch = logits.shape[0]
        if len(target_sizes) != batch:
            raise ValueError(f"target_sizes has {len(target_sizes)} entries for a batch of {batch}")
        if letterbox is not None and len(letterbox) != batch:
            raise ValueError(f"letterbox has {len(letterbox)} entries for a batch of {batch}")
        if input_size is None:
            input_size = tuple(4 * s for s in outputs["pred_masks"].shape[-2:])
        return [self._one_image(outputs, b, (int(target_sizes[b][0]), int(target_sizes[b][1])),
                                None if letterbox is None else tuple(float(v) for v in letterbox[b]), input_size)
                for b in range(batch)]

    def _to_pixels(self, xy: torch.Tensor, size: tuple[int, int], letterbox, input_size) -> torch.Tensor:
        """Normalised model xy [..., 2] -> original pixel xy [..., 2]."""
        h, w = size
        if letterbox is None:
            return xy * xy.new_tensor([w, h])
        scale, pad_x, pad_y = letterbox
        input_px = xy * xy.new_tensor([input_size[1], input_size[0]])
        return (input_px - xy.new_tensor([pad_x, pad_y])) / scale

    def _pixel_grid(self, size: tuple[int, int], letterbox, input_size, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised model coordinates of the original pixel centres: (x [w], y [h])."""
        h, w = size
        xs = torch.arange(w, dtype=torch.float32, device=device) + 0.5
        ys = torch.arange(h, dtype=torch.float32, device=device) + 0.5
        if letterbox is None:
            return xs / w, ys / h
        scale, pad_x, pad_y = letterbox
        return (xs * scale + pad_x) / input_size[1], (ys * scale + pad_y) / input_size[0]

    def _one_image(self, outputs: dict, b: int, size: tuple[int, int], letterbox, input_size) -> dict:
        h, w = size
        scores = outputs["pred_logits"][b, :, 0].float().sigmoid()
        keep = torch.nonzero(scores > self.score_threshold).flatten()
        keep = keep[scores[keep].argsort(descending=True)]
        boxes = self._to_pixels(outputs["pred_boxes"][b, keep].float().reshape(-1, 2, 2), size, letterbox,
                                input_size).reshape(-1, 4)
        boxes = torch.stack((boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                             boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)), dim=-1)
        if self.nms_iou < 1.0 and keep.numel() > 1:
            kept = torch.from_numpy(suppress_duplicates(boxes.cpu().numpy(), scores[keep].cpu().numpy(),
                                                        self.nms_iou)).to(keep.device)
            keep, boxes = keep[kept], boxes[kept]
        keep, boxes = keep[: self.max_people], boxes[: self.max_people]
        scores = scores[keep]
        k = keep.numel()
        keypoints = scores.new_zeros(k, NUM_KEYPOINTS, 3)
        if "pred_keypoints" in outputs:
            keypoints[..., :2] = self._to_pixels(outputs["pred_keypoints"][b, keep].float(), size, letterbox,
                                                 input_size)
            if "pred_kpt_sigma" in outputs:
                keypoints[..., 2] = (1.0 - outputs["pred_kpt_sigma"][b, keep].float().mean(-1)).clamp(0.0, 1.0)
            else:
                keypoints[..., 2] = scores[:, None]
        masks = torch.zeros(k, h, w, dtype=torch.bool, device=scores.device)
        grid_x, grid_y = self._pixel_grid(size, letterbox, input_size, scores.device)
        mask_logits = outputs["pred_masks"][b, keep].float()
        for i in range(k):
            x0, y0, x1, y1 = boxes[i].tolist()
            mx, my = self.box_margin * (x1 - x0) + 2.0, self.box_margin * (y1 - y0) + 2.0
            c0, c1 = max(0, int(x0 - mx)), min(w, int(x1 + mx) + 1)
            r0, r1 = max(0, int(y0 - my)), min(h, int(y1 + my) + 1)
            if c1 <= c0 or r1 <= r0:
                continue
            gx, gy = torch.meshgrid(grid_x[c0:c1], grid_y[r0:r1], indexing="xy")   # [rows, cols]
            grid = torch.stack((gx, gy), dim=-1)[None] * 2.0 - 1.0
            sampled = F.grid_sample(mask_logits[i][None, None], grid, mode="bilinear", padding_mode="border",
                                    align_corners=False)
            masks[i, r0:r1, c0:c1] = sampled[0, 0].sigmoid() > self.mask_threshold
        return {"scores": scores, "boxes": boxes, "keypoints": keypoints, "masks": masks}
