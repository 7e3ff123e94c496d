"""ResNet backbone with a norm choice (GroupNorm default, BatchNorm for ablation) and multi-scale outputs.

Outputs a dict of feature maps ``{"res2": [N, C2, H/4, W/4], "res3": [.., H/8], "res4": [.., H/16],
"res5": [.., H/32]}`` (``res5`` at H/16 with ``last_stride=1``, the PersonNet setting; no dilation is added).
Spatial sizes follow conv arithmetic, i.e. ``ceil`` of the division for sizes that are not multiples.

Profiles (``PROFILES``):
- ``small``: narrow ResNet-18-like, BasicBlock [1, 1, 2, 1] at widths 32/64/128/256 with a two-conv 3x3 stem,
  for CPU real time (1.53 M parameters; 320x320 on one core: ~11 ms onnxruntime with GroupNorm, ~8 ms with
  BatchNorm; the full [2, 2, 2, 2] depth measured ~16 ms, over the CPU budget);
- ``base``: ResNet-50 (Bottleneck [3, 4, 6, 3], widths 256..2048, 7x7 stem + max-pool), stride on the 3x3
  conv ("ResNet v1.5"); with BatchNorm its parameter count equals torchvision's resnet50 without the fc.

GroupNorm group rule (``group_norm_groups``): the largest divisor of C that is <= 32 and leaves at least 4
channels per group, e.g. C=32 -> 8, 64 -> 16, >=128 (powers of two) -> 32. Groups of 1-2 channels degrade to
instance norm, which loses the cross-channel statistics GroupNorm is meant to keep.

Deformable refinement: ``deform_stages=n`` replaces the 3x3 conv of every block in the last n stages with a
modulated deformable conv (``hcq_ros.ops.deform_conv.DeformConv2d``): ``conv2`` in both block types (in the
Bottleneck it is the strided 3x3; in the BasicBlock the second, stride-1 3x3). At init the deformable conv
equals the plain conv (zero offsets, unit mask).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from hcq_ros.ops.deform_conv import DeformConv2d

LEVELS = ("res2", "res3", "res4", "res5")
NORMS = ("gn", "bn")


@dataclass(frozen=True)
class ResNetConfig:
    """Architecture of one profile.

    block: "basic" (two 3x3 convs) or "bottleneck" (1x1 -> 3x3 -> 1x1, inner width = width / expansion).
    depths: blocks per stage res2..res5.
    widths: output channels of stages res2..res5.
    stem: "deep" (3x3 s2 conv to stem_channels/2 -> 3x3 s2 conv to stem_channels; cheap on CPU) or
        "classic" (7x7 s2 conv to stem_channels -> 3x3 s2 max-pool). Both end at 1/4.
    stem_channels: channels after the stem.
    bottleneck_expansion: width / inner width of a Bottleneck (4 in ResNet-50).
    """

    block: str
    depths: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    stem: str
    stem_channels: int
    bottleneck_expansion: int = 4


PROFILES: dict[str, ResNetConfig] = {
    "small": ResNetConfig(block="basic", depths=(1, 1, 2, 1), widths=(32, 64, 128, 256), stem="deep",
                          stem_channels=32),
    "base": ResNetConfig(block="bottleneck", depths=(3, 4, 6, 3), widths=(256, 512, 1024, 2048),
                         stem="classic", stem_channels=64),
}


def group_norm_groups(channels: int, max_groups: int = 32, min_channels_per_group: int = 4) -> int:
    """Largest divisor of ``channels`` that is <= max_groups and keeps >= min_channels_per_group per group."""
    if channels <= 0:
        raise ValueError(f"channels must be positive, got {channels}")
    limit = max(1, min(max_groups, channels // min_channels_per_group))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


def make_norm(norm: str, channels: int) -> nn.Module:
    """``"gn"`` -> GroupNorm with ``group_norm_groups(channels)`` groups; ``"bn"`` -> BatchNorm2d."""
    if norm == "gn":
        return nn.GroupNorm(group_norm_groups(channels), channels)
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _conv3x3(in_ch: int, out_ch: int, stride: int, deformable: bool) -> nn.Module:
    if deformable:
        return DeformConv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def _shortcut(in_ch: int, out_ch: int, stride: int, norm: str) -> nn.Module:
    """Identity when shapes match, else strided 1x1 conv + norm (ResNet option B)."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), make_norm(norm, out_ch))


