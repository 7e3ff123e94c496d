"""Per-query prediction heads of HCQNet and the coordinate helpers they share.

Every head reads one feature vector per query, ``feat [B, Q, F]``; with ``keypoints_in_heads`` on that vector is
``Cat(E, K)`` (decoder embedding + the query's flattened keypoints), otherwise just ``E``. Heads are
vector-to-vector (no heatmaps). Box and pose heads predict *deltas* that refine the query's keypoints
(``hcq.HCQDecoder`` applies them); class and mask heads predict the final outputs.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from hcq_ros.data.schema import NUM_KEYPOINTS

NUM_JOINTS = NUM_KEYPOINTS  # COCO order, hcq_ros.data.schema.KEYPOINT_NAMES


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x) for x in [0, 1], with x and 1 - x floored at eps, so refinement deltas can be added in logit
    space. Computed in float32 (in float16 1 - eps rounds to 1 and the ratio overflows), returned in x's dtype."""
    y = x.float().clamp(0.0, 1.0)
    return torch.log(y.clamp(min=eps) / (1.0 - y).clamp(min=eps)).to(x.dtype)


def canonical_to_image(corners: torch.Tensor, joints_canonical: torch.Tensor) -> torch.Tensor:
    """Map joints from a box's canonical space to normalised image space: ``joint = p0 + c * (p1 - p0)``.

    corners: [..., 2, 2] (p0 xy, p1 xy) normalised image xy. joints_canonical: [..., J, 2].
    Returns [..., J, 2] normalised image xy. (0, 0) is p0 and (1, 1) is p1; values outside [0, 1] lie outside the
    box, which occluded joints of a box tight around visible pixels do.
    """
    p0, p1 = corners[..., 0:1, :], corners[..., 1:2, :]
    return p0 + joints_canonical * (p1 - p0)


