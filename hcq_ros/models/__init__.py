"""Networks: the ResNet backbone here; pixel decoder, HCQNet, PersonNet and heads in their own modules."""
from __future__ import annotations

from hcq_ros.models.backbone import (LEVELS, PROFILES, ResNet, ResNetConfig, build_backbone, group_norm_groups,
                                     make_norm)

__all__ = ["LEVELS", "PROFILES", "ResNet", "ResNetConfig", "build_backbone", "group_norm_groups", "make_norm"]
