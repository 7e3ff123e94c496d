"""HCQNet training criterion (DETR style): match queries to people, then score the matched pairs.

Per decoder layer (the last and every auxiliary one, each matched separately):
- class: sigmoid BCE, matched queries -> 1, all others -> 0 with weight ``no_object_weight``, averaged over the
  weights (or sigmoid focal loss normalised by the number of people);
- mask: BCE + dice on points sampled where the prediction is most uncertain (Mask2Former), per matched person;
- box: RLE over the two corners (or L1 on normalised xyxy), optional GIoU;
- pose: RLE (or L1) per *labelled* joint (visibility > 0), normalised by the number of labelled joints.
Encoder proposals (``outputs["enc_outputs"]``, query_init "encoder"): each person repeated ``enc_repeats``
times, matched to the proposals on class + box L1 (weights ENC_MATCH_*), then class (as above) + box L1 + GIoU
(weights: class_weight, ENC_BOX_L1_WEIGHT, ENC_GIOU_WEIGHT), logged as loss_*_enc.
RLE residuals are measured in units of the person's box scale sqrt(w * h) (as OKS), so the predicted sigmas are
relative to the person's size and small people weigh as much as large ones.

Targets, one dict per image: ``boxes [G, 4]`` normalised xyxy, ``keypoints [G, 17, 3]`` normalised xy +
visibility, ``masks [G, H, W]`` bool at input resolution. G = 0 (no people) is allowed.
The criterion owns the RLE flows: pass ``criterion.parameters()`` to the optimiser with the model's.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hcq_ros.data.schema import NUM_KEYPOINTS
from hcq_ros.train.matcher import HungarianMatcher, point_sample
from hcq_ros.train.rle import RLELoss

# Floor of sqrt(w * h) (normalised image units) when turning residuals into box-scale units. SynthHumans has many
# people a few pixels tall; with a tiny floor their residuals, hundreds of "box sizes" early in training, made the
# RLE terms ~100x the class/mask terms and swamped the shared trunk's gradient. 0.1 = 26 px at 256 px input.
MIN_BOX_SCALE = 0.1
# Encoder proposals: Deformable-DETR's two-stage weights (matching class 2 + box L1 5; losses L1 5, GIoU 2).
ENC_MATCH_CLASS_WEIGHT, ENC_MATCH_BOX_WEIGHT = 2.0, 5.0
ENC_BOX_L1_WEIGHT, ENC_GIOU_WEIGHT = 5.0, 2.0


def sample_uncertain_points(logits: torch.Tensor, num_points: int, oversample: float = 3.0,
                            importance: float = 0.75) -> torch.Tensor:
    """Mask2Former point selection: logits [N, 1, h, w] -> coords [N, num_points, 2] normalised xy, of which a
    share ``importance`` are the most uncertain (|logit| smallest) of oversample * num_points random points and
    the rest uniform random."""
    n = logits.shape[0]
    candidates = torch.rand(n, int(num_points * oversample), 2, device=logits.device)
    uncertainty = -point_sample(logits.detach(), candidates)[:, 0].abs()
    num_uncertain = int(num_points * importance)
    top = uncertainty.topk(num_uncertain, dim=1).indices
    chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
    uniform = torch.rand(n, num_points - num_uncertain, 2, device=logits.device)
    return torch.cat((chosen, uniform), dim=1)


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise GIoU of xyxy boxes a, b [N, 4] -> [N]."""
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    inter = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0).prod(-1)
    iou = inter / union.clamp(min=1e-9)
    return iou - (hull - union) / hull.clamp(min=1e-9)


def _global_count(count: float, device: torch.device) -> float:
    """Sum a count over DDP workers (when running distributed) and floor it at 1."""
    value = torch.tensor([float(count)], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value)
        value = value / dist.get_world_size()
    return max(float(value.item()), 1.0)


def check_targets(targets: list[dict], batch: int, with_pose: bool) -> None:
    """Raise ValueError naming the image and field unless every target has consistent boxes/masks/keypoints."""
    if len(targets) != batch:
        raise ValueError(f"got {len(targets)} targets for a batch of {batch} images")
    for i, t in enumerate(targets):
        needed = ("boxes", "masks") + (("keypoints",) if with_pose else ())
        for key in needed:
            if key not in t:
                raise ValueError(f"targets[{i}] has no {key!r}")
        g = t["boxes"].shape[0]
        if t["boxes"].shape != (g, 4):
            raise ValueError(f"targets[{i}]['boxes'] must be [G, 4], got {list(t['boxes'].shape)}")
        if t["masks"].dim() != 3 or t["masks"].shape[0] != g:
            raise ValueError(f"targets[{i}]['masks'] must be [G={g}, H, W], got {list(t['masks'].shape)}")
        if with_pose and t["keypoints"].shape != (g, NUM_KEYPOINTS, 3):
            raise ValueError(f"targets[{i}]['keypoints'] must be [G={g}, {NUM_KEYPOINTS}, 3], "
                             f"got {list(t['keypoints'].shape)}")


