"""HCQ criterion and RLE: finite losses and gradients for every preset (with and without people), the RLE
likelihood, labelled-joint masking, empty targets, the L1/focal options and an overfit check."""
from __future__ import annotations

import math

import pytest
import torch

from hcq_ros.models.hcq import PRESETS, QUERY_INITS, HCQConfig, HCQNet
from hcq_ros.train import HCQCriterion, HungarianMatcher, build_criterion
from hcq_ros.train.rle import RealNVP2D, RLELoss

TINY = dict(d_model=32, mask_dim=32, enc_layers=2, dec_layers=2, num_queries=10, ffn_dim=64, mask_points=256)
# Parameters that get no gradient at initialisation by design: the backbone blocks behind a zero-initialised
# last norm (identity blocks) and inputs of attention layers whose offset/weight projections start at zero.
# The proposal box head's last layer starts at zero (proposals = anchors), so the layers before it get none either.
ZERO_GRAD_AT_INIT = ("backbone.", "pixel_decoder.level_embed", "query_selection.box_head.layers.0",
                     "query_selection.box_head.layers.1")
ENCODER_LOSSES = {"loss_class_enc", "loss_box_enc", "loss_giou_enc"}


def tiny(preset: str = "hcqnet", **overrides) -> HCQConfig:
    return HCQConfig.preset(preset, "small", **{**TINY, **overrides})


def person(box, size=64, gen=None):
    """One synthetic person: bool mask of the box and 17 joints inside it (every 4th unlabelled)."""
    x0, y0, x1, y1 = (int(v * size) for v in box)
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    lo, hi = torch.tensor(box[:2]), torch.tensor(box[2:])
    keypoints = torch.zeros(17, 3)
    keypoints[:, :2] = lo + torch.rand(17, 2, generator=gen) * (hi - lo)
    keypoints[:, 2] = 2.0
    keypoints[::4] = 0.0
    return mask, keypoints


def make_target(boxes, size=64, seed=0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    if not boxes:
        return {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, size, size, dtype=torch.bool),
                "keypoints": torch.zeros(0, 17, 3)}
    masks, keypoints = zip(*(person(b, size, gen) for b in boxes))
    return {"boxes": torch.tensor(boxes), "masks": torch.stack(masks), "keypoints": torch.stack(keypoints)}


PEOPLE = [(0.1, 0.1, 0.4, 0.9), (0.55, 0.3, 0.9, 0.8)]


@pytest.mark.parametrize("query_init", QUERY_INITS)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_finite_losses_and_gradients_for_every_preset(preset, query_init):
    torch.manual_seed(0)
    config = tiny(preset, query_init=query_init)
    model, criterion = HCQNet(config).train(), build_criterion(config)
    images = torch.randn(2, 3, 64, 64)
    losses = criterion(model(images), [make_target(PEOPLE), make_target([])])   # one image without people
    expected = {"loss", "loss_class", "loss_mask", "loss_dice", "loss_box"} | (
        {"loss_pose"} if config.with_pose else set())
    encoder = ENCODER_LOSSES if query_init == "encoder" else set()
    assert expected | {k + "_aux0" for k in expected - {"loss"}} | encoder == set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    for name, p in [*model.named_parameters(), *(("criterion." + n, p) for n, p in criterion.named_parameters())]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if not name.startswith(ZERO_GRAD_AT_INIT):
            assert p.grad.abs().sum() > 0, name

    # A batch with nobody in it: only the class loss is non-zero, and it pushes every query to no-object.
    model.zero_grad()
    out = model(images[:1])
    out["pred_logits"].retain_grad()
    losses = criterion(out, [make_target([])])
    assert losses["loss_class"] > 0 and losses["loss_mask"] == 0 and losses["loss_box"] == 0
    if encoder:
        assert losses["loss_class_enc"] > 0 and losses["loss_box_enc"] == 0 and losses["loss_giou_enc"] == 0
    losses["loss"].backward()
    assert (out["pred_logits"].grad > 0).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_rle_loss_is_lower_for_a_closer_prediction():
    torch.manual_seed(0)
    rle = RLELoss()
    target = torch.tensor([[0.3, -0.2], [1.0, 2.0]])
    sigma = torch.full((2, 2), 0.2)
    near, far = rle(target + 0.05, sigma, target), rle(target + 0.5, sigma, target)
    assert (near < far).all()
    # For a given error, the best sigma is neither tiny nor huge: the likelihood calibrates the scale.
    losses = [rle(target + 0.3, torch.full((2, 2), s), target).mean().item() for s in (0.01, 0.3, 0.99)]
    assert losses[1] < losses[0] and losses[1] < losses[2]


def test_realnvp_density_integrates_to_one():
    torch.manual_seed(0)
    flow = RealNVP2D(hidden=16, num_couplings=4)
    for p in flow.parameters():                                             # a clearly non-identity flow
        torch.nn.init.normal_(p, std=0.3)
    step = 0.05
    axis = torch.arange(-8.0, 8.0, step) + step / 2
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum().item() * step * step
    assert mass == pytest.approx(1.0, abs=0.02)


def hand_outputs(pred_keypoints: torch.Tensor) -> dict:
    """Outputs of one image with one query, predicting the person of make_target([PEOPLE[0]]) exactly."""
    target = make_target([PEOPLE[0]])
    mask_logits = torch.where(target["masks"][0, ::4, ::4], 6.0, -6.0)[None, None]
    return {"pred_logits": torch.tensor([[[4.0]]]), "pred_masks": mask_logits,
            "pred_boxes": target["boxes"][None], "pred_box_sigma": torch.full((1, 1, 4), 0.1),
            "pred_keypoints": pred_keypoints[None, None], "pred_kpt_sigma": torch.full((1, 1, 17, 2), 0.1)}


