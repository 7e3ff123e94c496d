"""PersonNet losses (DESIGN.md §6): batch-hard triplet, identity CE, attribute CE, bootstrapped part CE, pose L1,
and ``PersonCriterion``, which sums only the terms whose targets a batch carries (multi-dataset training: a ReID
batch has identities and attributes but no parts, a parsing batch parts but no identities).

Crop targets (a dict; any key may be absent or None):
    identities ``[B] long`` (-1 = unknown), attributes ``[B, A] long`` (ATTRIBUTE_NAMES order, -1 = missing),
    parts ``[B, H, W]`` integer labels at the crop size (255 = ignore), keypoints ``[B, 17, 3]`` crop-normalised xy
    + COCO visibility (> 0 = labelled; joints outside the crop should be given visibility 0 by the crop maker).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PART_IGNORE_INDEX = 255
LOSS_NAMES = ("triplet", "identity", "attributes", "parts", "pose")
# Pose L1 is in crop-normalised units (a 6-pixel error in a 128-pixel crop is ~0.05), hence its larger weight.
DEFAULT_WEIGHTS = {"triplet": 1.0, "identity": 1.0, "attributes": 1.0, "parts": 1.0, "pose": 10.0}


def _zero(like: torch.Tensor) -> torch.Tensor:
    """A 0 that keeps the autograd graph connected to ``like`` (backward through it is a no-op)."""
    return like.sum() * 0.0


def pairwise_distances(embeddings: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``[B, D] -> [B, B]`` Euclidean distances (sqrt clamped at eps so the gradient at 0 stays finite)."""
    squared = (embeddings.unsqueeze(1) - embeddings.unsqueeze(0)).pow(2).sum(dim=-1)
    return squared.clamp(min=eps).sqrt()


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.3,
                            soft_margin: bool = False) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) for a P x K batch.

    Per anchor: hardest positive = farthest sample of the same identity (not itself), hardest negative = nearest
    sample of another identity; loss = relu(d_ap - d_an + margin), or softplus(d_ap - d_an) with soft_margin.
    Anchors without a positive or a negative, and samples with label < 0, are masked out; the result is the mean
    over the remaining anchors (0, graph-connected, if none).

    embeddings: [B, D] float; labels: [B] integer identities.
    """
    if embeddings.dim() != 2 or labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"embeddings must be [B, D] and labels [B], got {list(embeddings.shape)} and "
                         f"{list(labels.shape)}")
    dist = pairwise_distances(embeddings)
    known = labels >= 0
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    valid_pair = known.unsqueeze(0) & known.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & valid_pair & ~eye
    negative = ~same & valid_pair
    anchor = positive.any(dim=1) & negative.any(dim=1)
    if not bool(anchor.any()):
        return _zero(embeddings)
    hardest_pos = torch.where(positive, dist, torch.full_like(dist, -math.inf)).amax(dim=1)
    hardest_neg = torch.where(negative, dist, torch.full_like(dist, math.inf)).amin(dim=1)
    gap = (hardest_pos - hardest_neg)[anchor]
    losses = F.softplus(gap) if soft_margin else F.relu(gap + margin)
    return losses.mean()


def identity_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of the identity classifier; logits [B, N], labels [B] (-1 = unknown, ignored).
    Mean over the known labels (0 if none)."""
    if logits.dim() != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"identity logits must be [B, N] and labels [B], got {list(logits.shape)} and "
                         f"{list(labels.shape)}")
    known = labels >= 0
    if not bool(known.any()):
        return _zero(logits)
    if int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"identity label {int(labels.max())} >= classifier size {logits.shape[1]}")
    return F.cross_entropy(logits[known], labels[known], label_smoothing=label_smoothing)


def attribute_loss(logits: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Mean over attributes of each attribute's CE over its labelled samples.

    logits: A tensors [B, n_a]; targets: [B, A] long, -1 = missing. Attributes without any label in the batch are
    left out of the mean (0 if none has one).
    """
    if targets.dim() != 2 or targets.shape[1] != len(logits):
        raise ValueError(f"attribute targets must be [B, {len(logits)}], got {list(targets.shape)}")
    terms = []
    for a, lg in enumerate(logits):
        labelled = targets[:, a] >= 0
        if bool(labelled.any()):
            if int(targets[:, a].max()) >= lg.shape[1]:
                raise ValueError(f"attribute {a}: label {int(targets[:, a].max())} >= {lg.shape[1]} values")
            terms.append(F.cross_entropy(lg[labelled], targets[labelled, a]))
    if not terms:
        return _zero(torch.stack([lg.sum() for lg in logits]))
    return torch.stack(terms).mean()


def bootstrapped_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, top_fraction: float = 0.25,
                               ignore_index: int = PART_IGNORE_INDEX) -> torch.Tensor:
    """Per-pixel CE averaged over the hardest ``top_fraction`` of the labelled pixels of the whole batch
    (ceil(top_fraction * n_labelled) pixels, at least 1; 0 if no pixel is labelled).

    logits: [B, C, H, W]; targets: [B, H, W] integer labels, ``ignore_index`` = unlabelled.
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    if logits.dim() != 4 or targets.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"part targets must be [B, H, W] = {[logits.shape[0], *logits.shape[2:]]} to match logits "
                         f"{list(logits.shape)}, got {list(targets.shape)}")
    targets = targets.long()
    pixel_loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")  # [B, H, W]
    labelled = pixel_loss[targets != ignore_index]
    if labelled.numel() == 0:
        return _zero(logits)
    k = max(1, math.ceil(top_fraction * labelled.numel()))
    return labelled.topk(k, sorted=False).values.mean()


