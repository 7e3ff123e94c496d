"""Hungarian matching between HCQNet queries and ground-truth people (Mask2Former style).

Cost = class cost (-p(person)) + mask cost (sigmoid BCE and dice on a random subset of points, the same points for
every prediction and target, read with ``F.grid_sample``) + optional box L1 cost. The assignment is solved per
image with ``scipy.optimize.linear_sum_assignment``. Matching runs under ``torch.no_grad``: it only chooses
which prediction is trained towards which target.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of maps at continuous points.

    inputs: [N, C, H, W]. coords: [N, P, 2] normalised xy in [0, 1] ((0, 0) = top-left corner of the top-left
    pixel, so maps of different resolution covering the same image agree). Returns [N, C, P].
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2)                                 # [N, P, 1, 2]
    return F.grid_sample(inputs, grid.to(inputs.dtype), mode="bilinear", align_corners=False).squeeze(3)


def pairwise_sigmoid_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over points of BCE(logit_i, target_j): logits [N, P], targets [M, P] in [0, 1] -> [N, M]."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1.0 - targets).T) / logits.shape[1]


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - soft dice between every prediction and target: logits [N, P], targets [M, P] -> [N, M]."""
    probs = logits.sigmoid()
    numerator = 2.0 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to people.

    Args: class_weight, mask_weight (BCE), dice_weight, box_weight (L1 on normalised xyxy; 0 = off),
        num_points (points sampled per image for the mask costs).
    forward(outputs, targets) with outputs["pred_logits"] [B, Q, 1], outputs["pred_masks"] [B, Q, h, w] (only
        read with a mask or dice weight), outputs["pred_boxes"] [B, Q, 4] (only read when box_weight > 0);
        targets: B dicts with "boxes" [G, 4] normalised xyxy and "masks" [G, H, W] bool (mask costs only).
    Returns B pairs (pred_idx int64 [K], gt_idx int64 [K]), K = min(Q, G), pred_idx sorted ascending.
    """

    def __init__(self, class_weight: float = 2.0, mask_weight: float = 5.0, dice_weight: float = 5.0,
                 box_weight: float = 0.0, num_points: int = 12544) -> None:
        super().__init__()
        if class_weight == 0 and mask_weight == 0 and dice_weight == 0 and box_weight == 0:
            raise ValueError("HungarianMatcher: all cost weights are 0")
        if num_points < 1:
            raise ValueError(f"HungarianMatcher: num_points must be >= 1, got {num_points}")
        self.class_weight, self.mask_weight, self.dice_weight = class_weight, mask_weight, dice_weight
        self.box_weight, self.num_points = box_weight, num_points

    @torch.no_grad()
    def cost_matrix(self, logits: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor | None,
                    target: dict) -> torch.Tensor:
        """Matching cost of one image: logits [Q, 1], masks [Q, h, w] or None, boxes [Q, 4] -> [Q, G] float32."""
        num_gt = target["boxes"].shape[0]
        cost = -self.class_weight * logits[:, 0].float().sigmoid()[:, None].expand(-1, num_gt)
        if self.mask_weight or self.dice_weight:
            gt_masks = target["masks"]
            coords = torch.rand(1, self.num_points, 2, device=masks.device)
            pred = point_sample(masks[:, None].float(), coords.expand(masks.shape[0], -1, -1))[:, 0]
            gt = point_sample(gt_masks[:, None].to(pred), coords.expand(gt_masks.shape[0], -1, -1))[:, 0]
            cost = cost + self.mask_weight * pairwise_sigmoid_bce(pred, gt) + self.dice_weight * pairwise_dice(pred, gt)
        if self.box_weight:
            cost = cost + self.box_weight * torch.cdist(boxes.float(), target["boxes"].to(boxes).float(), p=1)
        return cost

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        logits = outputs["pred_logits"]
        masks = outputs["pred_masks"] if (self.mask_weight or self.dice_weight) else None
        boxes = outputs.get("pred_boxes") if self.box_weight else None
        if len(targets) != logits.shape[0]:
            raise ValueError(f"matcher: {len(targets)} targets for a batch of {logits.shape[0]} images")
        indices = []
        for b, target in enumerate(targets):
            if target["boxes"].shape[0] == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(logits[b], None if masks is None else masks[b],
                                    None if boxes is None else boxes[b], target)
            # A non-finite cost (a diverged prediction) must not crash the solver: make it maximally expensive.
            cost = torch.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8).cpu().numpy()
            pred_idx, gt_idx = linear_sum_assignment(cost)
            indices.append((torch.as_tensor(pred_idx, dtype=torch.int64), torch.as_tensor(gt_idx, dtype=torch.int64)))
        return indices

