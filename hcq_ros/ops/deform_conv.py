"""Modulated deformable convolution (DCNv2) in pure PyTorch: exports to ONNX, runs in onnxruntime.

Each output pixel samples the input at its kernel positions shifted by learned fractional offsets (bilinear,
zero outside the image), scales each sample by a learned modulation mask, and contracts the samples with the
convolution weight. Everything is a handful of tensor ops (``grid_sample``, reshapes, one ``matmul``), so it
traces to plain ONNX (``GridSample`` needs opset >= 16) and has autograd for input, offset, mask and weight.

Offset / mask layout (the torchvision ``deform_conv2d`` convention):
- kernel positions ``k = a * kw + b`` for kernel row ``a`` and column ``b`` (row-major), ``K = kh * kw``;
- ``offset: [N, 2 * G * K, Ho, Wo]``, channel ``2 * (g * K + k)`` is **dy** and ``2 * (g * K + k) + 1`` is **dx**
  (in input pixels) for offset group ``g`` and kernel position ``k``;
- ``mask: [N, G * K, Ho, Wo]``, channel ``g * K + k``;
- offset group ``g`` covers input channels ``[g * C / G, (g + 1) * C / G)``.
The sample for output ``(i, j)`` and kernel ``(a, b)`` is taken at input pixel
``(i * stride - padding + a * dilation + dy, j * stride - padding + b * dilation + dx)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """Modulated deformable 2-D convolution (groups = 1, any number of offset groups).

    Args:
        x: ``[N, C, H, W]`` input.
        offset: ``[N, 2 * G * kh * kw, Ho, Wo]`` (dy, dx) per offset group and kernel position, see module doc.
        mask: ``[N, G * kh * kw, Ho, Wo]`` modulation scalars, or None for all ones (DCNv1).
        weight: ``[O, C, kh, kw]`` convolution weight.
        bias: ``[O]`` or None.
        stride, padding, dilation: as in ``F.conv2d`` (zero padding).
    Returns:
        ``[N, O, Ho, Wo]`` with ``Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1`` (same for Wo).
    """
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"x and weight must be 4-D, got x {tuple(x.shape)} and weight {tuple(weight.shape)}")
    n, c, h, w = x.shape
    out_ch, w_in, kh, kw = weight.shape
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    k = kh * kw
    groups = offset.shape[1] // (2 * k)
    # The legacy ONNX tracer would record these Python comparisons as constants (and warn); the eager call
    # that precedes any export has already validated the shapes.
    if not torch.jit.is_tracing():
        if w_in != c:
            raise ValueError(f"weight expects {w_in} input channels but x has {c} (groups=1 only)")
        if (offset.dim() != 4 or offset.shape[0] != n or offset.shape[2:] != (ho, wo) or groups == 0
                or offset.shape[1] % (2 * k)):
            raise ValueError(f"offset must be [N={n}, 2*G*{k}, Ho={ho}, Wo={wo}], got {tuple(offset.shape)}")
        if c % groups:
            raise ValueError(f"{c} input channels are not divisible by {groups} offset groups")
        if mask is not None and tuple(mask.shape) != (n, groups * k, ho, wo):
            raise ValueError(f"mask must be [{n}, {groups * k}, {ho}, {wo}], got {tuple(mask.shape)}")
        if bias is not None and tuple(bias.shape) != (out_ch,):
            raise ValueError(f"bias must be [{out_ch}], got {tuple(bias.shape)}")

    dtype, device = x.dtype, x.device
    # Undeformed sampling positions in input pixels: [1, Ho, 1] / [1, 1, Wo] for output rows / cols,
    # [K, 1, 1] for the kernel's row / column offsets (k = a * kw + b).
    base_y = (torch.arange(ho, device=device, dtype=dtype) * sh - ph).view(1, ho, 1)
    base_x = (torch.arange(wo, device=device, dtype=dtype) * sw - pw).view(1, 1, wo)
    kern_y = (torch.arange(kh, device=device, dtype=dtype) * dh).repeat_interleave(kw).view(k, 1, 1)
    kern_x = (torch.arange(kw, device=device, dtype=dtype) * dw).repeat(kh).view(k, 1, 1)

    off = offset.reshape(n * groups, k, 2, ho, wo)
    pos_y = base_y + kern_y + off[:, :, 0]  # [N*G, K, Ho, Wo]
    pos_x = base_x + kern_x + off[:, :, 1]
    # grid_sample with align_corners=False maps pixel index p to (2p + 1) / size - 1; its zero padding makes
    # every bilinear corner outside the image contribute 0, the same rule as torchvision's deform_conv2d.
    grid = torch.stack(((2 * pos_x + 1) / w - 1, (2 * pos_y + 1) / h - 1), dim=-1)
    grid = grid.reshape(n * groups, k * ho, wo, 2)

    x_groups = x.reshape(n * groups, c // groups, h, w)
    sampled = F.grid_sample(x_groups, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.reshape(n, groups, c // groups, k, ho, wo)  # [N, G, C/G, K, Ho, Wo]
    if mask is not None:
        sampled = sampled * mask.reshape(n, groups, 1, k, ho, wo)
    # (g, c/g, k) flattens to weight's (c, kh*kw) order, so one matmul applies the whole kernel.
    columns = sampled.reshape(n, c * k, ho * wo)
    out = torch.matmul(weight.reshape(out_ch, c * k), columns)  # [N, O, Ho*Wo]
    if bias is not None:
        out = out + bias.view(1, out_ch, 1)
    return out.reshape(n, out_ch, ho, wo)


class DeformConv2d(nn.Module):
    """DCNv2 layer that predicts its own offsets and mask from its input.

    The offset/mask predictor is a conv with the same kernel, stride, padding and dilation, zero-initialised, and
    the mask is ``2 * sigmoid(logit)``, so at initialisation offsets are 0 and the mask is 1: the layer is then
    exactly an ordinary ``nn.Conv2d`` with the same weight (it can replace a pretrained conv without changing it).

    Shapes: ``x [N, in_ch, H, W] -> [N, out_ch, Ho, Wo]`` as ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 1,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        offset_groups: int = 1,
    ) -> None:
        super().__init__()
        if in_ch <= 0 or out_ch <= 0:
            raise ValueError(f"in_ch and out_ch must be positive, got {in_ch}, {out_ch}")
        if offset_groups <= 0 or in_ch % offset_groups:
            raise ValueError(f"offset_groups={offset_groups} must be positive and divide in_ch={in_ch}")
        self.in_ch, self.out_ch = in_ch, out_ch
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.offset_groups = offset_groups
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kh, kw))
        self.bias = nn.Parameter(torch.empty(out_ch)) if bias else None
        self.num_points = offset_groups * kh * kw
        # 2 offsets (dy, dx) + 1 mask logit per offset group and kernel position.
        self.offset_mask = nn.Conv2d(in_ch, 3 * self.num_points, self.kernel_size, self.stride, self.padding,
                                     self.dilation, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Conv-default init of weight/bias (as ``nn.Conv2d``) and zero init of the offset/mask predictor."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        self.reset_offset_predictor()

    def reset_offset_predictor(self) -> None:
        """Zero offsets and unit mask for every input (call after any blanket re-initialisation)."""
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)

    def offsets_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [N, C, H, W]`` -> offset ``[N, 2*G*K, Ho, Wo]`` (dy, dx) and mask ``[N, G*K, Ho, Wo]`` in (0, 2)."""
        pred = self.offset_mask(x)
        offset = pred[:, : 2 * self.num_points]
        mask = 2.0 * torch.sigmoid(pred[:, 2 * self.num_points:])
        return offset, mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset, mask = self.offsets_and_mask(x)
        return deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_ch}, {self.out_ch}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, offset_groups={self.offset_groups}, "
                f"bias={self.bias is not None}")
