"""Modulated deformable convolution: equals conv2d without deformation, matches a loop reference with
fractional offsets, has correct gradients, and exports to ONNX that onnxruntime runs."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hcq_ros.ops.deform_conv import DeformConv2d, deform_conv2d

CONV_VARIANTS = [  # (kernel, stride, padding, dilation)
    ((3, 3), 1, 1, 1),
    ((3, 3), 2, 1, 1),
    ((3, 3), 1, 2, 2),
    ((3, 3), 2, 0, 1),
    ((1, 1), 1, 0, 1),
    ((3, 2), (2, 1), (1, 0), (1, 2)),
]


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _pair(v):
    return (v, v) if isinstance(v, int) else v


def _reference_deform_conv(x, offset, mask, weight, bias, stride, padding, dilation):
    """Loop over offset groups and kernel positions; explicit bilinear sampling with torchvision's rule
    (each of the 4 corners contributes only when it lies inside the image)."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = x.shape
    out_ch, _, kh, kw = weight.shape
    ho, wo = offset.shape[2:]
    k_total = kh * kw
    groups = offset.shape[1] // (2 * k_total)
    cg = c // groups
    rows = torch.arange(ho, dtype=x.dtype).view(ho, 1) * sh - ph
    cols = torch.arange(wo, dtype=x.dtype).view(1, wo) * sw - pw
    out = torch.zeros(n, out_ch, ho, wo, dtype=x.dtype)
    for g in range(groups):
        xg = x[:, g * cg:(g + 1) * cg]
        for a in range(kh):
            for b in range(kw):
                k = a * kw + b
                y = rows + a * dh + offset[:, 2 * (g * k_total + k)]  # [N, Ho, Wo]
                xx = cols + b * dw + offset[:, 2 * (g * k_total + k) + 1]
                y0, x0 = torch.floor(y), torch.floor(xx)
                sample = torch.zeros(n, cg, ho, wo, dtype=x.dtype)
                for cy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                    for cx, wx in ((x0, 1 - (xx - x0)), (x0 + 1, xx - x0)):
                        inside = (cy >= 0) & (cy <= h - 1) & (cx >= 0) & (cx <= w - 1)
                        flat = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).long().view(n, 1, ho * wo)
                        vals = torch.gather(xg.reshape(n, cg, h * w), 2, flat.expand(n, cg, ho * wo))
                        sample += vals.view(n, cg, ho, wo) * (wy * wx * inside).unsqueeze(1)
                if mask is not None:
                    sample = sample * mask[:, g * k_total + k].unsqueeze(1)
                out += torch.einsum("oc,nchw->nohw", weight[:, g * cg:(g + 1) * cg, a, b], sample)
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out


@pytest.mark.parametrize("kernel,stride,padding,dilation", CONV_VARIANTS)
@pytest.mark.parametrize("offset_groups", [1, 2])
def test_zero_offsets_unit_mask_equal_conv2d(kernel, stride, padding, dilation, offset_groups):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 11, generator=gen, dtype=torch.float64)
    weight = torch.randn(5, 4, *kernel, generator=gen, dtype=torch.float64)
    bias = torch.randn(5, generator=gen, dtype=torch.float64)
    ref = F.conv2d(x, weight, bias, stride, padding, dilation)
    k = kernel[0] * kernel[1]
    offset = torch.zeros(2, 2 * offset_groups * k, *ref.shape[2:], dtype=torch.float64)
    mask = torch.ones(2, offset_groups * k, *ref.shape[2:], dtype=torch.float64)
    out = deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(deform_conv2d(x, offset, None, weight, bias, stride, padding, dilation), out)


@pytest.mark.parametrize("kernel,stride,padding,dilation", CONV_VARIANTS)
@pytest.mark.parametrize("offset_groups", [1, 2])
def test_matches_loop_reference_with_fractional_offsets(kernel, stride, padding, dilation, offset_groups):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 7, 8, generator=gen, dtype=torch.float64)
    weight = torch.randn(3, 4, *kernel, generator=gen, dtype=torch.float64)
    bias = torch.randn(3, generator=gen, dtype=torch.float64)
    kh, kw = kernel
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    ho, wo = _out_size(7, kh, sh, ph, dh), _out_size(8, kw, sw, pw, dw)
    # Offsets up to +-3 px: many samples straddle or leave the border, exercising the zero-padding rule.
    offset = (torch.rand(2, 2 * offset_groups * kh * kw, ho, wo, generator=gen, dtype=torch.float64) - 0.5) * 6
    mask = torch.rand(2, offset_groups * kh * kw, ho, wo, generator=gen, dtype=torch.float64)
    out = deform_conv2d(x, offset, mask, weight, bias, stride, padding, dilation)
    ref = _reference_deform_conv(x, offset, mask, weight, bias, stride, padding, dilation)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # The deformation matters: the result is far from the undeformed conv.
    assert (out - F.conv2d(x, weight, bias, stride, padding, dilation)).abs().max() > 0.1


