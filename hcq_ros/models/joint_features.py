"""Per-joint local refinement for HCQNet's pose (``HCQConfig.pose_joint_features``).

The query-level ``PoseHead`` regresses all 17 joints from one query vector, which must then encode the whole
articulation; trained on CPU for a few thousand iterations it stays close to the template pose (measured: the
mean joint error of the shipped run-1 model equals that of the template placed in its predicted box). This
head adds cascaded-regression evidence: every decoder layer reads the 1/4-resolution mask features AT each
joint's current estimate and predicts that joint's correction from what it sees there, so the mapping it has to
learn is local (appearance around a point -> direction to the joint) instead of global.

Sampling goes through the multi-scale deformable attention core with one level, one head, one point and weight
1 (a plain bilinear read): the onnxruntime export then holds GridSample and the TensorRT export one more
``MultiscaleDeformableAttnPlugin_TRT`` node per decoder layer, never a raw GridSample (see runtime/export.py).
"""
from __future__ import annotations

import torch
from torch import nn

from hcq_ros.models.heads import MLP, NUM_JOINTS, _small_init
from hcq_ros.ops.ms_deform_attn import ms_deform_attn


class JointFeatureSampler:
    """Bilinear reads of one feature map at many points, through ``ms_deform_attn`` (exportable both ways).

    JointFeatureSampler(features [B, C, H, W]); sample(points [B, Q, J, 2] normalised image xy) -> [B, Q, J, C].
    Coordinates follow grid_sample(align_corners=False): 0 and 1 are the map's outer edges; far outside -> 0.
    """

    def __init__(self, features: torch.Tensor) -> None:
        if features.dim() != 4:
            raise ValueError(f"features must be [B, C, H, W], got {list(features.shape)}")
        b, c, h, w = features.shape
        self.value = features.flatten(2).transpose(1, 2).unsqueeze(2)      # [B, H*W, 1 head, C]
        self.shapes = [(h, w)]
        self.channels = c

    def sample(self, points: torch.Tensor) -> torch.Tensor:
        if points.dim() != 4 or points.shape[-1] != 2:
            raise ValueError(f"points must be [B, Q, J, 2], got {list(points.shape)}")
        b, q, j, _ = points.shape
        locations = points.reshape(b, q * j, 1, 1, 1, 2).to(self.value.dtype)
        weights = locations.new_ones(b, q * j, 1, 1, 1)
        out = ms_deform_attn(self.value, self.shapes, [0], locations, weights)   # [B, Q*J, C]
        return out.reshape(b, q, j, self.channels)


class JointFeatureHead(nn.Module):
    """One decoder layer's per-joint correction.

    forward(feat [B, Q, in_dim] query features, sampled [B, Q, 17, feat_dim] features at the joints) ->
    (delta [B, Q, 17, 2] in the model's pose space, sigma_logit [B, Q, 17, 2] or None), both added to the
    query-level PoseHead's outputs. The last layer starts near zero, so a warm start from a checkpoint without
    this head begins at that checkpoint's predictions.
    """

    def __init__(self, in_dim: int, feat_dim: int, hidden_dim: int, with_sigma: bool,
                 num_joints: int = NUM_JOINTS) -> None:
        super().__init__()
        self.with_sigma = with_sigma
        self.query_proj = nn.Linear(in_dim, hidden_dim)
        self.feat_proj = nn.Linear(feat_dim, hidden_dim)
        self.joint_embed = nn.Embedding(num_joints, hidden_dim)               # which joint this point should be
        self.mlp = MLP(hidden_dim, hidden_dim, 4 if with_sigma else 2, 2)
        _small_init(self.mlp.last)

    def forward(self, feat: torch.Tensor, sampled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = torch.relu(self.query_proj(feat).unsqueeze(-2) + self.feat_proj(sampled) + self.joint_embed.weight)
        out = self.mlp(hidden)
        return out[..., :2], (out[..., 2:] if self.with_sigma else None)