def keypoint_coordinate_loss(pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L1 between predicted and labelled joint coordinates, summed over x and y, divided by the number of labelled
    joints (0 if none). pred: [B, K, 2] crop-normalised xy; targets: [B, K, 3] xy + visibility (> 0 = labelled)."""
    if targets.dim() != 3 or targets.shape[-1] != 3 or targets.shape[:2] != pred.shape[:2]:
        raise ValueError(f"keypoint targets must be [B, K, 3] with [B, K] = {list(pred.shape[:2])}, "
                         f"got {list(targets.shape)}")
    labelled = targets[..., 2] > 0
    count = int(labelled.sum())
    if count == 0:
        return _zero(pred)
    return (pred[labelled] - targets[..., :2][labelled]).abs().sum() / count


class PersonCriterion(nn.Module):
    """Weighted sum of the PersonNet losses whose targets are present.

    Args:
        weights: {term: weight} for terms in LOSS_NAMES (missing terms take DEFAULT_WEIGHTS; weight 0 = off).
        triplet_margin, soft_margin: batch-hard triplet settings. id_label_smoothing: identity CE smoothing.
        parts_top_fraction: bootstrapped CE fraction; part_ignore_index: unlabelled part pixels.
    forward(outputs: PersonNet output dict (training outputs), targets: crop targets, see module doc) ->
        {term: loss for each computed term, "total": weighted sum}. A term is computed when the model produced its
        output, its target is in the batch (not None) with at least one valid label, and its weight is non-zero.
        The triplet term reads ``reid_features`` (``embedding`` if absent), the identity term ``id_logits``.
    """

    def __init__(self, weights: dict[str, float] | None = None, triplet_margin: float = 0.3,
                 soft_margin: bool = False, id_label_smoothing: float = 0.1, parts_top_fraction: float = 0.25,
                 part_ignore_index: int = PART_IGNORE_INDEX) -> None:
        super().__init__()
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(f"unknown PersonCriterion weight keys {unknown}; known: {LOSS_NAMES}")
        self.weights = {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in weights.items()}}
        self.triplet_margin, self.soft_margin = triplet_margin, soft_margin
        self.id_label_smoothing = id_label_smoothing
        self.parts_top_fraction, self.part_ignore_index = parts_top_fraction, part_ignore_index

    def forward(self, outputs: dict, targets: dict) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        identities = targets.get("identities")
        if identities is not None and bool((identities >= 0).any()):
            features = outputs.get("reid_features", outputs.get("embedding"))
            if features is not None and self.weights["triplet"]:
                terms["triplet"] = batch_hard_triplet_loss(features, identities, self.triplet_margin,
                                                           self.soft_margin)
            if outputs.get("id_logits") is not None and self.weights["identity"]:
                terms["identity"] = identity_loss(outputs["id_logits"], identities, self.id_label_smoothing)
        attributes = targets.get("attributes")
        if (attributes is not None and outputs.get("attr_logits") is not None and self.weights["attributes"]
                and bool((attributes >= 0).any())):
            terms["attributes"] = attribute_loss(outputs["attr_logits"], attributes)
        parts = targets.get("parts")
        if (parts is not None and outputs.get("part_logits") is not None and self.weights["parts"]
                and bool((parts != self.part_ignore_index).any())):
            terms["parts"] = bootstrapped_cross_entropy(outputs["part_logits"], parts, self.parts_top_fraction,
                                                        self.part_ignore_index)
        keypoints = targets.get("keypoints")
        if keypoints is not None and outputs.get("keypoints") is not None and self.weights["pose"]:
            loss = keypoint_coordinate_loss(outputs["keypoints"], keypoints)  # validates the shape
            if bool((keypoints[..., 2] > 0).any()):
                terms["pose"] = loss
        if terms:
            total = sum(self.weights[name] * value for name, value in terms.items())
        else:
            total = _zero(torch.stack([_output_sum(v) for v in outputs.values()])) if outputs else torch.zeros(())
        return {**terms, "total": total}


def _output_sum(value) -> torch.Tensor:
    if isinstance(value, (list, tuple)):
        return torch.stack([v.sum() for v in value]).sum()
    return value.sum()
