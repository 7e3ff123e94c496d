"""PersonNet losses: batch-hard triplet (brute force, margins, masking), identity/attribute CE, bootstrapped part
CE (brute force), pose L1 on labelled joints, PersonCriterion with missing target kinds, and a short optimisation
on a fixed tiny batch."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hcq_ros.data.schema import ATTRIBUTE_NAMES, ATTRIBUTES, NUM_KEYPOINTS, NUM_PARTS
from hcq_ros.models.person_net import PersonNet, PersonNetConfig
from hcq_ros.train.person_losses import (DEFAULT_WEIGHTS, PersonCriterion, attribute_loss, batch_hard_triplet_loss,
                                         bootstrapped_cross_entropy, identity_loss, keypoint_coordinate_loss)


def brute_force_triplet(emb: torch.Tensor, labels: torch.Tensor, margin: float, soft: bool) -> float:
    losses = []
    for a in range(len(labels)):
        if labels[a] < 0:
            continue
        pos = [torch.dist(emb[a], emb[j]).item() for j in range(len(labels))
               if j != a and labels[j] == labels[a]]
        neg = [torch.dist(emb[a], emb[j]).item() for j in range(len(labels))
               if labels[j] >= 0 and labels[j] != labels[a]]
        if not pos or not neg:
            continue
        gap = max(pos) - min(neg)
        losses.append(math.log1p(math.exp(gap)) if soft else max(0.0, gap + margin))
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize("soft", [False, True])
def test_triplet_matches_brute_force(soft):
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(12, 8, generator=gen)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, -1, 4])  # 3 and 4 have no positive, -1 is unknown
    got = batch_hard_triplet_loss(emb, labels, margin=0.5, soft_margin=soft)
    assert got.item() == pytest.approx(brute_force_triplet(emb, labels, 0.5, soft), rel=1e-5)
    assert got.item() > 0


def test_triplet_zero_when_separated_by_margin_and_positive_otherwise():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    emb = centres[labels] + 0.1 * torch.tensor([[1, 0], [-1, 0], [0, 1], [0, -1], [1, 1], [-1, -1.0]])
    emb.requires_grad_(True)
    loss = batch_hard_triplet_loss(emb, labels, margin=1.0)
    assert loss.item() == 0.0
    close = emb.detach().clone()
    close[2:4] = close[:2] + torch.tensor([0.5, 0.0])  # identity 1 half a unit from identity 0
    assert batch_hard_triplet_loss(close, labels, margin=1.0).item() > 0
    # soft margin is never exactly 0 but small when well separated
    assert 0 < batch_hard_triplet_loss(emb, labels, soft_margin=True).item() < 1e-3


def test_triplet_without_any_valid_anchor_is_zero_and_backpropagates():
    emb = torch.randn(4, 3, requires_grad=True)
    loss = batch_hard_triplet_loss(emb, torch.tensor([0, 1, 2, 3]))  # no positives at all
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(emb.grad) == 0
    with pytest.raises(ValueError, match="labels"):
        batch_hard_triplet_loss(emb, torch.tensor([0, 1]))


def test_identity_loss_ignores_unknown_and_smooths():
    logits = torch.randn(5, 6)
    labels = torch.tensor([1, -1, 3, 3, -1])
    known = labels >= 0
    want = F.cross_entropy(logits[known], labels[known], label_smoothing=0.1)
    assert identity_loss(logits, labels, 0.1).item() == pytest.approx(want.item())
    assert identity_loss(logits, labels, 0.1).item() != pytest.approx(identity_loss(logits, labels).item())
    assert identity_loss(logits, torch.full((5,), -1)).item() == 0.0
    with pytest.raises(ValueError, match="classifier size"):
        identity_loss(logits, torch.tensor([0, 1, 2, 3, 6]))


def test_attribute_loss_averages_labelled_attributes():
    gen = torch.Generator().manual_seed(1)
    logits = [torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen), torch.randn(4, 5, generator=gen)]
    targets = torch.tensor([[0, -1, -1], [2, -1, 4], [-1, -1, 1], [1, -1, -1]])  # attribute 1 never labelled
    want = (F.cross_entropy(logits[0][[0, 1, 3]], torch.tensor([0, 2, 1]))
            + F.cross_entropy(logits[2][[1, 2]], torch.tensor([4, 1]))) / 2
    assert attribute_loss(logits, targets).item() == pytest.approx(want.item(), rel=1e-6)
    assert attribute_loss(logits, torch.full((4, 3), -1)).item() == 0.0
    with pytest.raises(ValueError, match="attribute targets"):
        attribute_loss(logits, targets[:, :2])


@pytest.mark.parametrize("fraction", [0.25, 1.0, 0.01])
def test_bootstrapped_ce_is_mean_of_hardest_pixels(fraction):
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 6, 5, generator=gen)
    targets = torch.randint(0, 4, (2, 6, 5), generator=gen)
    targets[0, :2] = 255
    pixel = []
    for b in range(2):
        for y in range(6):
            for x in range(5):
                t = int(targets[b, y, x])
                if t != 255:
                    pixel.append(-torch.log_softmax(logits[b, :, y, x], 0)[t].item())
    k = max(1, math.ceil(fraction * len(pixel)))
    want = sum(sorted(pixel, reverse=True)[:k]) / k
    got = bootstrapped_cross_entropy(logits, targets.to(torch.uint8), top_fraction=fraction)
    assert got.item() == pytest.approx(want, rel=1e-5)
    assert bootstrapped_cross_entropy(logits, torch.full((2, 6, 5), 255)).item() == 0.0
    with pytest.raises(ValueError, match="part targets"):
        bootstrapped_cross_entropy(logits, targets[:, :3])


def test_pose_loss_ignores_unlabelled_joints():
    gen = torch.Generator().manual_seed(3)
    pred = torch.rand(2, NUM_KEYPOINTS, 2, generator=gen)
    target = torch.rand(2, NUM_KEYPOINTS, 3, generator=gen)
    target[..., 2] = 0
    target[0, [0, 5, 9], 2] = 2
    target[1, 16, 2] = 1
    labelled = target[..., 2] > 0
    want = (pred - target[..., :2]).abs().sum(-1)[labelled].sum() / 4
    assert keypoint_coordinate_loss(pred, target).item() == pytest.approx(want.item())
    moved = pred.clone()
    moved[~labelled] += 0.3  # unlabelled joints moved: loss unchanged
    assert keypoint_coordinate_loss(moved, target).item() == pytest.approx(want.item())
    target[..., 2] = 0
    assert keypoint_coordinate_loss(pred, target).item() == 0.0
    with pytest.raises(ValueError, match="keypoint targets"):
        keypoint_coordinate_loss(pred, target[..., :2])


def _model(num_identities: int = 4, tasks=("reid", "attributes", "parts", "pose")) -> PersonNet:
    config = PersonNetConfig.preset("small", pose_dim=16, fpn_dim=16, seg_dim=16, embedding_dim=32,
                                    num_identities=num_identities, tasks=tasks, crop_size=(64, 32))
    return PersonNet(config)


def _targets(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    keypoints = torch.rand(batch, NUM_KEYPOINTS, 3, generator=gen)
    keypoints[..., 2] = (torch.rand(batch, NUM_KEYPOINTS, generator=gen) > 0.3).float() * 2
    attributes = torch.stack([torch.randint(0, len(ATTRIBUTES[n]), (batch,), generator=gen)
                              for n in ATTRIBUTE_NAMES], dim=1)
    return {"identities": torch.arange(batch) // 2,          # P x K = (batch / 2) x 2
            "attributes": attributes,
            "parts": torch.randint(0, NUM_PARTS, (batch, 64, 32), generator=gen).to(torch.uint8),
            "keypoints": keypoints}


def test_criterion_sums_only_present_targets():
    torch.manual_seed(0)
    model = _model().train()
    out = model(torch.randn(4, 3, 64, 32))
    targets = _targets(4)
    criterion = PersonCriterion(weights={"pose": 5.0, "identity": 0.5})
    full = criterion(out, targets)
    assert set(full) == {"triplet", "identity", "attributes", "parts", "pose", "total"}
    weights = {**DEFAULT_WEIGHTS, "pose": 5.0, "identity": 0.5}
    assert full["total"].item() == pytest.approx(sum(weights[k] * v.item() for k, v in full.items() if k != "total"),
                                                 rel=1e-6)
    reid_batch = criterion(out, {"identities": targets["identities"], "attributes": targets["attributes"]})
    assert set(reid_batch) == {"triplet", "identity", "attributes", "total"}
    parsing_batch = criterion(out, {"parts": targets["parts"], "identities": torch.full((4,), -1)})
    assert set(parsing_batch) == {"parts", "total"}
    assert parsing_batch["parts"].item() == pytest.approx(full["parts"].item())
    nothing = criterion(out, {"keypoints": torch.zeros(4, NUM_KEYPOINTS, 3)})  # no labelled joint
    assert set(nothing) == {"total"} and nothing["total"].item() == 0.0
    nothing["total"].backward()  # a batch without usable targets still steps without error
    off = PersonCriterion(weights={"parts": 0.0})(out, targets)
    assert "parts" not in off
    with pytest.raises(ValueError, match="unknown PersonCriterion weight keys"):
        PersonCriterion(weights={"reid": 1.0})
    with pytest.raises(ValueError, match="part targets"):
        criterion(out, {"parts": targets["parts"][:, :32]})


def test_criterion_skips_terms_of_disabled_heads():
    torch.manual_seed(0)
    model = _model(num_identities=0, tasks=("pose",)).train()
    out = model(torch.randn(4, 3, 64, 32))
    terms = PersonCriterion()(out, _targets(4))
    assert set(terms) == {"pose", "total"}


def test_few_steps_reduce_total_loss_on_fixed_batch():
    torch.manual_seed(0)
    model = _model().train()
    criterion = PersonCriterion()
    x = torch.randn(4, 3, 64, 32, generator=torch.Generator().manual_seed(5))
    targets = _targets(4, seed=5)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        total = criterion(model(x), targets)["total"]
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        losses.append(total.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses
