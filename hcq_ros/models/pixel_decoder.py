"""Pixel decoder: a multi-scale deformable-attention encoder over res3..res5 and a 1/4-resolution per-pixel
embedding (Mask2Former's MSDeformAttn pixel decoder, GroupNorm throughout).

    res3 (1/8), res4 (1/16), res5 (1/32) -> 1x1 conv + GN to d_model -> + level embedding, + sine position
    -> N x [MSDeformAttn self-attention -> FFN]; queries = the pixels of the ``query_levels`` coarsest levels,
       sampling from all three levels (flattened)
    -> levels that were not queries: + the next coarser level upsampled x2 (FPN top-down)  = multi-scale memory
    memory's 1/8 map, upsampled x2, + lateral 1x1 conv + GN of res2 -> depthwise 3x3 + 1x1 conv to mask_dim
    + GN + ReLU -> 1x1 conv
    = mask_features [B, mask_dim, H/4, W/4]

``query_levels`` = 3 is Mask2Former's encoder. Fewer query levels is RT-DETR's finding (Zhao et al. 2023,
"DETRs Beat YOLOs on Real-time Object Detection"): attention among the coarse tokens and a CNN top-down path for
the fine ones lose little accuracy; at 320x320 the 1/8 level holds 1600 of the 2100 tokens, so encoding only
1/16 + 1/32 cuts the encoder's work about four-fold.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hcq_ros.models.backbone import make_norm
from hcq_ros.models.heads import sine_embed
from hcq_ros.ops.ms_deform_attn import MSDeformAttn

ENCODER_LEVELS = ("res3", "res4", "res5")


def position_embedding_sine(height: int, width: int, d_model: int, device: torch.device) -> torch.Tensor:
    """2-D sine position of every pixel centre, normalised to [0, 1]: returns [H * W, d_model] (x half, y half)."""
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)          # [H, W, 2] (x, y)
    return sine_embed(grid.reshape(-1, 2), d_model // 2)


def pixel_reference_points(spatial_shapes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """Normalised xy of every pixel centre of every level, flattened level after level: [S, 2]."""
    points = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        points.append(torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2))
    return torch.cat(points, dim=0)


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: q = LN(q + MSDeformAttn(q + pos, value)); q = LN(q + FFN(q)).

    forward(query [B, Q, D], pos [B or 1, Q, D], reference_points [B, Q, 2], value [B, S, D] (all levels,
    flattened), spatial_shapes [(h, w)] * L, level_start_index [int] * L) -> [B, Q, D].
    """

    def __init__(self, d_model: int, ffn_dim: int, n_levels: int, n_heads: int, n_points: int,
                 dropout: float) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, d_model))
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                spatial_shapes: list[tuple[int, int]], level_start_index: list[int]) -> torch.Tensor:
        attn = self.self_attn(query + pos, reference_points, value, spatial_shapes, level_start_index)
        query = self.norm1(query + self.dropout(attn))
        return self.norm2(query + self.dropout(self.ffn(query)))


