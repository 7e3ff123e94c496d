"""HCQNet: one-pass person detection, instance segmentation and pose with human-centric queries (DESIGN.md §5).

Each query is a content embedding E_q [D] plus learnable keypoints K_q = [p0, p1, p2..p18]: p0/p1 are the box
corners (normalised image xy), p2..p18 the 17 COCO joints in the box's canonical space
(``joint_img = p0 + p_i * (p1 - p0)``; ``pose_space="image"`` keeps them in normalised image xy instead).
Per decoder layer: positional query P = MLP3(sine(K)); self-attention on E + P; multi-scale deformable
cross-attention sampling offset points around the box *and* the query's joints (split across heads); FFN; then
box and pose heads refine K (corner deltas in logit space, joint deltas in canonical space, or in logit space
for image-space joints); the refined K is detached before the next layer, as in Deformable-DETR. Class and mask
heads read the last layer (and every layer for auxiliary losses). Heads read Cat(E, K) with
``keypoints_in_heads`` on.

The model returns raw outputs (DETR style): ``hcq_ros.train.losses`` computes the losses and
``hcq_ros.models.postprocess`` turns the outputs into per-image results. ``HCQConfig`` holds the
architecture, the ablation switches (``PRESETS``) and the loss settings, and is stored in checkpoints (it lives in
``hcq_config.py`` and is re-exported here).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from hcq_ros.models.flops import flops_by_group

from hcq_ros.models.backbone import build_backbone
from hcq_ros.models.joint_features import JointFeatureHead, JointFeatureSampler
from hcq_ros.models.heads import (CANONICAL_POSE_TEMPLATE, MLP, NUM_JOINTS, BoxHead, ClassHead, MaskHead,
                                  PoseHead, canonical_to_image, corners_to_cxcywh, corners_to_xyxy,
                                  inverse_sigmoid, sine_embed)
from hcq_ros.models.pixel_decoder import MSDeformPixelDecoder
from hcq_ros.models.query_selection import EncoderQuerySelection
from hcq_ros.ops.ms_deform_attn import MSDeformAttn

from hcq_ros.models.hcq_config import (CLASS_LOSSES, POSE_SPACES, PRESETS, PROFILES, QUERY_INITS,  # noqa: F401
                                       REGRESSION_LOSSES, TASKS, HCQConfig)


class HCQDecoderLayer(nn.Module):
    """Post-norm: E = LN(E + SelfAttn(E + P)); E = LN(E + MSDeformAttn(E + P, box, joints)); E = LN(E + FFN(E)).

    forward(tgt [B, Q, D], query_pos [B, Q, D], reference_boxes [B, Q, 4] cxcywh normalised,
    extra_points [B, Q, M, n_extra_points, 2] normalised xy or None, memory [B, S, D],
    spatial_shapes [(h, w)] * L, level_start_index [int] * L) -> [B, Q, D].
    Per head and level the cross-attention samples n_points offsets (scaled by the box) + the extra points.
    """

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, n_levels: int, n_points: int,
                 n_extra_points: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, n_extra_points)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, d_model))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt, query_pos, reference_boxes, extra_points, memory, spatial_shapes, level_start_index):
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(q, q, tgt, need_weights=False)[0]))
        attn = self.cross_attn(tgt + query_pos, reference_boxes, memory, spatial_shapes, level_start_index,
                               extra_points=extra_points)
        tgt = self.norm2(tgt + self.dropout(attn))
        return self.norm3(tgt + self.dropout(self.ffn(tgt)))


class HCQDecoder(nn.Module):
    """Query state (content embeddings + learnable keypoints), positional-query MLP and the decoder layers.

    The refinement loop itself runs in ``HCQNet.forward`` so that the heads stay separate modules.
    """

    def __init__(self, config: HCQConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.content = nn.Embedding(c.num_queries, c.d_model)                  # E_q
        # Box corners as logits of normalised xy: centres spread over the image, person-shaped (tall) boxes.
        centres = torch.rand(c.num_queries, 1, 2) * 0.8 + 0.1
        half = torch.tensor([0.1, 0.2])
        corners = torch.cat((centres - half, centres + half), dim=1).clamp(0.01, 0.99)   # [Q, 2, 2]
        # With encoder query selection the references come from the image (no corner parameters) and the
        # learned joints are canonical in both pose spaces (image-space joints are placed in the selected box).
        self.learned_corners = c.query_init == "learned"
        self.query_corners = nn.Parameter(inverse_sigmoid(corners)) if self.learned_corners else None
        self.register_buffer("pose_template", torch.tensor(CANONICAL_POSE_TEMPLATE), persistent=False)
        if c.query_keypoints:
            template = self.pose_template.expand(c.num_queries, -1, -1).clone()
            joints = template if (c.pose_space == "canonical" or not self.learned_corners) else inverse_sigmoid(
                canonical_to_image(corners, template).clamp(0.01, 0.99))
            self.query_joints = nn.Parameter(joints)                           # [Q, 17, 2]
        else:
            self.register_parameter("query_joints", None)
        n_coords = 2 * (2 + (NUM_JOINTS if c.query_keypoints else 0))
        self.pos_feats = 2 * max(4, c.d_model // 8)                             # sine features per coordinate
        self.pos_mlp = MLP(n_coords * self.pos_feats, c.d_model, c.d_model, 3)
        # Joints split across heads: head m samples joints joint_index[m] (ceil(17/M) each, a few repeated).
        per_head = math.ceil(NUM_JOINTS / c.n_heads)
        self.layers = nn.ModuleList(
            HCQDecoderLayer(c.d_model, c.n_heads, c.ffn_dim, 3, c.dec_offset_points,
                            per_head if c.keypoints_in_attention else 0, c.dropout)
            for _ in range(c.dec_layers))
        index = torch.arange(c.n_heads * per_head) % NUM_JOINTS
        self.register_buffer("joint_index", index.reshape(c.n_heads, per_head), persistent=False)

    def initial_state(self, batch: int, corners: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> content [B, Q, D], corners [B, Q, 2, 2] normalised xy, joints [B, Q, 17, 2] (pose space) or None.

        corners: the selected proposals [B, Q, 2, 2] (query_init "encoder"; required then, ignored otherwise)."""
        content = self.content.weight.unsqueeze(0).expand(batch, -1, -1)
        if self.learned_corners:
            corners = self.query_corners.sigmoid().unsqueeze(0).expand(batch, -1, -1, -1)
        elif corners is None:
            raise ValueError("query_init 'encoder' needs the selected proposal corners")
        joints = None
        if self.query_joints is not None:
            joints = self.query_joints.unsqueeze(0).expand(batch, -1, -1, -1)
            if self.config.pose_space == "image":
                joints = joints.sigmoid() if self.learned_corners else canonical_to_image(corners, joints).clamp(
                    0.01, 0.99)
        return content, corners, joints

    def keypoint_vector(self, corners: torch.Tensor, joints: torch.Tensor | None) -> torch.Tensor:
        """K flattened: [B, Q, 4] or [B, Q, 38] = (x0, y0, x1, y1, joint coords in pose space)."""
        parts = [corners.flatten(-2)] + ([joints.flatten(-2)] if joints is not None else [])
        return torch.cat(parts, dim=-1)

    def query_pos(self, keypoints_flat: torch.Tensor) -> torch.Tensor:
        """P = MLP3(Cat(sine(x0), sine(y0), ...)): [B, Q, n_coords] -> [B, Q, D]."""
        return self.pos_mlp(sine_embed(keypoints_flat, self.pos_feats))

    def attention_points(self, joints_image: torch.Tensor) -> torch.Tensor:
        """joints [B, Q, 17, 2] normalised image xy -> per-head sampling points [B, Q, M, ceil(17/M), 2]."""
        return joints_image[:, :, self.joint_index]


