"""Hungarian matcher: valid assignments, the right query wins on constructed cases, point sampling, costs."""
from __future__ import annotations

import pytest
import torch

from hcq_ros.train.matcher import HungarianMatcher, pairwise_dice, pairwise_sigmoid_bce, point_sample


def rect_mask(h: int, w: int, box: tuple[float, float, float, float]) -> torch.Tensor:
    """bool [h, w], True inside the normalised xyxy box."""
    ys = (torch.arange(h) + 0.5) / h
    xs = (torch.arange(w) + 0.5) / w
    inside_x = (xs >= box[0]) & (xs <= box[2])
    inside_y = (ys >= box[1]) & (ys <= box[3])
    return inside_y[:, None] & inside_x[None, :]


PEOPLE = [(0.05, 0.1, 0.35, 0.9), (0.6, 0.2, 0.95, 0.7), (0.4, 0.5, 0.55, 0.95)]


def targets_for(boxes, size=64) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "masks": torch.stack([rect_mask(size, size, b) for b in boxes]) if boxes
            else torch.zeros(0, size, size, dtype=torch.bool)}


def test_assignment_is_valid_and_handles_empty_images():
    torch.manual_seed(0)
    outputs = {"pred_logits": torch.randn(2, 10, 1), "pred_masks": torch.randn(2, 10, 16, 16),
               "pred_boxes": torch.rand(2, 10, 4)}
    indices = HungarianMatcher(num_points=200)(outputs, [targets_for(PEOPLE), targets_for([])])
    pred, gt = indices[0]
    assert pred.dtype == gt.dtype == torch.int64
    assert len(pred) == 3 and len(set(pred.tolist())) == 3 and sorted(gt.tolist()) == [0, 1, 2]
    assert all(0 <= p < 10 for p in pred.tolist())
    assert len(indices[1][0]) == len(indices[1][1]) == 0


def test_more_people_than_queries_matches_every_query_once():
    outputs = {"pred_logits": torch.zeros(1, 2, 1), "pred_masks": torch.zeros(1, 2, 8, 8)}
    pred, gt = HungarianMatcher(num_points=64)(outputs, [targets_for(PEOPLE)])[0]
    assert sorted(pred.tolist()) == [0, 1] and len(set(gt.tolist())) == 2


def test_prefers_the_query_whose_mask_fits():
    torch.manual_seed(0)
    masks = torch.full((1, 6, 16, 16), -4.0)
    # query 4 draws person 0, query 1 person 1, query 2 person 2, each as logits +-4.
    for query, person in ((4, 0), (1, 1), (2, 2)):
        masks[0, query] = torch.where(rect_mask(16, 16, PEOPLE[person]), 4.0, -4.0)
    outputs = {"pred_logits": torch.zeros(1, 6, 1), "pred_masks": masks}
    pred, gt = HungarianMatcher(class_weight=2.0, num_points=500)(outputs, [targets_for(PEOPLE)])[0]
    assert dict(zip(gt.tolist(), pred.tolist())) == {0: 4, 1: 1, 2: 2}


def test_class_cost_breaks_ties_between_equal_masks():
    masks = torch.where(rect_mask(16, 16, PEOPLE[0]), 4.0, -4.0).expand(1, 3, 16, 16).clone()
    logits = torch.tensor([[[-2.0], [3.0], [0.0]]])
    outputs = {"pred_logits": logits, "pred_masks": masks}
    pred, _ = HungarianMatcher(num_points=300)(outputs, [targets_for(PEOPLE[:1])])[0]
    assert pred.tolist() == [1]


def test_optional_box_cost_picks_the_nearest_box():
    boxes = torch.tensor([[[0.5, 0.5, 0.6, 0.6], [0.06, 0.1, 0.35, 0.88], [0.0, 0.0, 1.0, 1.0]]])
    outputs = {"pred_logits": torch.zeros(1, 3, 1), "pred_masks": torch.zeros(1, 3, 8, 8), "pred_boxes": boxes}
    matcher = HungarianMatcher(class_weight=0.0, mask_weight=0.0, dice_weight=0.0, box_weight=1.0)
    pred, _ = matcher(outputs, [targets_for(PEOPLE[:1])])[0]
    assert pred.tolist() == [1]


def test_non_finite_costs_do_not_crash():
    outputs = {"pred_logits": torch.tensor([[[float("nan")], [1.0]]]), "pred_masks": torch.zeros(1, 2, 8, 8)}
    pred, gt = HungarianMatcher(num_points=32)(outputs, [targets_for(PEOPLE[:1])])[0]
    assert pred.tolist() == [1] and gt.tolist() == [0]


def test_point_sample_reads_pixel_centres_across_resolutions():
    # A map whose value is the column index: pixel centre of column j sits at x = (j + 0.5) / W.
    coarse = torch.arange(4.0).expand(1, 1, 4, 4)
    fine = torch.arange(16.0).expand(1, 1, 16, 16)
    coords = torch.tensor([[[0.125, 0.5], [0.625, 0.3], [0.5, 0.5]]])       # columns 0, 2 and between 1 and 2
    torch.testing.assert_close(point_sample(coarse, coords)[0, 0], torch.tensor([0.0, 2.0, 1.5]))
    # The same normalised point reads the same image location at 4x resolution (x * 16 - 0.5).
    torch.testing.assert_close(point_sample(fine, coords)[0, 0], torch.tensor([1.5, 9.5, 7.5]))


def test_pairwise_costs_are_lowest_on_the_diagonal():
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    logits = (targets * 2 - 1) * 6.0
    for cost in (pairwise_sigmoid_bce(logits, targets), pairwise_dice(logits, targets)):
        assert cost.shape == (2, 2)
        assert cost[0, 0] < cost[0, 1] and cost[1, 1] < cost[1, 0]
    assert pairwise_dice(logits, targets)[0, 0] < 0.01


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="all cost weights are 0"):
        HungarianMatcher(0.0, 0.0, 0.0, 0.0)
    outputs = {"pred_logits": torch.zeros(2, 3, 1), "pred_masks": torch.zeros(2, 3, 8, 8)}
    with pytest.raises(ValueError, match="1 targets for a batch of 2"):
        HungarianMatcher()(outputs, [targets_for(PEOPLE)])