class HCQCriterion(nn.Module):
    """Hungarian-matched HCQNet losses.

    forward(outputs, targets) -> dict: "loss" (weighted total, to backpropagate) and the unweighted terms
    loss_class, loss_mask, loss_dice, loss_box, [loss_giou], [loss_pose] for the last layer, suffixed "_aux{i}"
    for auxiliary layer i.
    """

    def __init__(self, matcher: HungarianMatcher, with_pose: bool, class_loss: str = "bce", box_loss: str = "rle",
                 pose_loss: str = "rle", class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, box_weight: float = 0.2, pose_weight: float = 0.2,
                 giou_weight: float = 0.0, no_object_weight: float = 0.1, num_points: int = 12544,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, enc_repeats: int = 4) -> None:
        super().__init__()
        for name, value, allowed in (("class_loss", class_loss, ("bce", "focal")),
                                     ("box_loss", box_loss, ("rle", "l1")), ("pose_loss", pose_loss, ("rle", "l1"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        self.matcher, self.with_pose = matcher, with_pose
        self.class_loss, self.box_loss, self.pose_loss = class_loss, box_loss, pose_loss
        self.weights = {"loss_class": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight,
                        "loss_box": box_weight, "loss_giou": giou_weight, "loss_pose": pose_weight,
                        "loss_class_enc": class_weight, "loss_box_enc": ENC_BOX_L1_WEIGHT,
                        "loss_giou_enc": ENC_GIOU_WEIGHT}
        if enc_repeats < 1:
            raise ValueError(f"enc_repeats must be >= 1, got {enc_repeats}")
        self.enc_repeats = enc_repeats
        self.enc_matcher = HungarianMatcher(ENC_MATCH_CLASS_WEIGHT, 0.0, 0.0, ENC_MATCH_BOX_WEIGHT)
        self.no_object_weight, self.num_points = no_object_weight, num_points
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.box_rle = RLELoss() if box_loss == "rle" else None
        self.pose_rle = RLELoss() if (pose_loss == "rle" and with_pose) else None

    # ------------------------------------------------------------------------------------------ terms
    def _class(self, logits: torch.Tensor, indices, num_people: float) -> torch.Tensor:
        """logits [B, Q, 1] -> scalar."""
        logits = logits[..., 0]
        target = torch.zeros_like(logits)
        for b, (pred_idx, _) in enumerate(indices):
            target[b, pred_idx.to(logits.device)] = 1.0
        if self.class_loss == "focal":
            prob = logits.sigmoid()
            ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            p_t = prob * target + (1 - prob) * (1 - target)
            alpha_t = self.focal_alpha * target + (1 - self.focal_alpha) * (1 - target)
            return (alpha_t * ce * (1 - p_t) ** self.focal_gamma).sum() / num_people
        weight = target + self.no_object_weight * (1.0 - target)
        ce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
        return ce / weight.sum()

    def _masks(self, pred_masks: torch.Tensor, gt_masks: torch.Tensor, num_people: float):
        """Matched pred_masks [N, h, w] logits, gt_masks [N, H, W] -> (BCE, dice) scalars."""
        coords = sample_uncertain_points(pred_masks[:, None], self.num_points)
        pred = point_sample(pred_masks[:, None], coords)[:, 0]                 # [N, P]
        with torch.no_grad():
            gt = point_sample(gt_masks[:, None].to(pred.dtype), coords)[:, 0]
        bce = F.binary_cross_entropy_with_logits(pred, gt, reduction="none").mean(1).sum() / num_people
        prob = pred.sigmoid()
        dice = 1.0 - (2.0 * (prob * gt).sum(1) + 1.0) / (prob.sum(1) + gt.sum(1) + 1.0)
        return bce, dice.sum() / num_people

    def _regression(self, rle: RLELoss | None, pred: torch.Tensor, sigma: torch.Tensor | None,
                    gt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Per-point loss of pred/gt [N, P, 2] -> [N, P]: RLE in box-scale units (scale [N]) or L1 in image units."""
        if rle is None:
            return (pred - gt).abs().sum(-1)
        s = scale[:, None, None]
        n, p = pred.shape[:2]
        return rle((pred / s).reshape(-1, 2), sigma.reshape(-1, 2), (gt / s).reshape(-1, 2)).reshape(n, p)

    def encoder_losses(self, enc: dict, targets: list[dict], num_people: float) -> dict:
        """Unweighted proposal losses: enc pred_logits [B, S, 1], pred_boxes [B, S, 4]; one-to-many matching."""
        r = self.enc_repeats
        repeated = [{"boxes": t["boxes"].repeat(r, 1)} for t in targets]
        indices = self.enc_matcher(enc, repeated)
        device = enc["pred_logits"].device
        losses = {"loss_class_enc": self._class(enc["pred_logits"], indices, num_people * r)}
        batch_idx = torch.cat([torch.full_like(p, b) for b, (p, _) in enumerate(indices)]).to(device)
        pred_idx = torch.cat([p for p, _ in indices]).to(device)
        pred = enc["pred_boxes"][batch_idx, pred_idx].float()
        if pred.numel() == 0:
            zero = enc["pred_boxes"].sum() * 0.0
            return {**losses, "loss_box_enc": zero, "loss_giou_enc": zero}
        gt = torch.cat([t["boxes"][g] for t, (_, g) in zip(repeated, indices)]).to(device).float()
        losses["loss_box_enc"] = (pred - gt).abs().sum() / (num_people * r)
        losses["loss_giou_enc"] = (1.0 - generalized_iou(pred, gt)).sum() / (num_people * r)
        return losses

    # -------------------------------------------------------------------------------------- one layer
    def layer_losses(self, outputs: dict, targets: list[dict], num_people: float, num_joints: float) -> dict:
        """Unweighted losses of one decoder layer's outputs."""
        indices = self.matcher(outputs, targets)
        device = outputs["pred_logits"].device
        batch_idx = torch.cat([torch.full_like(p, b) for b, (p, _) in enumerate(indices)]).to(device)
        pred_idx = torch.cat([p for p, _ in indices]).to(device)
        losses = {"loss_class": self._class(outputs["pred_logits"], indices, num_people)}
        if pred_idx.numel() == 0:
            # No people in the batch: only the class loss teaches anything; keep the rest in the graph at 0.
            zero = sum(outputs[k].sum() for k in ("pred_masks", "pred_boxes", "pred_keypoints", "pred_box_sigma",
                                                  "pred_kpt_sigma") if k in outputs) * 0.0
            losses.update(loss_mask=zero, loss_dice=zero, loss_box=zero)
            if self.weights["loss_giou"]:
                losses["loss_giou"] = zero
            if self.with_pose:
                losses["loss_pose"] = zero
            return losses

        def gather(key: str) -> torch.Tensor:
            return torch.cat([t[key][g] for t, (_, g) in zip(targets, indices)]).to(device)

        gt_boxes = gather("boxes").float()
        losses["loss_mask"], losses["loss_dice"] = self._masks(
            outputs["pred_masks"][batch_idx, pred_idx], gather("masks"), num_people)
        scale = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=0).prod(-1).sqrt().clamp(min=MIN_BOX_SCALE)
        pred_boxes = outputs["pred_boxes"][batch_idx, pred_idx]
        box_sigma = outputs["pred_box_sigma"][batch_idx, pred_idx].reshape(-1, 2, 2) if self.box_rle else None
        losses["loss_box"] = self._regression(self.box_rle, pred_boxes.reshape(-1, 2, 2), box_sigma,
                                              gt_boxes.reshape(-1, 2, 2), scale).sum() / num_people
        if self.weights["loss_giou"]:
            losses["loss_giou"] = (1.0 - generalized_iou(pred_boxes, gt_boxes)).sum() / num_people
        if self.with_pose:
            gt_kpts = gather("keypoints").float()
            labelled = (gt_kpts[..., 2] > 0).to(pred_boxes.dtype)              # [N, 17]
            kpt_sigma = outputs["pred_kpt_sigma"][batch_idx, pred_idx] if self.pose_rle else None
            per_joint = self._regression(self.pose_rle, outputs["pred_keypoints"][batch_idx, pred_idx],
                                         kpt_sigma, gt_kpts[..., :2], scale)
            losses["loss_pose"] = (per_joint * labelled).sum() / num_joints
        return losses

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        check_targets(targets, outputs["pred_logits"].shape[0], self.with_pose)
        device = outputs["pred_logits"].device
        num_people = _global_count(sum(t["boxes"].shape[0] for t in targets), device)
        num_joints = _global_count(sum(float((t["keypoints"][..., 2] > 0).sum()) for t in targets)
                                   if self.with_pose else 0.0, device)
        result: dict[str, torch.Tensor] = {}
        layers = [("", outputs)] + [(f"_aux{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        total = None
        for suffix, layer_out in layers:
            for name, value in self.layer_losses(layer_out, targets, num_people, num_joints).items():
                result[name + suffix] = value
                weighted = self.weights[name] * value
                total = weighted if total is None else total + weighted
        if "enc_outputs" in outputs:
            for name, value in self.encoder_losses(outputs["enc_outputs"], targets, num_people).items():
                result[name] = value
                total = total + self.weights[name] * value
        result["loss"] = total
        return result


def build_criterion(config) -> HCQCriterion:
    """Criterion and matcher from an ``hcq_ros.models.hcq.HCQConfig`` (its loss fields)."""
    c = config
    matcher = HungarianMatcher(c.match_class_weight, c.match_mask_weight, c.match_dice_weight,
                               c.match_box_weight, c.mask_points)
    return HCQCriterion(matcher, with_pose=c.with_pose, class_loss=c.class_loss, box_loss=c.box_loss,
                        pose_loss=c.pose_loss, class_weight=c.class_weight, mask_weight=c.mask_weight,
                        dice_weight=c.dice_weight,
                        box_weight=c.box_weight if c.box_loss == "rle" else c.box_l1_weight,
                        pose_weight=c.pose_weight if c.pose_loss == "rle" else c.pose_l1_weight,
                        giou_weight=c.giou_weight, no_object_weight=c.no_object_weight, num_points=c.mask_points,
                        enc_repeats=c.enc_repeats)
