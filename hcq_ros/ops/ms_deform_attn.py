"""Multi-scale deformable attention (Deformable DETR) with the TensorRT plugin's shape contract.

Coordinate convention (identical to F.grid_sample(align_corners=False) and to TensorRT's
MultiscaleDeformableAttnPlugin_TRT kernel): a sampling location (x, y) is normalised to [0, 1] per level, where
0 and 1 are the OUTER EDGES of the feature map; the centre of pixel (row i, column j) of an H x W map sits at
((j + 0.5) / W, (i + 0.5) / H).  Bilinear interpolation with zero padding: a point half a pixel outside the map
still picks up part of the border pixel; points further out give 0.  In pixel units: x_px = x * W - 0.5.

Tensor contract of the core (N batch, S = sum_l H_l*W_l flattened keys, M heads, D channels per head,
Lq queries, L levels, P points per level):
    value               [N, S, M, D]
    spatial_shapes      [L, 2] int (H, W)       (or a sequence of (H, W) ints)
    level_start_index   [L] int                 (offset of each level inside S)
    sampling_locations  [N, Lq, M, L, P, 2]     normalised (x, y)
    attention_weights   [N, Lq, M, L, P]        already softmaxed
    output              [N, Lq, M * D]

Two execution paths share that contract: the pure-PyTorch reference (`ms_deform_attn_core`, grid_sample based,
exports to plain ONNX GridSample ops) and the registered custom op `torch.ops.hcq.ms_deform_attn` (output
[N, Lq, M, D], what the TensorRT plugin computes), used while `export_mode(trt=True)` is active so that the
ONNX exporter (see ms_deform_attn_onnx.py) or a torch-tensorrt converter can map it onto the plugin.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

SpatialShapes = torch.Tensor | Sequence[Sequence[int]]

_MODE = threading.local()
# Dtypes TensorRT's plugin accepts for value / sampling_locations / attention_weights.
TRT_PLUGIN_FLOAT_DTYPES = (torch.float32, torch.float16)


# ----------------------------------------------------------------------------------------------- mode switch
@contextlib.contextmanager
def export_mode(trt: bool) -> Iterator[None]:
    """Within the block every MSDeformAttn core call goes through the TensorRT-plugin custom op (trt=True) or
    through the grid_sample reference (trt=False).  Thread-local; nests and restores the previous mode."""
    if not isinstance(trt, bool):
        raise ValueError(f"export_mode(trt=...) expects a bool, got {trt!r}")
    previous = getattr(_MODE, "trt", False)
    _MODE.trt = trt
    try:
        yield
    finally:
        _MODE.trt = previous


def trt_mode_active() -> bool:
    """True inside `export_mode(trt=True)`."""
    return getattr(_MODE, "trt", False)


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


# ------------------------------------------------------------------------------------------ input handling
def spatial_shapes_list(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    """[L, 2] (H, W) tensor or sequence -> list of (H, W) Python ints (needed to split/reshape the value)."""
    if isinstance(spatial_shapes, torch.Tensor):
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
            raise ValueError(f"spatial_shapes must be [L, 2] (H, W), got shape {tuple(spatial_shapes.shape)}")
        if spatial_shapes.is_floating_point():
            raise ValueError(f"spatial_shapes must be an integer tensor, got {spatial_shapes.dtype}")
        if torch.compiler.is_exporting():
            raise ValueError("spatial_shapes is a tensor while exporting the grid_sample path: pass a list of "
                             "(H, W) ints so the per-level reshapes stay static")
        shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    else:
        shapes = [tuple(int(v) for v in hw) for hw in spatial_shapes]
        if any(len(hw) != 2 for hw in shapes):
            raise ValueError(f"spatial_shapes must hold (H, W) pairs, got {spatial_shapes!r}")
    if not shapes:
        raise ValueError("spatial_shapes is empty: need at least one level")
    if any(h <= 0 or w <= 0 for h, w in shapes):
        raise ValueError(f"spatial_shapes must be positive, got {shapes}")
    return shapes


def level_start_index_from_shapes(shapes: Sequence[tuple[int, int]]) -> list[int]:
    """[(H, W)] -> start offset of each level in the flattened S axis."""
    starts, total = [], 0
    for h, w in shapes:
        starts.append(total)
        total += h * w
    return starts


def _check_core_inputs(value: torch.Tensor, shapes: list[tuple[int, int]], level_start_index,
                       sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> None:
    if value.dim() != 4:
        raise ValueError(f"value must be [N, S, M, D], got shape {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(f"sampling_locations must be [N, Lq, M, L, P, 2], got {tuple(sampling_locations.shape)}")
    n, s, m, _ = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    if sampling_locations.shape[0] != n or sampling_locations.shape[2] != m or n_levels != len(shapes):
        raise ValueError(f"sampling_locations {tuple(sampling_locations.shape)} does not match value "
                         f"{tuple(value.shape)} (N, M) and {len(shapes)} levels")
    if tuple(attention_weights.shape) != (n, lq, m, n_levels, n_points):
        raise ValueError(f"attention_weights must be [N, Lq, M, L, P] = {(n, lq, m, n_levels, n_points)}, "
                         f"got {tuple(attention_weights.shape)}")
    expected_s = sum(h * w for h, w in shapes)
    if s != expected_s:
        raise ValueError(f"value has S={s} keys but spatial_shapes {shapes} sum to {expected_s}")
    if level_start_index is None:
        return
    if isinstance(level_start_index, torch.Tensor):
        if level_start_index.shape != (len(shapes),):
            raise ValueError(f"level_start_index must be [L={len(shapes)}], got {tuple(level_start_index.shape)}")
        if _tracing():
            return  # values are data, not available while tracing
        level_start_index = level_start_index.tolist()
    if [int(v) for v in level_start_index] != level_start_index_from_shapes(shapes):
        raise ValueError(f"level_start_index {list(level_start_index)} does not match spatial_shapes {shapes} "
                         f"(expected {level_start_index_from_shapes(shapes)})")


# --------------------------------------------------------------------------------------- reference core
def ms_deform_attn_core(value: torch.Tensor, spatial_shapes: SpatialShapes, level_start_index,
                        sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch multi-scale deformable sampling (grid_sample, bilinear, zero padding, align_corners=False).

    value [N, S, M, D], spatial_shapes [L, 2] (H, W), level_start_index [L] (tensor, ints or None = derived),
    sampling_locations [N, Lq, M, L, P, 2] normalised (x, y) in [0, 1], attention_weights [N, Lq, M, L, P]
    -> [N, Lq, M * D].  Differentiable w.r.t. value, sampling_locations and attention_weights.
    """
    shapes = spatial_shapes_list(spatial_shapes)
    _check_core_inputs(value, shapes, level_start_index, sampling_locations, attention_weights)
    n, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = sampling_locations.shape
    grids = 2.0 * sampling_locations - 1.0  # grid_sample wants [-1, 1] with the same edge convention
    starts = level_start_index_from_shapes(shapes)
    # [N, Lq, M, L, P] -> [N*M, 1, Lq, L, P]
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, n_levels, n_points)
    out = None
    for level, ((h, w), start) in enumerate(zip(shapes, starts)):
        # [N, H*W, M, D] -> [N*M, D, H, W]
        value_l = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        grid_l = grids[:, :, :, level].transpose(1, 2).reshape(n * m, lq, n_points, 2)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # [N*M, D, Lq, P]
        # Weighted per level and accumulated: no [N*M, D, Lq, L*P] stack (a large copy on CPU).
        term = (sampled * weights[..., level, :]).sum(-1)  # [N*M, D, Lq]
        out = term if out is None else out + term
    return out.reshape(n, m * d, lq).transpose(1, 2).contiguous()


