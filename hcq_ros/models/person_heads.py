"""PersonNet heads (DESIGN.md §6): ReID embedding, attribute classifiers, heatmap pose with soft-argmax, and the
Panoptic-FPN-style part segmentation branch. ``hcq_ros.models.person_net`` wires them to the backbone.

Every head works for an empty batch (B = 0) and exports to ONNX (no data-dependent Python control flow).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hcq_ros.models.backbone import make_norm
from hcq_ros.ops.deform_conv import DeformConv2d


def global_max_pool(feature: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w] -> [B, C]`` (max over all positions)."""
    return feature.amax(dim=(2, 3))


def conv_norm_relu(in_ch: int, out_ch: int, kernel_size: int, norm: str, deformable: bool = False,
                   relu: bool = True) -> nn.Sequential:
    """kxk conv (no bias; deformable 3x3 if asked) -> norm -> ReLU (if relu), spatial size kept."""
    if deformable:
        if kernel_size != 3:
            raise ValueError(f"deformable conv needs kernel_size 3, got {kernel_size}")
        conv: nn.Module = DeformConv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False)
    else:
        conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
    layers = [conv, make_norm(norm, out_ch)] + ([nn.ReLU(inplace=True)] if relu else [])
    return nn.Sequential(*layers)


class ReIDHead(nn.Module):
    """Pooled feature -> embedding (BNNeck of Luo et al. optional) -> identity classifier (optional).

    forward(pooled [B, C]) -> dict:
        ``reid_features [B, D]``: the linear projection, the feature the triplet loss reads;
        ``embedding [B, D]``: L2-normalised ``reid_features`` (or its BatchNorm'ed version with ``bn_neck``), the
            inference descriptor compared by cosine similarity in the tracker;
        ``id_logits [B, num_identities]``: FC on the BatchNorm'ed feature (only when num_identities > 0).
    """

    def __init__(self, in_channels: int, embedding_dim: int, bn_neck: bool, num_identities: int) -> None:
        super().__init__()
        self.bn_neck = bn_neck
        self.project = nn.Linear(in_channels, embedding_dim)
        self.neck = None
        if bn_neck or num_identities > 0:
            self.neck = nn.BatchNorm1d(embedding_dim)
            self.neck.bias.requires_grad_(False)  # BNNeck: a shift would only move the classifier's hyperplanes
        self.classifier = nn.Linear(embedding_dim, num_identities, bias=False) if num_identities > 0 else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, pooled: torch.Tensor, with_train_outputs: bool) -> dict[str, torch.Tensor]:
        features = self.project(pooled)
        normed = self.neck(features) if self.neck is not None else features
        out = {"embedding": F.normalize(normed if self.bn_neck else features, dim=1)}
        if with_train_outputs:
            out["reid_features"] = features
            if self.classifier is not None:
                out["id_logits"] = self.classifier(normed)
        return out


class AttributeHead(nn.Module):
    """One BN -> ReLU -> FC classifier per attribute on the pooled feature.

    forward(pooled [B, C]) -> list of ``[B, num_values[i]]`` logits, in the order of ``num_values``.
    """

    def __init__(self, in_channels: int, num_values: Sequence[int]) -> None:
        super().__init__()
        if not num_values or min(num_values) < 2:
            raise ValueError(f"every attribute needs >= 2 values, got {list(num_values)}")
        self.classifiers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm1d(in_channels), nn.ReLU(inplace=False), nn.Linear(in_channels, n))
            for n in num_values)

    def forward(self, pooled: torch.Tensor) -> list[torch.Tensor]:
        return [classifier(pooled) for classifier in self.classifiers]