class MSDeformPixelDecoder(nn.Module):
    """Multi-scale deformable encoder + per-pixel embedding.

    Args:
        in_channels: backbone channels per level; needs "res2" and ENCODER_LEVELS.
        d_model: width of the encoder and of the memory the HCQ decoder attends to.
        mask_dim: channels of the per-pixel embedding.
        num_layers, n_heads, n_points, ffn_dim, dropout: encoder size (n_points per head per level).
        query_levels: how many of the coarsest levels are encoder queries (1..3; see the module doc).
    forward(features {"res2": [B, C2, H/4, W/4], "res3": ..., "res5": [B, C5, H/32, W/32]}) -> dict:
        memory [B, S, D] (levels 1/8, 1/16, 1/32 flattened in that order, S = sum h_l * w_l),
        spatial_shapes [L, 2] long (h, w), level_start_index [L] long (and the same as Python ints:
        level_shapes [(h, w)] and level_starts [int], what the attention layers take),
        mask_features [B, mask_dim, H/4, W/4].
    """

    def __init__(self, in_channels: dict[str, int], d_model: int, mask_dim: int, num_layers: int,
                 n_heads: int, n_points: int, ffn_dim: int, dropout: float = 0.0, query_levels: int = 3) -> None:
        super().__init__()
        if not 1 <= query_levels <= len(ENCODER_LEVELS):
            raise ValueError(f"query_levels must be 1..{len(ENCODER_LEVELS)}, got {query_levels}")
        self.query_levels = query_levels
        missing = [k for k in ("res2",) + ENCODER_LEVELS if k not in in_channels]
        if missing:
            raise ValueError(f"pixel decoder needs backbone levels {missing}; got {sorted(in_channels)}")
        self.d_model, self.n_levels = d_model, len(ENCODER_LEVELS)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[k], d_model, 1), make_norm("gn", d_model)) for k in ENCODER_LEVELS)
        self.level_embed = nn.Parameter(torch.empty(self.n_levels, d_model))
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(d_model, ffn_dim, self.n_levels, n_heads, n_points, dropout)
            for _ in range(num_layers))
        self.lateral = nn.Sequential(nn.Conv2d(in_channels["res2"], d_model, 1, bias=False),
                                     make_norm("gn", d_model))
        # Depthwise-separable 3x3 at 1/4 resolution: a dense 3x3 conv there would cost more than the backbone.
        self.fuse = nn.Sequential(nn.Conv2d(d_model, d_model, 3, padding=1, groups=d_model, bias=False),
                                  nn.Conv2d(d_model, mask_dim, 1, bias=False), make_norm("gn", mask_dim),
                                  nn.ReLU(inplace=True))
        self.mask_proj = nn.Conv2d(mask_dim, mask_dim, 1)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.normal_(self.level_embed)
        for module in (*self.input_proj, self.lateral, self.fuse):
            for conv in module:
                if isinstance(conv, nn.Conv2d):
                    nn.init.xavier_uniform_(conv.weight, gain=1.0)
                    if conv.bias is not None:
                        nn.init.zeros_(conv.bias)
        nn.init.xavier_uniform_(self.mask_proj.weight)
        nn.init.zeros_(self.mask_proj.bias)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        srcs, pos, shapes = [], [], []
        for lvl, (name, proj) in enumerate(zip(ENCODER_LEVELS, self.input_proj)):
            x = proj(features[name])                                           # [B, D, h, w]
            h, w = x.shape[-2:]
            shapes.append((int(h), int(w)))
            srcs.append(x.flatten(2).transpose(1, 2))                          # [B, h*w, D]
            pos.append(position_embedding_sine(h, w, self.d_model, x.device).to(x.dtype)
                       + self.level_embed[lvl])
        src = torch.cat(srcs, dim=1)
        pos_embed = torch.cat(pos, dim=0).unsqueeze(0)                         # [1, S, D]
        device = src.device
        starts = [0]
        for h, w in shapes[:-1]:
            starts.append(starts[-1] + h * w)
        reference = pixel_reference_points(shapes, device).to(src.dtype).unsqueeze(0).expand(src.shape[0], -1, -1)
        # Python ints (not tensors) go to the attention so that export keeps the per-level reshapes static.
        first_query = self.n_levels - self.query_levels
        q0 = starts[first_query]
        fine, queries = src[:, :q0], src[:, q0:]
        for layer in self.layers:
            value = torch.cat([fine, queries], dim=1) if q0 else queries
            queries = layer(queries, pos_embed[:, q0:], reference[:, q0:], value, shapes, starts)
        # FPN top-down into the levels that were not queries, coarse to fine.
        maps = [src[:, s:s + h * w] for s, (h, w) in zip(starts[:first_query], shapes[:first_query])]
        coarser = queries[:, : shapes[first_query][0] * shapes[first_query][1]] if q0 else None
        for lvl in range(first_query - 1, -1, -1):
            (h, w), (hc, wc) = shapes[lvl], shapes[lvl + 1]
            up = F.interpolate(coarser.transpose(1, 2).reshape(-1, self.d_model, hc, wc), size=(h, w),
                               mode="bilinear", align_corners=False)
            maps[lvl] = maps[lvl] + up.flatten(2).transpose(1, 2)
            coarser = maps[lvl]
        src = torch.cat([*maps, queries], dim=1) if q0 else queries

        h8, w8 = shapes[0]
        fine = src[:, : h8 * w8].transpose(1, 2).reshape(src.shape[0], self.d_model, h8, w8)
        lateral = self.lateral(features["res2"])
        fused = lateral + F.interpolate(fine, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        mask_features = self.mask_proj(self.fuse(fused))
        return {"memory": src, "spatial_shapes": torch.as_tensor(shapes, dtype=torch.long, device=device),
                "level_start_index": torch.as_tensor(starts, dtype=torch.long, device=device),
                "level_shapes": shapes, "level_starts": starts, "mask_features": mask_features}
