"""Per-joint feature refinement (models/joint_features.py): the sampler reads what grid_sample reads, through
either MSDeformAttn path; the head is wired additively (a zeroed head reproduces the model without it), it
learns from the features at the joints, and the config rejects it where there are no query joints."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hcq_ros.models.hcq import PRESETS, HCQConfig, HCQNet
from hcq_ros.models.joint_features import JointFeatureHead, JointFeatureSampler
from hcq_ros.ops.ms_deform_attn import export_mode

TINY = dict(d_model=32, mask_dim=16, enc_layers=1, dec_layers=2, num_queries=6, ffn_dim=64, mask_points=256)


def _points(b=2, q=3, j=5, seed=0) -> torch.Tensor:
    # include points outside the map (-0.2..1.2): zero padding must match grid_sample's
    return torch.rand(b, q, j, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.4 - 0.2


@pytest.mark.parametrize("trt", [False, True])
def test_sampler_matches_grid_sample(trt):
    features = torch.randn(2, 7, 5, 9, dtype=torch.float64 if not trt else torch.float32,
                           generator=torch.Generator().manual_seed(1))
    points = _points().to(features.dtype)
    with export_mode(trt=trt):
        got = JointFeatureSampler(features).sample(points)
    grid = points.flatten(1, 2).unsqueeze(2) * 2 - 1                                   # [B, Q*J, 1, 2]
    want = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    want = want.squeeze(-1).transpose(1, 2).reshape(2, 3, 5, 7)
    assert got.shape == (2, 3, 5, 7)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_sampler_is_differentiable_in_features_and_points():
    features = torch.randn(1, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    points = (torch.rand(1, 2, 3, 2, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda f, p: JointFeatureSampler(f).sample(p), (features, points))


def test_sampler_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"features must be \[B, C, H, W\]"):
        JointFeatureSampler(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r"points must be \[B, Q, J, 2\]"):
        JointFeatureSampler(torch.zeros(1, 2, 4, 4)).sample(torch.zeros(1, 3, 2))


def test_head_output_depends_on_the_sampled_feature_per_joint():
    torch.manual_seed(0)
    head = JointFeatureHead(in_dim=8, feat_dim=4, hidden_dim=16, with_sigma=True)
    torch.nn.init.normal_(head.mlp.last.weight)                 # leave the near-zero start
    feat, sampled = torch.randn(1, 2, 8), torch.randn(1, 2, 17, 4)
    delta, sigma = head(feat, sampled)
    assert delta.shape == (1, 2, 17, 2) and sigma.shape == (1, 2, 17, 2)
    changed = sampled.clone()
    changed[0, 1, 5] += 1.0                                     # another feature at one joint of one query
    delta2, _ = head(feat, changed)
    moved = (delta2 - delta).abs().sum(-1)[0]
    assert moved[1, 5] > 0 and moved.sum() == moved[1, 5]      # only that joint's correction moves


def test_zeroed_joint_heads_reproduce_the_model_without_them():
    torch.manual_seed(0)
    base = HCQNet(HCQConfig.preset("hcqnet", "small", **TINY, pose_joint_features=False)).eval()
    with_heads = HCQNet(HCQConfig.preset("hcqnet", "small", **TINY, pose_joint_features=True)).eval()
    missing = with_heads.load_state_dict(base.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("joint_heads.") for k in missing)
    for head in with_heads.joint_heads:
        torch.nn.init.zeros_(head.mlp.last.weight)
        torch.nn.init.zeros_(head.mlp.last.bias)
    images = torch.randn(1, 3, 64, 64)
    a, b = base(images), with_heads(images)
    for key in ("pred_keypoints", "pred_kpt_sigma", "pred_boxes", "pred_logits"):
        torch.testing.assert_close(a[key], b[key])
    torch.nn.init.normal_(with_heads.joint_heads[-1].mlp.last.weight, std=0.1)
    assert not torch.allclose(with_heads(images)["pred_keypoints"], a["pred_keypoints"])


def test_pose_loss_reaches_the_joint_heads_and_the_mask_features():
    torch.manual_seed(0)
    model = HCQNet(HCQConfig.preset("hcqnet", "small", **TINY)).train()
    assert model.config.pose_joint_features                       # on in the small profile
    model(torch.randn(1, 3, 64, 64))["pred_keypoints"].sum().backward()
    assert model.joint_heads[-1].feat_proj.weight.grad.abs().sum() > 0
    assert model.joint_heads[-1].joint_embed.weight.grad.abs().sum() > 0
    assert model.pixel_decoder.mask_proj.weight.grad.abs().sum() > 0


def test_config_rules():
    with pytest.raises(ValueError, match="pose_joint_features needs query_keypoints"):
        HCQConfig.preset("basenet_dps", "small", pose_joint_features=True)
    for name in ("basenet_ds", "basenet_dps", "hcqnet_alpha", "hcqnet_beta"):   # the paper's rows stay the paper's
        assert not HCQConfig.preset(name, "small").pose_joint_features
    assert HCQConfig.preset("hcqnet", "small").pose_joint_features
    assert not HCQConfig.preset("hcqnet", "base").pose_joint_features
    assert set(PRESETS) >= {"hcqnet", "hcqnet_image_space"}
    # old checkpoints have no such key: from_dict fills in the dataclass default (off)
    stored = HCQConfig.preset("hcqnet", "small").to_dict()
    del stored["pose_joint_features"]
    assert not HCQConfig.from_dict(stored).pose_joint_features