class HCQNet(nn.Module):
    """Backbone -> pixel decoder -> HCQ decoder -> heads. See the module docstring and ``HCQConfig``.

    forward(images [B, 3, H, W] float, normalised; H, W multiples of 32) -> dict of raw outputs:
        pred_logits [B, Q, 1]; pred_boxes [B, Q, 4] normalised xyxy (x0 < x1); pred_box_sigma [B, Q, 4]
        (RLE scale in units of the person's box size, sigmoid; only with box_loss "rle");
        pred_keypoints [B, Q, 17, 2] normalised image xy and pred_kpt_sigma [B, Q, 17, 2] (only with pose,
        sigma only with pose_loss "rle"); pred_masks [B, Q, H/4, W/4] logits;
        aux_outputs: list (one per earlier decoder layer) of dicts with the same keys (with_aux only);
        enc_outputs (query_init "encoder", with_aux only): pred_logits [B, S, 1], pred_boxes [B, S, 4] normalised
        xyxy of every memory token's proposal.
    """

    def __init__(self, config: HCQConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        self.backbone = build_backbone(c.profile, norm=c.backbone_norm)
        self.pixel_decoder = MSDeformPixelDecoder(self.backbone.out_channels, c.d_model, c.mask_dim, c.enc_layers,
                                                  c.n_heads, c.enc_points, c.ffn_dim, c.dropout, c.enc_query_levels)
        self.decoder = HCQDecoder(c)
        self.query_selection = EncoderQuerySelection(c.d_model) if c.query_init == "encoder" else None
        head_in = c.d_model + (2 * (2 + NUM_JOINTS) if c.keypoints_in_heads else 0)
        self.class_head = ClassHead(head_in)
        self.mask_head = MaskHead(head_in, c.d_model, c.mask_dim)
        # Refinement heads are per layer (Deformable-DETR's iterative refinement); class/mask heads are shared.
        self.box_heads = nn.ModuleList(BoxHead(head_in, c.d_model, c.box_loss == "rle") for _ in range(c.dec_layers))
        self.pose_heads = nn.ModuleList(
            PoseHead(head_in, c.d_model, c.pose_loss == "rle") for _ in range(c.dec_layers)) if c.with_pose else None
        self.joint_heads = nn.ModuleList(
            JointFeatureHead(head_in, c.mask_dim, c.d_model // 2, c.pose_loss == "rle") for _ in range(c.dec_layers)
        ) if c.pose_joint_features else None

    @staticmethod
    def check_images(images: torch.Tensor) -> None:
        """Raise ValueError naming what is wrong unless images is a non-empty float [B, 3, H, W], H, W % 32 == 0."""
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor [B, 3, H, W], got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {list(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be a float tensor (normalised), got dtype {images.dtype}")
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch (B = 0)")
        h, w = images.shape[-2:]
        if h % 32 or w % 32 or h == 0 or w == 0:
            raise ValueError(f"image height and width must be positive multiples of 32, got H={h}, W={w}")

    def forward(self, images: torch.Tensor, with_aux: bool | None = None) -> dict:
        """with_aux: compute class/mask heads for every layer (default: in training mode only)."""
        self.check_images(images)
        c = self.config
        with_aux = self.training if with_aux is None else with_aux
        enc = self.pixel_decoder(self.backbone(images))
        memory, shapes, starts = enc["memory"], enc["level_shapes"], enc["level_starts"]
        selected = None
        if self.query_selection is not None:
            selected = self.query_selection(memory, shapes, c.num_queries)
        content, corners, joints = self.decoder.initial_state(images.shape[0],
                                                              None if selected is None else selected["corners"])
        sampler = JointFeatureSampler(enc["mask_features"]) if self.joint_heads is not None else None
        layer_outputs = []
        for i, layer in enumerate(self.decoder.layers):
            k_flat = self.decoder.keypoint_vector(corners, joints)
            query_pos = self.decoder.query_pos(k_flat)
            extra, sampled = None, None
            if c.keypoints_in_attention or sampler is not None:
                joints_in = canonical_to_image(corners, joints) if c.pose_space == "canonical" else joints
                extra = self.decoder.attention_points(joints_in) if c.keypoints_in_attention else None
                sampled = sampler.sample(joints_in) if sampler is not None else None
            content = layer(content, query_pos, corners_to_cxcywh(corners), extra, memory, shapes, starts)
            feat = torch.cat((content, k_flat), dim=-1) if c.keypoints_in_heads else content

            delta, box_sigma = self.box_heads[i](feat)
            new_corners = (inverse_sigmoid(corners) + delta).sigmoid()
            boxes, box_sigma = corners_to_xyxy(new_corners, None if box_sigma is None else box_sigma.sigmoid())
            out = {"pred_boxes": boxes}
            if box_sigma is not None:
                out["pred_box_sigma"] = box_sigma
            new_joints = None
            if self.pose_heads is not None:
                new_joints, joints_img, kpt_sigma = self._refine_joints(i, feat, joints, new_corners, sampled)
                out["pred_keypoints"] = joints_img
                if kpt_sigma is not None:
                    out["pred_kpt_sigma"] = kpt_sigma.sigmoid()
            if with_aux or i == len(self.decoder.layers) - 1:
                out["pred_logits"] = self.class_head(feat)
                out["pred_masks"] = self.mask_head(feat, enc["mask_features"])
            layer_outputs.append(out)
            # Detach between layers: each layer learns a delta w.r.t. a fixed reference.
            corners = new_corners.detach()
            joints = new_joints.detach() if (new_joints is not None and c.query_keypoints) else None
        result = dict(layer_outputs[-1])
        result["aux_outputs"] = layer_outputs[:-1] if with_aux else []
        if with_aux and selected is not None:
            result["enc_outputs"] = {"pred_logits": selected["enc_logits"], "pred_boxes": selected["enc_boxes"]}
        return result

    def _refine_joints(self, i: int, feat: torch.Tensor, joints: torch.Tensor | None, new_corners: torch.Tensor,
                       sampled: torch.Tensor | None = None):
        """-> (joints in pose space [B, Q, 17, 2], joints normalised image xy [B, Q, 17, 2], sigma logits or None).

        With query keypoints the head refines the query's joints; without, it regresses them directly (canonical:
        offsets from the template pose in the refined box; image: logit offsets from the refined box centre, as
        PETR regresses joints around a reference point). sampled [B, Q, 17, mask_dim]: features at the input
        joints; the joint-feature head's correction is added (pose_joint_features)."""
        delta, sigma = self.pose_heads[i](feat)
        if sampled is not None:
            local_delta, local_sigma = self.joint_heads[i](feat, sampled)
            delta = delta + local_delta
            sigma = None if sigma is None else sigma + local_sigma
        canonical = self.config.pose_space == "canonical"
        if joints is not None:
            new_joints = joints + delta if canonical else (inverse_sigmoid(joints) + delta).sigmoid()
        elif canonical:
            new_joints = self.decoder.pose_template + delta
        else:
            centre = inverse_sigmoid(new_corners.detach().mean(dim=-2, keepdim=True))
            new_joints = (centre + delta).sigmoid()
        joints_img = canonical_to_image(new_corners, new_joints) if canonical else new_joints
        return new_joints, joints_img, sigma


CHECKPOINT_CONFIG_KEY = "hcq_config"


def save_checkpoint(path: str | Path, model: HCQNet, **extra) -> None:
    """Write {"hcq_config": config dict, "model": state_dict, **extra} with torch.save."""
    torch.save({CHECKPOINT_CONFIG_KEY: model.config.to_dict(), "model": model.state_dict(), **extra}, str(path))


def load_checkpoint(path: str | Path, requested: HCQConfig | None = None,
                    map_location: str | torch.device = "cpu") -> HCQNet:
    """Build the model stored in a checkpoint and load its weights.

    requested: the architecture the caller expects; if its architecture fields differ from the stored config a
    ValueError names every mismatched key (loss settings are ignored). Missing file -> FileNotFoundError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HCQNet checkpoint not found: {path}")
    ckpt = torch.load(str(path), map_location=map_location, weights_only=False)
    if not isinstance(ckpt, dict) or CHECKPOINT_CONFIG_KEY not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path} is not an HCQNet checkpoint (needs keys {CHECKPOINT_CONFIG_KEY!r}, 'model')")
    stored = HCQConfig.from_dict(ckpt[CHECKPOINT_CONFIG_KEY])
    if requested is not None:
        diffs = stored.architecture_mismatches(requested)
        if diffs:
            raise ValueError(f"checkpoint {path} does not match the requested config: " + "; ".join(diffs))
    model = HCQNet(stored)
    model.load_state_dict(ckpt["model"])
    return model


FLOP_GROUPS = ("backbone", "pixel_decoder", "query_selection", "decoder", "class_head", "box_heads", "pose_heads",
               "joint_heads", "mask_head")


def flops_by_module(model: HCQNet, image_size: tuple[int, int]) -> dict[str, int]:
    """FLOPs of one forward pass at image_size (H, W), per top-level part, plus "total".

    Counted with torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions, attention) plus a bilinear
    grid_sample formula for the deformable attention; element-wise ops and norms are not counted. Inference
    mode (no auxiliary heads). Runs with autograd enabled: FlopCounterMode's module tracker needs it.
    """
    param = next(model.parameters())
    images = torch.zeros(1, 3, *image_size, dtype=param.dtype, device=param.device)
    return flops_by_group(model, images, FLOP_GROUPS)