def test_pose_loss_counts_only_labelled_joints():
    criterion = HCQCriterion(HungarianMatcher(num_points=64), with_pose=True, num_points=64)
    target = make_target([PEOPLE[0]])
    exact = target["keypoints"][0, :, :2].clone()
    moved_unlabelled = exact.clone()
    moved_unlabelled[::4] += 0.3                                            # joints with visibility 0
    moved_labelled = exact.clone()
    moved_labelled[1] += 0.3
    loss = {name: criterion(hand_outputs(k), [target])["loss_pose"].item()
            for name, k in (("exact", exact), ("unlabelled", moved_unlabelled), ("labelled", moved_labelled))}
    assert loss["unlabelled"] == pytest.approx(loss["exact"], abs=1e-5)
    assert loss["labelled"] > loss["exact"] + 0.1
    # Normalised per labelled joint: the per-joint loss of a perfect prediction does not depend on the count.
    target_few = {**target, "keypoints": target["keypoints"].clone()}
    target_few["keypoints"][0, 2:, 2] = 0.0
    few = criterion(hand_outputs(exact), [target_few])["loss_pose"].item()
    assert few == pytest.approx(loss["exact"], rel=1e-4)


def test_l1_and_focal_options():
    torch.manual_seed(0)
    config = tiny("hcqnet", box_loss="l1", pose_loss="l1", class_loss="focal", giou_weight=2.0)
    model, criterion = HCQNet(config).train(), build_criterion(config)
    out = model(torch.randn(1, 3, 64, 64))
    assert "pred_box_sigma" not in out and "pred_kpt_sigma" not in out
    assert criterion.weights["loss_box"] == config.box_l1_weight and not list(criterion.parameters())
    losses = criterion(out, [make_target(PEOPLE)])
    assert {"loss_giou", "loss_giou_aux0"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    # L1 box loss of a perfect box is zero.
    perfect = hand_outputs(make_target([PEOPLE[0]])["keypoints"][0, :, :2])
    l1 = HCQCriterion(HungarianMatcher(num_points=64), with_pose=True, box_loss="l1", pose_loss="l1")
    assert l1(perfect, [make_target([PEOPLE[0]])])["loss_box"].item() == pytest.approx(0.0, abs=1e-6)


def test_bad_targets_raise_clear_errors():
    criterion = build_criterion(tiny())
    outputs = hand_outputs(torch.zeros(17, 2))
    bad = make_target([PEOPLE[0]])
    with pytest.raises(ValueError, match=r"targets\[0\] has no 'keypoints'"):
        criterion(outputs, [{k: v for k, v in bad.items() if k != "keypoints"}])
    with pytest.raises(ValueError, match=r"targets\[0\]\['masks'\] must be \[G=1, H, W\]"):
        criterion(outputs, [{**bad, "masks": bad["masks"][0]}])
    with pytest.raises(ValueError, match="2 targets for a batch of 1"):
        criterion(outputs, [bad, bad])


def test_a_few_steps_on_one_batch_reduce_the_loss():
    torch.manual_seed(0)
    config = tiny("hcqnet")
    model, criterion = HCQNet(config).train(), build_criterion(config)
    targets = [make_target(PEOPLE, seed=1), make_target([(0.3, 0.2, 0.7, 0.95)], seed=2)]
    images = torch.randn(2, 3, 64, 64) * 0.2
    for image, target in zip(images, targets):                              # people are visible in the image
        image[:, target["masks"].any(0)] += 1.0
    optimiser = torch.optim.AdamW([*model.parameters(), *criterion.parameters()], lr=1e-3)
    history = []
    for _ in range(15):
        loss = criterion(model(images), targets)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(loss.item())
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-3:]) / 3 < 0.85 * sum(history[:3]) / 3


def test_encoder_proposals_are_matched_one_to_many():
    config = tiny("hcqnet", query_init="encoder", enc_repeats=3)
    criterion = build_criterion(config)
    target = make_target(PEOPLE)
    s = 20
    logits = torch.full((1, s, 1), -4.0)
    boxes = torch.tensor([[0.0, 0.0, 0.05, 0.05]]).repeat(1, s, 1)             # far from everyone
    boxes[0, :3] = torch.tensor(PEOPLE[0])                                    # three exact proposals each
    boxes[0, 3:6] = torch.tensor(PEOPLE[1])
    logits[0, :6] = 4.0
    exact = criterion.encoder_losses({"pred_logits": logits, "pred_boxes": boxes}, [target], num_people=2.0)
    assert exact["loss_box_enc"] < 1e-6 and exact["loss_giou_enc"] < 1e-6
    indices = criterion.enc_matcher({"pred_logits": logits, "pred_boxes": boxes},
                                    [{"boxes": target["boxes"].repeat(3, 1)}])
    assert sorted(indices[0][0].tolist()) == list(range(6))                   # 2 people x 3 repeats
    shifted = boxes.clone()
    shifted[0, :6] += 0.05
    worse = criterion.encoder_losses({"pred_logits": logits, "pred_boxes": shifted}, [target], num_people=2.0)
    assert worse["loss_box_enc"] > 0.1 and worse["loss_giou_enc"] > exact["loss_giou_enc"]
    with pytest.raises(ValueError, match="enc_repeats"):
        HCQCriterion(HungarianMatcher(), with_pose=True, enc_repeats=0)