def test_offset_layout_is_dy_then_dx():
    """A pure shift of +1 in dx for a 1x1 kernel reads the right-hand neighbour (torchvision layout)."""
    x = torch.arange(20, dtype=torch.float64).view(1, 1, 4, 5)
    weight = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    offset = torch.zeros(1, 2, 4, 5, dtype=torch.float64)
    offset[:, 1] = 1.0  # dx
    out = deform_conv2d(x, offset, None, weight)
    expected = torch.cat([x[..., 1:], torch.zeros(1, 1, 4, 1, dtype=torch.float64)], dim=-1)
    torch.testing.assert_close(out, expected)
    offset = torch.zeros(1, 2, 4, 5, dtype=torch.float64)
    offset[:, 0] = 0.5  # dy: halfway to the row below
    out = deform_conv2d(x, offset, None, weight)
    torch.testing.assert_close(out[0, 0, :3], (x[0, 0, :3] + x[0, 0, 1:]) / 2)
    torch.testing.assert_close(out[0, 0, 3], x[0, 0, 3] / 2)  # the row below is outside: zero


def test_gradcheck_input_offset_mask_weight():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, generator=gen, dtype=torch.float64, requires_grad=True)
    # Fractional parts in [0.2, 0.8]: bilinear sampling is not differentiable at integer positions.
    frac = 0.2 + 0.6 * torch.rand(1, 18, 2, 3, generator=gen, dtype=torch.float64)
    whole = torch.randint(-2, 2, (1, 18, 2, 3), generator=gen).to(torch.float64)
    offset = (whole + frac).requires_grad_(True)
    mask = torch.rand(1, 9, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)

    def fn(x_, offset_, mask_, weight_, bias_):
        return deform_conv2d(x_, offset_, mask_, weight_, bias_, stride=2, padding=1, dilation=1)

    assert torch.autograd.gradcheck(fn, (x, offset, mask, weight, bias), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel,stride,padding,dilation", CONV_VARIANTS[:4])
def test_module_at_init_equals_conv(kernel, stride, padding, dilation):
    torch.manual_seed(3)
    layer = DeformConv2d(6, 4, kernel_size=kernel, stride=stride, padding=padding, dilation=dilation)
    conv = nn.Conv2d(6, 4, kernel, stride, padding, dilation)
    conv.load_state_dict({"weight": layer.weight.data, "bias": layer.bias.data})
    x = torch.randn(2, 6, 13, 10)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


def test_module_offset_predictor_learns_from_zero_init():
    torch.manual_seed(4)
    layer = DeformConv2d(3, 4, bias=False)
    assert layer.bias is None
    x = torch.randn(2, 3, 8, 8)
    layer(x).square().sum().backward()
    assert layer.offset_mask.weight.grad.abs().sum() > 0  # offsets and mask receive gradient at zero init
    with torch.no_grad():
        layer.offset_mask.bias.fill_(0.7)
    conv_out = F.conv2d(x, layer.weight, None, 1, 1)
    assert (layer(x) - conv_out).abs().max() > 1e-2


def test_bad_inputs_raise():
    x = torch.randn(1, 4, 6, 6)
    weight = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="offset"):
        deform_conv2d(x, torch.zeros(1, 17, 6, 6), None, weight, padding=1)
    with pytest.raises(ValueError, match="offset"):
        deform_conv2d(x, torch.zeros(1, 18, 5, 6), None, weight, padding=1)
    with pytest.raises(ValueError, match="mask"):
        deform_conv2d(x, torch.zeros(1, 18, 6, 6), torch.ones(1, 8, 6, 6), weight, padding=1)
    with pytest.raises(ValueError, match="input channels"):
        deform_conv2d(x, torch.zeros(1, 18, 6, 6), None, torch.randn(2, 3, 3, 3), padding=1)
    with pytest.raises(ValueError, match="offset groups"):
        deform_conv2d(x, torch.zeros(1, 54, 6, 6), None, weight, padding=1)
    with pytest.raises(ValueError, match="offset_groups"):
        DeformConv2d(4, 2, offset_groups=3)


class _SmallDeformNet(nn.Module):
    """conv -> ReLU -> strided DCNv2 with a non-trivial (random) offset/mask predictor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.deform = DeformConv2d(8, 6, kernel_size=3, stride=2, padding=1, offset_groups=2)
        with torch.no_grad():
            self.deform.offset_mask.weight.normal_(0.0, 0.3)
            self.deform.offset_mask.bias.normal_(0.0, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deform(torch.relu(self.conv(x)))


@pytest.mark.parametrize("dynamo", [True, False])
def test_onnx_export_runs_in_onnxruntime(tmp_path, dynamo):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(5)
    model = _SmallDeformNet().eval()
    x = torch.randn(2, 3, 17, 21)
    path = tmp_path / "deform.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy exporter deprecation / tracer notes on shape checks
        if dynamo:
            dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=4),
                    3: torch.export.Dim("width", min=4)}
            torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["x"], output_names=["y"],
                              dynamic_shapes={"x": dims})
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 17, 21), (1, 3, 12, 9)]:
        xi = torch.randn(*shape)
        (y,) = session.run(None, {"x": xi.numpy()})
        with torch.no_grad():
            ref = model(xi).numpy()
        assert y.shape == ref.shape
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