def soft_argmax(heatmaps: torch.Tensor, offsets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Differentiable heatmap decoding in crop-normalised coordinates.

    Args:
        heatmaps: ``[B, K, h, w]`` logits; a softmax over the h*w cells gives each joint's distribution.
        offsets: ``[B, K, 2, h, w]`` (dx, dy) per cell in cell units, or None; the expected offset under the
            distribution is added to the expected cell centre ("heatmap offset refinement").
    Returns:
        xy ``[B, K, 2]`` in [0, 1] (cell i spans [i/w, (i+1)/w]; x = E[(i + 0.5) / w] + E[dx] / w),
        confidence ``[B, K]`` = probability mass in the 3x3 cells around the most likely cell, in (0, 1]
        (a sharp peak scores ~1 even when it straddles two cells; a flat map scores ~9 / (h*w)),
        probabilities ``[B, K, h, w]``.
    """
    b, k, h, w = heatmaps.shape
    prob = torch.softmax(heatmaps.reshape(b, k, h * w), dim=-1).reshape(b, k, h, w)
    centres_x = (torch.arange(w, dtype=heatmaps.dtype, device=heatmaps.device) + 0.5) / w
    centres_y = (torch.arange(h, dtype=heatmaps.dtype, device=heatmaps.device) + 0.5) / h
    x = (prob.sum(dim=2) * centres_x).sum(dim=-1)
    y = (prob.sum(dim=3) * centres_y).sum(dim=-1)
    if offsets is not None:
        x = x + (prob * offsets[:, :, 0]).sum(dim=(2, 3)) / w
        y = y + (prob * offsets[:, :, 1]).sum(dim=(2, 3)) / h
    local_mass = F.avg_pool2d(prob, 3, stride=1, padding=1, count_include_pad=True) * 9.0
    confidence = local_mass.amax(dim=(2, 3)).clamp(max=1.0)
    return torch.stack((x, y), dim=-1), confidence, prob


class PoseHead(nn.Module):
    """Heatmap pose head: its own small top-down path to ``stride``, a 3x3 refinement conv, 1x1 heatmaps.

    Why not heatmaps straight on the 1/16 map: a 128x64 crop gives an 8x4 grid of 16-pixel cells (a cell is a
    quarter of the crop's width), too coarse to keep wrist, elbow and hip apart; soft-argmax interpolates a single
    blob but cannot resolve nearby joints. At 1/8 (16x8) the top-down step costs one lateral 1x1 and one 3x3 at
    16x8 — small next to the backbone (see ``flops``) — so 1/8 is the default; 1/4 and 1/16 (the paper's plain
    1x1-on-the-last-map setting, kept for the ablation) are options. The top-down path has its own parameters and
    reads only the pose channels of the last stage plus the shared lower stages, so ``split_output`` still keeps
    the pose gradient off the ReID/attribute/part channels of the last stage.

    Args:
        in_channels: channels of the pose feature at 1/16.
        lateral_channels: ``{"res3": C3, "res2": C2}`` lower backbone levels (only those finer than 1/16 that
            ``stride`` needs are used).
        dim: width of the head; stride: 4 | 8 | 16; norm: "gn" | "bn".
        deformable: the 3x3 refinement conv is a DeformConv2d. offsets: predict sub-cell offsets.
        num_keypoints: heatmap channels (17).
    forward(top [B, in_channels, H/16, W/16], levels {name: [B, C, H/s, W/s]}, with_train_outputs) -> dict:
        ``keypoints [B, K, 2]`` crop-normalised xy, ``keypoint_conf [B, K]``, and with train outputs
        ``heatmaps [B, K, H/stride, W/stride]`` (logits).
    """

    STRIDES = (4, 8, 16)

    def __init__(self, in_channels: int, lateral_channels: dict[str, int], dim: int, stride: int, norm: str,
                 deformable: bool, offsets: bool, num_keypoints: int) -> None:
        super().__init__()
        if stride not in self.STRIDES:
            raise ValueError(f"pose stride must be one of {self.STRIDES}, got {stride}")
        self.levels = {16: (), 8: ("res3",), 4: ("res3", "res2")}[stride]
        self.num_keypoints = num_keypoints
        self.reduce = conv_norm_relu(in_channels, dim, 1, norm)
        self.laterals = nn.ModuleDict({lvl: nn.Conv2d(lateral_channels[lvl], dim, 1) for lvl in self.levels})
        self.smooth = nn.ModuleDict({lvl: conv_norm_relu(dim, dim, 3, norm) for lvl in self.levels})
        self.refine = conv_norm_relu(dim, dim, 3, norm, deformable=deformable)
        self.heatmap = nn.Conv2d(dim, num_keypoints, 1)
        self.offset = nn.Conv2d(dim, 2 * num_keypoints, 1) if offsets else None
        if self.offset is not None:  # start as plain soft-argmax
            nn.init.zeros_(self.offset.weight)
            nn.init.zeros_(self.offset.bias)

    def forward(self, top: torch.Tensor, levels: dict[str, torch.Tensor],
                with_train_outputs: bool) -> dict[str, torch.Tensor]:
        x = self.reduce(top)
        for lvl in self.levels:
            lateral = self.laterals[lvl](levels[lvl])
            x = self.smooth[lvl](lateral + F.interpolate(x, size=lateral.shape[-2:], mode="nearest"))
        x = self.refine(x)
        heatmaps = self.heatmap(x)
        offsets = None
        if self.offset is not None:
            b, _, h, w = heatmaps.shape
            # tanh bound: at most half a cell, so the decoded xy stays inside [0, 1].
            offsets = 0.5 * torch.tanh(self.offset(x)).reshape(b, self.num_keypoints, 2, h, w)
        xy, confidence, _ = soft_argmax(heatmaps, offsets)
        out = {"keypoints": xy, "keypoint_conf": confidence}
        if with_train_outputs:
            out["heatmaps"] = heatmaps
        return out


class PartsHead(nn.Module):
    """FPN + Panoptic FPN semantic branch -> part logits at the crop's full resolution.

    FPN: lateral 1x1 conv + norm per level (no activation, as detectron2's FPN), top-down sum (nearest upsampling to the finer level's size; res5 and
    res4 share 1/16 with last stride 1). Semantic branch (Kirillov et al. 2019): each level goes through
    max(1, log2(stride / 4)) blocks of 3x3 conv -> norm -> ReLU, each followed by 2x bilinear upsampling until 1/4;
    the 1/4 maps are summed, a 1x1 conv gives the class logits, bilinear upsampling gives full resolution.
    The semantic 3x3 blocks stand in for FPN's output 3x3 convs (one 3x3 per level fewer than the original).

    Args: in_channels / strides: per level name (res2..res5); fpn_dim, seg_dim: widths; num_classes; norm.
    forward(levels {name: [B, C, H/s, W/s]}, output_size (H, W)) -> ``[B, num_classes, H, W]`` logits.
    """

    def __init__(self, in_channels: dict[str, int], strides: dict[str, int], fpn_dim: int, seg_dim: int,
                 num_classes: int, norm: str) -> None:
        super().__init__()
        self.names = tuple(in_channels)  # fine to coarse
        if min(strides.values()) != 4:
            raise ValueError(f"the part branch needs a 1/4 level, got strides {strides}")
        self.laterals = nn.ModuleDict({n: conv_norm_relu(c, fpn_dim, 1, norm, relu=False) for n, c in in_channels.items()})
        self.semantic = nn.ModuleDict()
        for name in self.names:
            ups = (strides[name] // 4).bit_length() - 1        # 4 -> 0, 8 -> 1, 16 -> 2
            blocks: list[nn.Module] = []
            for i in range(max(1, ups)):
                blocks.append(conv_norm_relu(fpn_dim if i == 0 else seg_dim, seg_dim, 3, norm))
                if i < ups:
                    blocks.append(nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False))
            self.semantic[name] = nn.Sequential(*blocks)
        self.classifier = nn.Conv2d(seg_dim, num_classes, 1)

    def forward(self, levels: dict[str, torch.Tensor], output_size: tuple[int, int]) -> torch.Tensor:
        pyramid: dict[str, torch.Tensor] = {}
        previous = None
        for name in reversed(self.names):  # coarse to fine
            p = self.laterals[name](levels[name])
            if previous is not None:
                p = p + F.interpolate(previous, size=p.shape[-2:], mode="nearest")
            pyramid[name] = previous = p
        summed = None
        for name in self.names:
            s = self.semantic[name](pyramid[name])
            summed = s if summed is None else summed + s
        logits = self.classifier(summed)
        return F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
