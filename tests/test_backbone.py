"""ResNet backbone: shapes/strides of both profiles, last_stride=1, GN/BN switch, parameter counts, init,
level selection, deformable stages (equal to the plain net at init, ONNX export through onnxruntime)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from hcq_ros.models.backbone import LEVELS, PROFILES, BasicBlock, ResNet, build_backbone, group_norm_groups
from hcq_ros.ops.deform_conv import DeformConv2d


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomise_norms(model: nn.Module, seed: int) -> None:
    """Non-zero gammas/betas so that residual branches (zero-init gamma) contribute."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))


@pytest.mark.parametrize("norm", ["gn", "bn"])
def test_small_shapes_and_strides(norm):
    model = build_backbone("small", norm=norm).eval()
    assert model.strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert model.out_channels == {"res2": 32, "res3": 64, "res4": 128, "res5": 256}
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 128))
    assert list(out) == list(LEVELS)
    for level, feat in out.items():
        s = model.strides[level]
        assert tuple(feat.shape) == (2, model.out_channels[level], 96 // s, 128 // s)


def test_base_shapes_on_meta_device_and_tiny_input():
    with torch.device("meta"):
        model = build_backbone("base")
        out = model(torch.empty(1, 3, 320, 320))
    assert model.out_channels == {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "res2": (256, 80, 80), "res3": (512, 40, 40), "res4": (1024, 20, 20), "res5": (2048, 10, 10)}
    real = build_backbone("base", norm="bn", last_stride=1).eval()
    with torch.no_grad():
        out = real(torch.randn(1, 3, 64, 64))
    assert tuple(out["res5"].shape) == (1, 2048, 4, 4)
    assert torch.isfinite(out["res5"]).all()


@pytest.mark.parametrize("profile", ["small", "base"])
def test_last_stride_one_keeps_res5_at_one_sixteenth(profile):
    with torch.device("meta"):
        model = build_backbone(profile, last_stride=1)
        out = model(torch.empty(1, 3, 128, 64))
    assert model.strides["res5"] == 16
    assert tuple(out["res5"].shape[2:]) == tuple(out["res4"].shape[2:]) == (8, 4)


def test_parameter_counts():
    # ResNet-50 without its fc: torchvision's resnet50 has 25,557,032 parameters, 2,049,000 in fc.
    # GroupNorm has the same affine parameters as BatchNorm, so both norms match.
    for norm in ("gn", "bn"):
        with torch.device("meta"):
            assert _count(build_backbone("base", norm=norm)) == 25_557_032 - 2_049_000

    def basic(cin: int, cout: int) -> int:
        projection = cin * cout + 2 * cout if cin != cout else 0  # strided 1x1 shortcut + norm
        return 9 * cin * cout + 9 * cout * cout + 4 * cout + projection

    cfg = PROFILES["small"]
    expected = 9 * 3 * 16 + 2 * 16 + 9 * 16 * 32 + 2 * 32  # deep stem
    cin = cfg.stem_channels
    for depth, width in zip(cfg.depths, cfg.widths):
        for _ in range(depth):
            expected += basic(cin, width)
            cin = width
    assert _count(build_backbone("small")) == expected
    assert expected < 2_000_000
    print(f"\nparameters: small={expected:,} base={25_557_032 - 2_049_000:,}")


def test_group_norm_rule_and_norm_switch():
    assert [group_norm_groups(c) for c in (3, 16, 24, 32, 64, 128, 2048)] == [1, 4, 6, 8, 16, 32, 32]
    gn = build_backbone("small", norm="gn")
    bn = build_backbone("small", norm="bn")
    gn_layers = [m for m in gn.modules() if isinstance(m, nn.GroupNorm)]
    assert gn_layers and not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())
    assert all(m.num_channels // m.num_groups >= 4 and m.num_groups <= 32 for m in gn_layers)
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.modules())
    assert not any(isinstance(m, nn.GroupNorm) for m in bn.modules())
    # GroupNorm is per-sample: an image's features do not depend on the rest of the batch (BatchNorm's do).
    _randomise_norms(gn, 0)
    _randomise_norms(bn, 0)
    x = torch.randn(4, 3, 64, 64)
    for model, independent in ((gn.train(), True), (bn.train(), False)):
        with torch.no_grad():
            same = torch.allclose(model(x)["res3"][:1], model(x[:1])["res3"], atol=1e-5)
        assert same == independent
    with pytest.raises(ValueError, match="norm"):
        build_backbone("small", norm="ln")


def test_out_features_subset_and_truncation():
    model = build_backbone("small", out_features=["res4", "res2"])
    assert model.out_features == ("res2", "res4")
    assert model.strides == {"res2": 4, "res4": 16}
    assert len(model.stages) == 3  # res5 not built
    assert _count(model) < _count(build_backbone("small"))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert set(out) == {"res2", "res4"}
    with pytest.raises(ValueError, match="out_features"):
        build_backbone("small", out_features=["res6"])


def test_init_zero_gamma_makes_blocks_identity():
    model = build_backbone("small", norm="gn")
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert all(torch.all(b.norm2.weight == 0) for b in blocks)
    identity_block = model.stages[0][0]
    assert isinstance(identity_block.shortcut, nn.Identity)
    x = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(identity_block(x), torch.relu(x))
    conv = model.stem[0]
    # kaiming_normal_(fan_out): std = sqrt(2 / (out_channels * k * k))
    expected_std = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.25


@pytest.mark.parametrize("profile", ["small", "base"])
def test_deform_stages_replace_last_stage_convs_and_equal_plain_at_init(profile):
    deform = build_backbone(profile, norm="gn", deform_stages=1)
    deform_layers = [n for n, m in deform.named_modules() if isinstance(m, DeformConv2d)]
    assert deform_layers and all(n.startswith("stages.3.") and n.endswith("conv2") for n in deform_layers)
    assert len(deform_layers) == PROFILES[profile].depths[3]
    if profile == "base":
        return  # structure only: a real forward of base is covered elsewhere
    _randomise_norms(deform, 1)
    plain = build_backbone(profile, norm="gn", deform_stages=0)
    result = plain.load_state_dict(deform.state_dict(), strict=False)
    assert not result.missing_keys
    assert result.unexpected_keys and all("offset_mask" in k for k in result.unexpected_keys)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = deform.eval()(x), plain.eval()(x)
    for level in LEVELS:
        torch.testing.assert_close(a[level], b[level], rtol=1e-4, atol=1e-4)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="profile"):
        build_backbone("huge")
    with pytest.raises(ValueError, match="last_stride"):
        build_backbone("small", last_stride=4)
    with pytest.raises(ValueError, match="deform_stages"):
        build_backbone("small", deform_stages=5)
    model = build_backbone("small", in_channels=1)
    with pytest.raises(ValueError, match="input"):
        model(torch.randn(1, 3, 32, 32))
    assert isinstance(model, ResNet)


def test_deformable_backbone_exports_to_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_backbone("small", norm="gn", deform_stages=1).eval()
    _randomise_norms(model, 2)
    with torch.no_grad():  # non-zero offsets so that the exported sampling path is really exercised
        for m in model.modules():
            if isinstance(m, DeformConv2d):
                m.offset_mask.weight.normal_(0.0, 0.01)
    x = torch.randn(1, 3, 96, 128)
    path = tmp_path / "backbone.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["image"],
                          output_names=list(model.out_features))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    for level, y in zip(model.out_features, outputs):
        np.testing.assert_allclose(y, ref[level].numpy(), rtol=1e-4, atol=1e-4)