# ------------------------------------------------------------------------ custom op (TensorRT plugin form)
@torch.library.custom_op("hcq::ms_deform_attn", mutates_args=())
def ms_deform_attn_plugin_op(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                             sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Exactly MultiscaleDeformableAttnPlugin_TRT: same five inputs, output [N, Lq, M, D]."""
    n, _, m, d = value.shape
    out = ms_deform_attn_core(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    return out.reshape(n, out.shape[1], m, d)


@ms_deform_attn_plugin_op.register_fake
def _plugin_op_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    n, _, m, d = value.shape
    return value.new_empty(n, sampling_locations.shape[1], m, d)


def _plugin_op_setup_context(ctx, inputs, output) -> None:
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = inputs
    ctx.save_for_backward(value, spatial_shapes, sampling_locations, attention_weights)


def _plugin_op_backward(ctx, grad_output):
    # Recompute through the differentiable reference; the op is only used for export and inference.
    value, spatial_shapes, sampling_locations, attention_weights = ctx.saved_tensors
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (value, sampling_locations, attention_weights)]
        out = ms_deform_attn_core(leaves[0], spatial_shapes, None, leaves[1], leaves[2])
        grads = torch.autograd.grad(out, leaves, grad_output.reshape(out.shape), allow_unused=True)
    return grads[0], None, None, grads[1], grads[2]


ms_deform_attn_plugin_op.register_autograd(_plugin_op_backward, setup_context=_plugin_op_setup_context)


def ms_deform_attn(value: torch.Tensor, spatial_shapes: SpatialShapes, level_start_index,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                   trt_plugin: bool | None = None) -> torch.Tensor:
    """Dispatching core -> [N, Lq, M * D].  trt_plugin=None follows `export_mode`; True routes through the
    custom op with INT32 spatial_shapes / level_start_index (raises if the plugin cannot take the inputs)."""
    use_plugin = trt_mode_active() if trt_plugin is None else trt_plugin
    if not use_plugin:
        return ms_deform_attn_core(value, spatial_shapes, level_start_index, sampling_locations,
                                   attention_weights)
    if value.dtype not in TRT_PLUGIN_FLOAT_DTYPES:
        raise ValueError(f"TensorRT plugin form requested but value is {value.dtype}; "
                         f"MultiscaleDeformableAttnPlugin_TRT takes float32/float16 only")
    if sampling_locations.dtype != value.dtype or attention_weights.dtype != value.dtype:
        raise ValueError("TensorRT plugin form needs value, sampling_locations and attention_weights in one "
                         f"dtype, got {value.dtype}, {sampling_locations.dtype}, {attention_weights.dtype}")
    if isinstance(spatial_shapes, torch.Tensor):
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
            raise ValueError(f"spatial_shapes must be [L, 2], got {tuple(spatial_shapes.shape)}")
        shapes_t = spatial_shapes.to(device=value.device, dtype=torch.int32)
    else:
        shapes_t = torch.tensor(spatial_shapes_list(spatial_shapes), dtype=torch.int32, device=value.device)
    if level_start_index is None:
        if isinstance(spatial_shapes, torch.Tensor):
            areas = shapes_t[:, 0] * shapes_t[:, 1]
            start_t = torch.cumsum(areas, 0, dtype=torch.int32) - areas
        else:
            start_t = torch.tensor(level_start_index_from_shapes(spatial_shapes_list(spatial_shapes)),
                                   dtype=torch.int32, device=value.device)
    elif isinstance(level_start_index, torch.Tensor):
        start_t = level_start_index.to(device=value.device, dtype=torch.int32)
    else:
        start_t = torch.tensor([int(v) for v in level_start_index], dtype=torch.int32, device=value.device)
    # the custom op's eager impl validates all inputs (values included) through ms_deform_attn_core
    out = torch.ops.hcq.ms_deform_attn(value, shapes_t, start_t, sampling_locations, attention_weights)
    n, lq, m, d = out.shape
    return out.reshape(n, lq, m * d)


# ----------------------------------------------------------------------------------------------- module
class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR) with optional caller-given extra sampling points.

    Per head, the sampling set is n_points predicted offset points per level plus n_extra_points caller points
    (e.g. a query's keypoints, the same normalised locations at every level); one softmax over
    n_levels * (n_points + n_extra_points) attention weights per head, all predicted from the query.
    """

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int, n_extra_points: int = 0):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if min(n_levels, n_heads) < 1 or n_points < 0 or n_extra_points < 0 or n_points + n_extra_points < 1:
            raise ValueError(f"need n_levels, n_heads >= 1 and n_points + n_extra_points >= 1, got "
                             f"n_levels={n_levels}, n_heads={n_heads}, n_points={n_points}, "
                             f"n_extra_points={n_extra_points}")
        self.d_model, self.n_levels, self.n_heads = d_model, n_levels, n_heads
        self.n_points, self.n_extra_points = n_points, n_extra_points
        self.head_dim = d_model // n_heads
        # None when every point is caller-given (n_points=0): no offsets to predict
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2) if n_points > 0 else None
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * (n_points + n_extra_points))
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR init: zero offset weights with a bias that puts head h's points on a ray at angle
        2*pi*h/M (ring over heads), point k at distance k+1 pixels; uniform attention; xavier projections."""
        if self.sampling_offsets is not None:
            self._init_offset_ring()
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _init_offset_ring(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # [M, 2]
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values  # onto the unit square
        scales = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        bias = directions.view(self.n_heads, 1, 1, 2) * scales  # [M, 1, P, 2]
        bias = bias.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))

    def _offset_normalizer(self, spatial_shapes: SpatialShapes, like: torch.Tensor) -> torch.Tensor:
        """[L, 2] (W, H) per level, to turn pixel offsets into normalised offsets."""
        if isinstance(spatial_shapes, torch.Tensor):
            shapes = spatial_shapes.to(device=like.device, dtype=like.dtype)
        else:
            shapes = torch.tensor(spatial_shapes_list(spatial_shapes), device=like.device, dtype=like.dtype)
        if shapes.shape != (self.n_levels, 2):
            raise ValueError(f"spatial_shapes must be [{self.n_levels}, 2], got {tuple(shapes.shape)}")
        return shapes.flip(-1)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value_input: torch.Tensor,
                spatial_shapes: SpatialShapes, level_start_index=None,
                value_padding_mask: torch.Tensor | None = None,
                extra_points: torch.Tensor | None = None) -> torch.Tensor:
        """query [N, Lq, C]; reference_points normalised [N, Lq, 2] (x, y) or [N, Lq, 4] (cx, cy, w, h) boxes,
        or per level [N, Lq, L, 2|4]; value_input [N, S, C]; spatial_shapes [L, 2] (H, W) (a list of ints when
        exporting the grid_sample form); level_start_index [L] or None; value_padding_mask [N, S] bool
        (True = padding); extra_points [N, Lq, M, n_extra_points, 2] normalised (x, y) -> [N, Lq, C]."""
        n, lq, c = query.shape
        if c != self.d_model or value_input.dim() != 3 or value_input.shape[-1] != self.d_model:
            raise ValueError(f"query {tuple(query.shape)} and value_input {tuple(value_input.shape)} must both "
                             f"end in d_model={self.d_model}")
        s = value_input.shape[1]
        m, n_levels, n_points = self.n_heads, self.n_levels, self.n_points

        value = self.value_proj(value_input)
        if value_padding_mask is not None:
            if value_padding_mask.shape != (n, s) or value_padding_mask.dtype != torch.bool:
                raise ValueError(f"value_padding_mask must be bool [N, S] = {(n, s)}, got "
                                 f"{value_padding_mask.dtype} {tuple(value_padding_mask.shape)}")
            value = value.masked_fill(value_padding_mask[..., None], 0.0)
        value = value.view(n, s, m, self.head_dim)

        ref = reference_points
        if ref.dim() == 3:
            ref = ref[:, :, None]  # same reference at every level
        if ref.dim() != 4 or ref.shape[:2] != (n, lq) or ref.shape[-1] not in (2, 4) \
                or ref.shape[2] not in (1, n_levels):
            raise ValueError(f"reference_points must be [N, Lq, 2|4] or [N, Lq, L, 2|4] with N={n}, Lq={lq}, "
                             f"L={n_levels}, got {tuple(reference_points.shape)}")
        ref = ref[:, :, None, :, None, :]  # [N, Lq, 1, L|1, 1, 2|4]

        locations = []
        if n_points > 0:
            offsets = self.sampling_offsets(query).view(n, lq, m, n_levels, n_points, 2)
            if ref.shape[-1] == 2:
                normalizer = self._offset_normalizer(spatial_shapes, offsets)  # [L, 2]
                locations.append(ref + offsets / normalizer[None, None, None, :, None, :])
            else:  # box: offsets scaled by half the box size, spread over the points
                locations.append(ref[..., :2] + offsets / n_points * ref[..., 2:] * 0.5)
        if self.n_extra_points > 0:
            if extra_points is None:
                raise ValueError(f"this MSDeformAttn has n_extra_points={self.n_extra_points}: pass "
                                 f"extra_points [N, Lq, M, {self.n_extra_points}, 2]")
            expected = (n, lq, m, self.n_extra_points, 2)
            if tuple(extra_points.shape) != expected:
                raise ValueError(f"extra_points must be {expected}, got {tuple(extra_points.shape)}")
            locations.append(extra_points[:, :, :, None].expand(n, lq, m, n_levels, self.n_extra_points, 2))
        elif extra_points is not None:
            raise ValueError("extra_points given but this MSDeformAttn was built with n_extra_points=0")
        total_points = n_points + self.n_extra_points
        sampling_locations = torch.cat(locations, dim=4) if len(locations) > 1 else locations[0]

        logits = self.attention_weights(query).view(n, lq, m, n_levels * total_points)
        attention = F.softmax(logits, dim=-1).view(n, lq, m, n_levels, total_points)
        out = ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations.to(value.dtype),
                             attention)
        return self.output_proj(out)