class BasicBlock(nn.Module):
    """3x3 (stride) -> norm -> ReLU -> 3x3 (deformable if asked) -> norm, + shortcut, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, deformable: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm, out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch, 1, deformable)
        self.norm2 = make_norm(norm, out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride, norm)
        self.relu = nn.ReLU(inplace=True)

    @property
    def last_norm(self) -> nn.Module:
        return self.norm2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride; deformable if asked) -> 1x1 expand, norm after each, + shortcut, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, deformable: bool = False,
                 expansion: int = 4) -> None:
        super().__init__()
        if out_ch % expansion:
            raise ValueError(f"Bottleneck width {out_ch} is not divisible by expansion {expansion}")
        mid = out_ch // expansion
        self.conv1 = nn.Conv2d(in_ch, mid, 1, bias=False)
        self.norm1 = make_norm(norm, mid)
        self.conv2 = _conv3x3(mid, mid, stride, deformable)
        self.norm2 = make_norm(norm, mid)
        self.conv3 = nn.Conv2d(mid, out_ch, 1, bias=False)
        self.norm3 = make_norm(norm, out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride, norm)
        self.relu = nn.ReLU(inplace=True)

    @property
    def last_norm(self) -> nn.Module:
        return self.norm3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        y = self.norm3(self.conv3(y))
        return self.relu(y + self.shortcut(x))


def _stem(config: ResNetConfig, in_channels: int, norm: str) -> nn.Sequential:
    c = config.stem_channels
    if config.stem == "classic":
        return nn.Sequential(nn.Conv2d(in_channels, c, 7, stride=2, padding=3, bias=False), make_norm(norm, c),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
    if config.stem == "deep":
        if c % 2:
            raise ValueError(f"deep stem needs even stem_channels, got {c}")
        return nn.Sequential(nn.Conv2d(in_channels, c // 2, 3, stride=2, padding=1, bias=False),
                             make_norm(norm, c // 2), nn.ReLU(inplace=True),
                             nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=False), make_norm(norm, c),
                             nn.ReLU(inplace=True))
    raise ValueError(f"stem must be 'classic' or 'deep', got {config.stem!r}")


class ResNet(nn.Module):
    """Multi-scale ResNet feature extractor.

    Args:
        config: the architecture (see ``PROFILES``).
        norm: "gn" (GroupNorm) or "bn" (BatchNorm2d).
        last_stride: 2 (res5 at 1/32) or 1 (res5 at 1/16, no dilation).
        deform_stages: 0..4, number of last stages whose 3x3 convs are deformable.
        in_channels: input image channels.
        out_features: levels to return, a subset of ``LEVELS``; None = all. Stages after the deepest requested
            level are not built.
    Forward: ``x [N, in_channels, H, W] -> {level: [N, out_channels[level], H / s, W / s]}``, s = strides[level].
    """

    def __init__(self, config: ResNetConfig, norm: str = "gn", last_stride: int = 2, deform_stages: int = 0,
                 in_channels: int = 3, out_features: Sequence[str] | None = None) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        if not 0 <= deform_stages <= 4:
            raise ValueError(f"deform_stages must be in 0..4, got {deform_stages}")
        if in_channels <= 0:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        if config.block not in ("basic", "bottleneck"):
            raise ValueError(f"config.block must be 'basic' or 'bottleneck', got {config.block!r}")
        out_features = tuple(LEVELS if out_features is None else out_features)
        unknown = [f for f in out_features if f not in LEVELS]
        if unknown or not out_features:
            raise ValueError(f"out_features must be a non-empty subset of {LEVELS}, got {out_features}")
        self.config, self.norm = config, norm
        self.out_features = tuple(f for f in LEVELS if f in out_features)
        num_stages = LEVELS.index(self.out_features[-1]) + 1

        self.stem = _stem(config, in_channels, norm)
        stage_strides = (1, 2, 2, last_stride)
        self._strides: dict[str, int] = {}
        self._channels: dict[str, int] = {}
        stages = []
        in_ch, total_stride = config.stem_channels, 4
        for i in range(num_stages):
            deformable = i >= 4 - deform_stages
            blocks = []
            for j in range(config.depths[i]):
                stride = stage_strides[i] if j == 0 else 1
                if config.block == "basic":
                    blocks.append(BasicBlock(in_ch, config.widths[i], stride, norm, deformable))
                else:
                    blocks.append(Bottleneck(in_ch, config.widths[i], stride, norm, deformable,
                                             config.bottleneck_expansion))
                in_ch = config.widths[i]
            stages.append(nn.Sequential(*blocks))
            total_stride *= stage_strides[i]
            self._strides[LEVELS[i]] = total_stride
            self._channels[LEVELS[i]] = config.widths[i]
        self.stages = nn.ModuleList(stages)
        self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming (fan_out, ReLU) convs, unit/zero norms, zero gamma on each block's last norm (identity blocks
        at init), zero offset predictors in deformable convs."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, DeformConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.last_norm.weight)
            elif isinstance(m, DeformConv2d):
                m.reset_offset_predictor()  # the blanket conv init above touched it

    @property
    def out_channels(self) -> dict[str, int]:
        """Channels of each returned level."""
        return {f: self._channels[f] for f in self.out_features}

    @property
    def strides(self) -> dict[str, int]:
        """Input-pixels-per-feature-pixel of each returned level."""
        return {f: self._strides[f] for f in self.out_features}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != self.stem[0].in_channels:
            raise ValueError(f"expected input [N, {self.stem[0].in_channels}, H, W], got {tuple(x.shape)}")
        x = self.stem(x)
        outputs: dict[str, torch.Tensor] = {}
        for level, stage in zip(LEVELS, self.stages):
            x = stage(x)
            if level in self.out_features:
                outputs[level] = x
        return outputs


def build_backbone(profile: str, norm: str = "gn", last_stride: int = 2, deform_stages: int = 0,
                   in_channels: int = 3, out_features: Sequence[str] | None = None) -> ResNet:
    """ResNet of a named profile ("small" | "base"); see ``ResNet`` for the other arguments."""
    if profile not in PROFILES:
        raise ValueError(f"unknown backbone profile {profile!r}; choose from {sorted(PROFILES)}")
    return ResNet(PROFILES[profile], norm=norm, last_stride=last_stride, deform_stages=deform_stages,
                  in_channels=in_channels, out_features=out_features)