def image_to_canonical(corners: torch.Tensor, joints_image: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Inverse of ``canonical_to_image``; the box extent is clamped away from 0 by ``eps`` (sign kept)."""
    p0, p1 = corners[..., 0:1, :], corners[..., 1:2, :]
    extent = p1 - p0
    extent = torch.where(extent >= 0, extent.clamp(min=eps), extent.clamp(max=-eps))
    return (joints_image - p0) / extent


# A standing person facing the camera, in the box's canonical space ((0, 0) top-left, (1, 1) bottom-right; the
# person's left is image right). The learnable joints start here.
CANONICAL_POSE_TEMPLATE = (
    (0.50, 0.10), (0.54, 0.08), (0.46, 0.08), (0.58, 0.09), (0.42, 0.09),
    (0.68, 0.22), (0.32, 0.22), (0.75, 0.38), (0.25, 0.38), (0.78, 0.52), (0.22, 0.52),
    (0.60, 0.55), (0.40, 0.55), (0.60, 0.75), (0.40, 0.75), (0.60, 0.95), (0.40, 0.95),
)


def corners_to_cxcywh(corners: torch.Tensor, min_size: float = 1e-3) -> torch.Tensor:
    """corners [..., 2, 2] (p0, p1) -> [..., 4] (cx, cy, w, h); w/h are |p1 - p0| clamped to >= min_size."""
    centre = corners.mean(dim=-2)
    size = (corners[..., 1, :] - corners[..., 0, :]).abs().clamp(min=min_size)
    return torch.cat((centre, size), dim=-1)


def corners_to_xyxy(corners: torch.Tensor, sigma: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """corners [..., 2, 2] -> xyxy [..., 4] with x0 <= x1, y0 <= y1; sigma [..., 4] (p0x, p0y, p1x, p1y) is
    permuted the same way so that each scale stays with its coordinate."""
    lo, hi = corners.min(dim=-2).values, corners.max(dim=-2).values
    boxes = torch.cat((lo, hi), dim=-1)
    if sigma is None:
        return boxes, None
    swapped = corners[..., 0, :] > corners[..., 1, :]                          # [..., 2] per axis
    s0, s1 = sigma[..., :2], sigma[..., 2:]
    return boxes, torch.cat((torch.where(swapped, s1, s0), torch.where(swapped, s0, s1)), dim=-1)


def sine_embed(coords: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine/cosine embedding of every scalar coordinate, as DETR's positional encoding per axis.

    coords: [..., N] (normalised coordinates, roughly in [0, 1]). Returns [..., N * num_feats]; for each scalar,
    ``num_feats / 2`` frequencies as interleaved (sin, cos) pairs of ``2 pi x / temperature^(2i / num_feats)``.
    """
    if num_feats % 2:
        raise ValueError(f"num_feats must be even, got {num_feats}")
    dim_t = torch.arange(num_feats // 2, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2.0 * dim_t / num_feats)
    angles = coords.float().unsqueeze(-1) * (2.0 * math.pi) / dim_t         # [..., N, F/2]
    emb = torch.stack((angles.sin(), angles.cos()), dim=-1)                   # [..., N, F/2, 2]
    return emb.flatten(-3).to(coords.dtype)


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them: in_dim -> hidden_dim ... -> out_dim."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    @property
    def last(self) -> nn.Linear:
        return self.layers[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def _small_init(linear: nn.Linear, std: float = 1e-3) -> None:
    """Near-zero last layer so that refinement starts at the learnable keypoints (as Deformable-DETR's zero
    init), but not exactly zero, so the hidden layers get gradient from the first step."""
    nn.init.normal_(linear.weight, std=std)
    nn.init.zeros_(linear.bias)


class BoxHead(nn.Module):
    """Box corner refinement + RLE scale.

    forward(feat [B, Q, in_dim]) -> (delta [B, Q, 2, 2] added to the corners' logits (p0 xy, p1 xy),
    sigma_logit [B, Q, 4] or None; sigmoid(sigma_logit) is the RLE scale of (x0, y0, x1, y1)).
    """

    def __init__(self, in_dim: int, hidden_dim: int, with_sigma: bool) -> None:
        super().__init__()
        self.with_sigma = with_sigma
        self.mlp = MLP(in_dim, hidden_dim, 4 + (4 if with_sigma else 0), 3)
        _small_init(self.mlp.last)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.mlp(feat)
        delta = out[..., :4].unflatten(-1, (2, 2))
        return delta, (out[..., 4:] if self.with_sigma else None)


class PoseHead(nn.Module):
    """Joint refinement (or direct regression when queries carry no joints) + RLE scale.

    forward(feat [B, Q, in_dim]) -> (delta [B, Q, 17, 2], sigma_logit [B, Q, 17, 2] or None). The delta is in the
    pose space of the model: canonical box coordinates, or logits of normalised image xy.
    """

    def __init__(self, in_dim: int, hidden_dim: int, with_sigma: bool, num_joints: int = NUM_JOINTS) -> None:
        super().__init__()
        self.with_sigma, self.num_joints = with_sigma, num_joints
        per_joint = 4 if with_sigma else 2
        self.mlp = MLP(in_dim, hidden_dim, num_joints * per_joint, 3)
        _small_init(self.mlp.last)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.mlp(feat).unflatten(-1, (self.num_joints, -1))
        return out[..., :2], (out[..., 2:] if self.with_sigma else None)


class ClassHead(nn.Module):
    """Person-vs-no-object logit: feat [B, Q, in_dim] -> [B, Q, 1]. Bias starts at a prior of 0.01 (focal-loss
    practice) so that the early loss is not dominated by the many unmatched queries."""

    def __init__(self, in_dim: int, prior_prob: float = 0.01) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, 1)
        nn.init.constant_(self.linear.bias, -math.log((1.0 - prior_prob) / prior_prob))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.linear(feat)


class MaskHead(nn.Module):
    """Per-query mask embedding dotted with the per-pixel embedding.

    forward(feat [B, Q, in_dim], mask_features [B, D, h, w]) -> mask logits [B, Q, h, w].
    """

    def __init__(self, in_dim: int, hidden_dim: int, mask_dim: int) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, hidden_dim, mask_dim, 3)

    def forward(self, feat: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bqc,bchw->bqhw", self.mlp(feat), mask_features)
