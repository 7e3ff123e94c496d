"""FLOPs per top-level part of a network with ``torch.utils.flop_counter.FlopCounterMode`` (shared by HCQNet's and
PersonNet's cost reports)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode


def _grid_sample_flops(input_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    """Bilinear sampling: 4 multiply-adds per output element (FlopCounterMode has no formula for it)."""
    return 2 * 4 * math.prod(out_shape)


def flops_by_group(model: torch.nn.Module, inputs: torch.Tensor, groups: Sequence[str]) -> dict[str, int]:
    """FLOPs of one inference forward of ``model(inputs)`` per attribute name in ``groups`` (those that exist),
    plus "total". Matmuls, convolutions and attention are counted, plus a bilinear grid_sample formula;
    element-wise ops and norms are not. Runs with autograd on (the counter's module tracker needs it) and
    restores the model's train/eval mode."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.grid_sampler_2d: _grid_sample_flops})
    try:
        with counter:
            model(inputs)
    finally:
        model.train(was_training)
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    result = {}
    for group in groups:
        if getattr(model, group, None) is None:
            continue
        # A module's count includes everything run while it was active, so sum only the outermost modules of
        # the group that ran (e.g. HCQNet's per-layer heads are called from HCQNet.forward).
        prefix = f"{root}.{group}"
        names = [n for n in counts if n == prefix or n.startswith(prefix + ".")]
        outermost = [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]
        result[group] = int(sum(counts[n] for n in outermost))
    result["total"] = int(counter.get_total_flops())
    return result
