"""HCQNet model: shapes for every preset, canonical keypoint mapping, iterative refinement, input validation,
config/checkpoint handling, FLOP accounting and the postprocessor."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hcq_ros.models.hcq import PRESETS, QUERY_INITS, HCQConfig, HCQNet, flops_by_module, load_checkpoint, save_checkpoint
from hcq_ros.models.heads import canonical_to_image, corners_to_xyxy, image_to_canonical, sine_embed
from hcq_ros.models.postprocess import HCQPostProcess, suppress_duplicates

TINY = dict(d_model=32, mask_dim=32, enc_layers=2, dec_layers=2, num_queries=10, ffn_dim=64, mask_points=256)


def tiny(preset: str = "hcqnet", **overrides) -> HCQConfig:
    return HCQConfig.preset(preset, "small", **{**TINY, **overrides})


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("query_init", QUERY_INITS)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_forward_shapes_for_every_preset(preset, query_init, images):
    torch.manual_seed(0)
    model = HCQNet(tiny(preset, query_init=query_init)).train()
    out = model(images)
    assert out["pred_logits"].shape == (2, 10, 1)
    assert out["pred_boxes"].shape == (2, 10, 4)
    assert out["pred_box_sigma"].shape == (2, 10, 4)
    assert out["pred_masks"].shape == (2, 10, 16, 16)
    boxes = out["pred_boxes"]
    assert torch.all(boxes[..., 2] >= boxes[..., 0]) and torch.all(boxes[..., 3] >= boxes[..., 1])
    assert torch.all((boxes >= 0) & (boxes <= 1))
    if preset == "basenet_ds":
        assert "pred_keypoints" not in out and "pred_kpt_sigma" not in out
    else:
        assert out["pred_keypoints"].shape == (2, 10, 17, 2)
        assert out["pred_kpt_sigma"].shape == (2, 10, 17, 2)
        assert torch.all((out["pred_kpt_sigma"] > 0) & (out["pred_kpt_sigma"] < 1))
    assert len(out["aux_outputs"]) == 1
    assert set(out["aux_outputs"][0]) == set(out) - {"aux_outputs", "enc_outputs"}
    if query_init == "encoder":   # one proposal per memory token: 8x8 + 4x4 + 2x2 at 64x64
        assert out["enc_outputs"]["pred_logits"].shape == (2, 84, 1)
        assert out["enc_outputs"]["pred_boxes"].shape == (2, 84, 4)
        assert model.decoder.query_corners is None
    else:
        assert "enc_outputs" not in out and model.query_selection is None
    model.eval()
    with torch.no_grad():
        evaluated = model(images)
    assert evaluated["aux_outputs"] == [] and "enc_outputs" not in evaluated


def test_presets_turn_on_the_documented_switches():
    flags = ("query_keypoints", "keypoints_in_heads", "keypoints_in_attention")
    table = {name: tuple(getattr(HCQConfig.preset(name), f) for f in flags) for name in PRESETS}
    assert table["basenet_ds"] == table["basenet_dps"] == (False, False, False)
    assert table["hcqnet_alpha"] == (True, False, False)
    assert table["hcqnet_beta"] == (True, True, False)
    assert table["hcqnet"] == table["hcqnet_image_space"] == (True, True, True)
    assert HCQConfig.preset("basenet_ds").tasks == "det_seg"
    assert HCQConfig.preset("hcqnet").pose_space == "canonical"
    assert HCQConfig.preset("hcqnet_image_space").pose_space == "image"
    base = HCQConfig.preset("hcqnet", "base")
    assert (base.profile, base.d_model, base.num_queries) == ("base", 256, 100)


def test_canonical_to_image_mapping():
    corners = torch.tensor([[[0.2, 0.1], [0.6, 0.9]]])                      # p0 = (0.2, 0.1), p1 = (0.6, 0.9)
    canonical = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.5, 0.25], [-0.5, 1.5]]])
    image = canonical_to_image(corners, canonical)
    expected = torch.tensor([[[0.2, 0.1], [0.6, 0.9], [0.4, 0.3], [0.0, 1.3]]])
    torch.testing.assert_close(image, expected)
    torch.testing.assert_close(image_to_canonical(corners, image), canonical)


def test_corners_to_xyxy_orders_corners_and_keeps_each_sigma_with_its_coordinate():
    corners = torch.tensor([[[0.7, 0.2], [0.3, 0.8]]])                      # x swapped, y in order
    sigma = torch.tensor([[0.1, 0.2, 0.3, 0.4]])                            # for p0x, p0y, p1x, p1y
    boxes, s = corners_to_xyxy(corners, sigma)
    torch.testing.assert_close(boxes, torch.tensor([[0.3, 0.2, 0.7, 0.8]]))
    torch.testing.assert_close(s, torch.tensor([[0.3, 0.2, 0.1, 0.4]]))


def test_sine_embed_distinguishes_coordinates():
    emb = sine_embed(torch.tensor([[0.1, 0.2], [0.1, 0.3]]), 8)
    assert emb.shape == (2, 16)
    torch.testing.assert_close(emb[0, :8], emb[1, :8])
    assert not torch.allclose(emb[0, 8:], emb[1, 8:])


def test_iterative_refinement_changes_keypoints_between_layers(images):
    torch.manual_seed(1)
    model = HCQNet(tiny("hcqnet", dec_layers=3, query_init="learned")).train()
    for head in (*model.box_heads, *model.pose_heads):                      # as after some training
        torch.nn.init.normal_(head.mlp.last.weight, std=0.05)
    out = model(images)
    layers = [a["pred_keypoints"] for a in out["aux_outputs"]] + [out["pred_keypoints"]]
    _, corners0, joints0 = model.decoder.initial_state(2)
    start = canonical_to_image(corners0, joints0)
    for before, after in zip([start] + layers[:-1], layers):
        assert (after - before).abs().mean() > 1e-3
    # The refined keypoints are detached between layers: the last layer's box gets no gradient through the
    # earlier layers' refinement heads.
    model.zero_grad()
    (out["pred_boxes"].sum() + out["pred_keypoints"].sum()).backward()
    for head in (model.box_heads[0], model.pose_heads[0], model.box_heads[1]):
        assert all(p.grad is None or not p.grad.any() for p in head.parameters())
    assert model.box_heads[2].mlp.last.weight.grad.abs().sum() > 0


def test_joints_are_split_across_attention_heads():
    model = HCQNet(tiny("hcqnet", n_heads=4))
    index = model.decoder.joint_index
    assert index.shape == (4, math.ceil(17 / 4))
    assert set(index.flatten().tolist()) == set(range(17))
    joints = torch.rand(2, 10, 17, 2)
    points = model.decoder.attention_points(joints)
    assert points.shape == (2, 10, 4, 5, 2)
    torch.testing.assert_close(points[:, :, 1, 0], joints[:, :, int(index[1, 0])])
    assert HCQNet(tiny("hcqnet_beta")).decoder.layers[0].cross_attn.n_extra_points == 0


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float"),
    (torch.zeros(1, 1, 64, 64), r"\[B, 3, H, W\]"),
    (torch.zeros(3, 64, 64), r"\[B, 3, H, W\]"),
    (torch.zeros(1, 3, 64, 80), "multiples of 32"),
    (torch.zeros(0, 3, 64, 64), "empty batch"),
])
def test_bad_images_raise_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        HCQNet.check_images(bad)


def test_config_round_trip_and_validation():
    config = tiny("hcqnet_alpha")
    assert HCQConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown HCQConfig keys"):
        HCQConfig.from_dict({**config.to_dict(), "num_querys": 3})
    with pytest.raises(ValueError, match="need query_keypoints"):
        tiny("basenet_dps", keypoints_in_heads=True)
    with pytest.raises(ValueError, match="pose_space"):
        tiny("hcqnet", pose_space="polar")
    with pytest.raises(ValueError, match="unknown HCQNet preset"):
        HCQConfig.preset("hcqnet_gamma")


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    model = HCQNet(tiny("hcqnet"))
    path = tmp_path / "hcq.pt"
    save_checkpoint(path, model, step=3)
    loaded = load_checkpoint(path, requested=tiny("hcqnet", class_weight=1.0))   # loss fields may differ
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match=r"d_model: 32 != 64.*keypoints_in_attention"):
        load_checkpoint(path, requested=tiny("hcqnet_beta", d_model=64))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_flops_by_module_reports_every_part():
    model = HCQNet(tiny("hcqnet"))
    flops = flops_by_module(model, (64, 64))
    for part in ("backbone", "pixel_decoder", "decoder", "class_head", "box_heads", "pose_heads", "mask_head"):
        assert flops[part] > 0, part
    assert flops["total"] == pytest.approx(sum(v for k, v in flops.items() if k != "total"), rel=0.01)
    assert flops["class_head"] < flops["decoder"] < flops["total"]
    assert model.training                                                    # mode restored


# ----------------------------------------------------------------------------------------- postprocess
def constructed_outputs(logit: float) -> dict:
    """One image, 3 queries; query 1 is a person at normalised box (0.25, 0.25, 0.75, 0.5)."""
    logits = torch.full((1, 3, 1), -6.0)
    logits[0, 1, 0] = logit
    boxes = torch.tensor([[[0.0, 0.0, 0.1, 0.1], [0.25, 0.25, 0.75, 0.5], [0.5, 0.5, 0.6, 0.6]]])
    keypoints = torch.full((1, 3, 17, 2), 0.5)
    keypoints[0, 1, 0] = torch.tensor([0.25, 0.75])
    sigma = torch.full((1, 3, 17, 2), 0.1)
    sigma[0, 1, 3] = torch.tensor([0.3, 0.5])
    masks = torch.full((1, 3, 16, 16), -8.0)
    masks[0, 1] = 8.0                                                        # on everywhere, even outside the box
    return {"pred_logits": logits, "pred_boxes": boxes, "pred_keypoints": keypoints, "pred_kpt_sigma": sigma,
            "pred_masks": masks}


def test_postprocess_returns_nothing_for_low_scores():
    results = HCQPostProcess(score_threshold=0.5)(constructed_outputs(-3.0), [(100, 200)])
    assert results[0]["scores"].shape == (0,)
    assert results[0]["boxes"].shape == (0, 4)
    assert results[0]["keypoints"].shape == (0, 17, 3)
    assert results[0]["masks"].shape == (0, 100, 200)


def test_postprocess_pixel_coordinates_confidence_and_mask_paste():
    result = HCQPostProcess(score_threshold=0.5, box_margin=0.0)(constructed_outputs(3.0), [(100, 200)])[0]
    assert result["scores"].shape == (1,) and result["scores"][0] == pytest.approx(torch.sigmoid(torch.tensor(3.0)))
    torch.testing.assert_close(result["boxes"][0], torch.tensor([50.0, 25.0, 150.0, 50.0]))
    torch.testing.assert_close(result["keypoints"][0, 0], torch.tensor([50.0, 75.0, 0.9]))
    assert result["keypoints"][0, 3, 2] == pytest.approx(0.6)
    mask = result["masks"][0]
    assert mask.shape == (100, 200)
    assert mask[30:45, 60:140].all()                                        # inside the box
    assert not mask[:20].any() and not mask[60:].any() and not mask[:, :40].any()  # pasted only near the box


def test_postprocess_undoes_letterbox():
    # 100 x 200 image letterboxed into 128 x 128: scale 0.64, 32 rows of padding on top.
    outputs = constructed_outputs(3.0)
    result = HCQPostProcess()(outputs, [(100, 200)], letterbox=[(0.64, 0.0, 32.0)], input_size=(128, 128))[0]
    # box y: 0.25 * 128 = 32 -> (32 - 32) / 0.64 = 0;  0.5 * 128 = 64 -> 50;  x: 0.25 * 128 / 0.64 = 50.
    torch.testing.assert_close(result["boxes"][0], torch.tensor([50.0, 0.0, 150.0, 50.0]))
    torch.testing.assert_close(result["keypoints"][0, 0, :2], torch.tensor([50.0, 100.0]))
    with pytest.raises(ValueError, match="letterbox has 2 entries"):
        HCQPostProcess()(outputs, [(100, 200)], letterbox=[(1, 0, 0), (1, 0, 0)])


def test_postprocess_keeps_top_people_sorted():
    outputs = constructed_outputs(3.0)
    outputs["pred_logits"][0, :, 0] = torch.tensor([1.0, 3.0, 2.0])
    result = HCQPostProcess(score_threshold=0.1, max_people=2)(outputs, [(64, 64)])[0]
    expected = torch.sigmoid(torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(result["scores"], expected)


def test_postprocess_drops_duplicates_before_max_people():
    outputs = constructed_outputs(3.0)
    outputs["pred_logits"][0, :, 0] = torch.tensor([2.5, 3.0, 2.0])
    # query 0 is query 1's box shifted by 1% of the width (IoU ~0.96), query 2 a different person
    outputs["pred_boxes"][0, 0] = torch.tensor([0.255, 0.25, 0.755, 0.5])
    raw = HCQPostProcess(score_threshold=0.1, max_people=2)(outputs, [(64, 64)])[0]
    torch.testing.assert_close(raw["scores"], torch.sigmoid(torch.tensor([3.0, 2.5])))   # the duplicate is 2nd
    result = HCQPostProcess(score_threshold=0.1, max_people=2, nms_iou=0.8)(outputs, [(64, 64)])[0]
    torch.testing.assert_close(result["scores"], torch.sigmoid(torch.tensor([3.0, 2.0])))   # the other person
    assert result["masks"].shape == (2, 64, 64) and result["keypoints"].shape == (2, 17, 3)
    with pytest.raises(ValueError, match="nms_iou must be in"):
        HCQPostProcess(nms_iou=0.0)


def test_suppress_duplicates_matches_the_greedy_definition():
    from hcq_ros.tracking.association import box_iou

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 80, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (60, 2))], axis=1)
    scores = rng.uniform(0, 1, 60)
    for threshold in (0.3, 0.5, 0.8):
        kept = suppress_duplicates(boxes, scores, threshold)
        assert np.all(np.diff(scores[kept]) <= 0)                             # highest score first
        iou = box_iou(boxes, boxes)
        expected = []                                                          # greedy NMS, written out
        for i in np.argsort(-scores):
            if all(iou[i, j] <= threshold for j in expected):
                expected.append(i)
        assert kept.tolist() == expected
    assert sorted(suppress_duplicates(boxes, scores, 1.0).tolist()) == list(range(60))
    assert suppress_duplicates(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="3 boxes but 2 scores"):
        suppress_duplicates(boxes[:3], scores[:2], 0.5)


@pytest.mark.parametrize("query_levels", [1, 2, 3])
def test_pixel_decoder_query_levels(query_levels):
    """Only the coarsest ``query_levels`` levels are encoded; finer levels are their projection plus the next
    coarser memory level upsampled (FPN top-down), and every level's input still reaches the memory."""
    import torch.nn.functional as F

    from hcq_ros.models.pixel_decoder import MSDeformPixelDecoder

    torch.manual_seed(0)
    channels = {"res2": 8, "res3": 16, "res4": 24, "res5": 32}
    decoder = MSDeformPixelDecoder(channels, 32, 16, 1, 4, 2, 64, query_levels=query_levels).eval()
    feats = {k: torch.randn(2, c, 64 // s, 64 // s, requires_grad=True)
             for (k, c), s in zip(channels.items(), (4, 8, 16, 32))}
    out = decoder(feats)
    shapes, starts = out["level_shapes"], out["level_starts"]
    assert shapes == [(8, 8), (4, 4), (2, 2)] and out["memory"].shape == (2, 84, 32)
    assert out["mask_features"].shape == (2, 16, 16, 16)
    memory = out["memory"]
    for lvl in range(3 - query_levels):           # not encoded: projection + upsampled coarser memory
        (h, w), (hc, wc) = shapes[lvl], shapes[lvl + 1]
        proj = decoder.input_proj[lvl](feats[("res3", "res4", "res5")[lvl]]).flatten(2).transpose(1, 2)
        coarser = memory[:, starts[lvl + 1]:starts[lvl + 1] + hc * wc].transpose(1, 2).reshape(2, 32, hc, wc)
        up = F.interpolate(coarser, size=(h, w), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        assert torch.allclose(memory[:, starts[lvl]:starts[lvl] + h * w], proj + up, atol=1e-5)
    encoded = memory[:, starts[3 - query_levels]:]
    assert torch.allclose(encoded.mean(-1), torch.zeros(()), atol=1e-4)   # post-norm (LayerNorm) tokens
    (encoded * torch.randn_like(encoded)).sum().backward()   # the encoded tokens sample every level
    for name in ("res3", "res4", "res5"):
        assert feats[name].grad is not None and feats[name].grad.abs().sum() > 0, name


def test_pixel_decoder_rejects_bad_query_levels():
    from hcq_ros.models.pixel_decoder import MSDeformPixelDecoder

    with pytest.raises(ValueError, match="query_levels"):
        MSDeformPixelDecoder({"res2": 8, "res3": 8, "res4": 8, "res5": 8}, 32, 16, 1, 4, 2, 64, query_levels=4)
    with pytest.raises(ValueError, match="enc_query_levels"):
        HCQConfig.preset("hcqnet", "small", enc_query_levels=0).validate()


def test_encoder_query_selection_takes_the_best_proposals(images):
    from hcq_ros.models.query_selection import EncoderQuerySelection, anchor_corners

    anchors = anchor_corners([(4, 4), (2, 2)], 0.1, "cpu", torch.float32)
    assert anchors.shape == (20, 2, 2) and torch.all(anchors[:, 0] < anchors[:, 1])
    # level 0: width 0.1, height 0.2 around the first pixel centre (0.125, 0.125); level 1 twice as large
    torch.testing.assert_close(anchors[0], torch.tensor([[0.075, 0.025], [0.175, 0.225]]))
    torch.testing.assert_close(anchors[16, 1] - anchors[16, 0], torch.tensor([0.2, 0.4]))

    selection = EncoderQuerySelection(8)
    memory = torch.randn(2, 20, 8, requires_grad=True)
    out = selection(memory, [(4, 4), (2, 2)], k=5)
    best = out["enc_logits"][..., 0].topk(5, dim=1).indices
    assert torch.equal(out["index"], best)
    boxes = out["enc_boxes"].reshape(2, 20, 2, 2)
    torch.testing.assert_close(out["corners"], torch.stack([boxes[b, best[b]] for b in range(2)]))
    assert not out["corners"].requires_grad   # references are detached, as between decoder layers
    # untrained box head: the proposals are the anchors
    own = anchor_corners([(4, 4), (2, 2)], selection.anchor_size, "cpu", torch.float32)
    torch.testing.assert_close(boxes[0], own, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="needs >= 30 memory tokens"):
        selection(memory, [(4, 4), (2, 2)], k=30)
    model = HCQNet(tiny("hcqnet", query_init="encoder", num_queries=90))   # 84 tokens at 64x64
    with pytest.raises(ValueError, match="use a larger input"):
        model(images)


def test_encoder_queries_start_from_the_selected_boxes(images):
    torch.manual_seed(0)
    model = HCQNet(tiny("hcqnet", query_init="encoder")).eval()
    captured = {}
    original = model.decoder.initial_state

    def spy(batch, corners=None):
        captured["corners"] = corners
        return original(batch, corners)
    model.decoder.initial_state = spy
    with torch.no_grad():
        model(images)
        memory = model.pixel_decoder(model.backbone(images))
        expected = model.query_selection(memory["memory"], memory["level_shapes"], 10)["corners"]
    torch.testing.assert_close(captured["corners"], expected)
    with pytest.raises(ValueError, match="needs the selected proposal corners"):
        original(2)
