"""Training of HCQNet: Hungarian matcher, criterion (class, mask, RLE box/pose losses).

``build_criterion(config)`` gives the criterion for an ``HCQConfig``; its RLE flows are trainable, so optimise
``[*model.parameters(), *criterion.parameters()]``.
"""
from __future__ import annotations

from hcq_ros.train.losses import HCQCriterion, build_criterion
from hcq_ros.train.matcher import HungarianMatcher
from hcq_ros.train.rle import RLELoss

__all__ = ["HCQCriterion", "HungarianMatcher", "RLELoss", "build_criterion"]
