"""Encoder query selection ("two-stage" queries): every memory token proposes a person box, the best K seed the
decoder's queries.

Deformable-DETR's two-stage variant, and DINO's *mixed* query selection (Zhang et al. 2022): the selected
proposals give each query its reference box; its content embedding and its joints stay learned per query slot.
Why HCQNet `small` uses it: with learned static references, a query has to learn where people tend to be from
the set loss alone, which converged slowly when training from scratch on 2 CPU cores (bbox AP 0.10 after 6000
iterations); the proposals are a dense, per-token task (like a one-stage detector) and put the references on the
people from the first layer on. The criterion trains the proposals with a one-to-many Hungarian assignment
(each person repeated ``enc_repeats`` times, H-DETR's hybrid matching), which supervises many more tokens.

Per token t of level l (pixel centre c_t, normalised): an anchor box of width ``anchor_size * 2**l`` and twice
that height (people are tall), as corner logits; the head predicts corner deltas in logit space, like the
decoder's box refinement.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from hcq_ros.models.heads import MLP, inverse_sigmoid
from hcq_ros.models.pixel_decoder import pixel_reference_points


def anchor_corners(spatial_shapes: list[tuple[int, int]], anchor_size: float, device, dtype) -> torch.Tensor:
    """Anchor boxes of every token, flattened level after level: [S, 2, 2] normalised corner xy (clamped)."""
    centres = pixel_reference_points(spatial_shapes, device)                    # [S, 2]
    half = []
    for level, (h, w) in enumerate(spatial_shapes):
        width = anchor_size * 2.0 ** level
        half.append(torch.tensor([width / 2, width], device=device).expand(h * w, 2))
    half = torch.cat(half, dim=0)
    corners = torch.stack((centres - half, centres + half), dim=1)              # [S, 2, 2]
    return corners.clamp(0.01, 0.99).to(dtype)


class EncoderQuerySelection(nn.Module):
    """Proposal heads on the encoder memory and top-K selection.

    forward(memory [B, S, D], spatial_shapes [(h, w)] * L, k) -> dict:
        enc_logits [B, S, 1] person logit per token; enc_boxes [B, S, 4] normalised xyxy;
        corners [B, K, 2, 2] normalised corner xy of the K best tokens, detached (the decoder's first
        references); index [B, K] their token indices.
    ValueError if the memory has fewer than K tokens (the input image is too small).
    """

    def __init__(self, d_model: int, anchor_size: float = 0.05, prior_prob: float = 0.01) -> None:
        super().__init__()
        self.anchor_size = anchor_size
        self.proj = nn.Sequential(nn.Linear(d_model, d_model), nn.LayerNorm(d_model))
        self.class_head = nn.Linear(d_model, 1)
        self.box_head = MLP(d_model, d_model, 4, 3)
        nn.init.constant_(self.class_head.bias, -math.log((1.0 - prior_prob) / prior_prob))
        nn.init.zeros_(self.box_head.last.weight)   # proposals start as the anchors
        nn.init.zeros_(self.box_head.last.bias)

    def forward(self, memory: torch.Tensor, spatial_shapes: list[tuple[int, int]], k: int) -> dict:
        b, s, _ = memory.shape
        if s < k:
            raise ValueError(f"encoder query selection needs >= {k} memory tokens, the image gives {s} "
                             f"(levels {spatial_shapes}); use a larger input")
        x = self.proj(memory)
        logits = self.class_head(x)                                            # [B, S, 1]
        anchors = inverse_sigmoid(anchor_corners(spatial_shapes, self.anchor_size, memory.device, x.dtype))
        corners = (anchors.unsqueeze(0) + self.box_head(x).reshape(b, s, 2, 2)).sigmoid()
        ordered = torch.stack((torch.minimum(corners[:, :, 0], corners[:, :, 1]),
                               torch.maximum(corners[:, :, 0], corners[:, :, 1])), dim=2)    # x0 < x1, y0 < y1
        index = logits[..., 0].topk(k, dim=1).indices                          # [B, K]
        top = torch.gather(ordered, 1, index[:, :, None, None].expand(-1, -1, 2, 2))
        return {"enc_logits": logits, "enc_boxes": ordered.flatten(2), "corners": top.detach(), "index": index}
