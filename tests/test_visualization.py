"""Overlay drawing: determinism, what gets drawn where, robustness, and ground truth -> PersonFrame."""
from __future__ import annotations

import numpy as np
import pytest

from hcq_ros.data.schema import NUM_KEYPOINTS
from hcq_ros.data.synth import SceneConfig, generate_image
from hcq_ros.result import Person, PersonFrame
from hcq_ros.ros.visualization import (PART_PALETTE, TENTATIVE_COLOR, draw_frame, frame_from_sample,
                                       person_label, track_color)

W, H = 96, 72


def standing_keypoints(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """[17, 3] a rough upright pose inside the box, all joints confident."""
    cx, h = (x0 + x1) / 2, y1 - y0
    ys = y0 + h * np.array([.08, .06, .06, .08, .08, .25, .25, .42, .42, .55, .55, .55, .55, .75, .75, .95, .95])
    dx = (x1 - x0) * 0.25 * np.array([0, -.3, .3, -.6, .6, -1, 1, -1.2, 1.2, -1.3, 1.3, -.6, .6, -.6, .6, -.6, .6])
    return np.stack([cx + dx, ys, np.ones(NUM_KEYPOINTS)], axis=1).astype(np.float32)


def person(track_id: int, box, mask: bool = True) -> Person:
    p = Person(track_id=track_id, score=0.8, box=box, keypoints=standing_keypoints(*box),
               attributes={"upper_color": ("blue", 0.9), "backpack": ("yes", 0.7)})
    if mask:
        _, _, gw, gh = p.box_grid()
        p.mask = np.ones((gh, gw), bool)
        p.parts = np.full((gh, gw), 4, np.uint8)  # upper_clothes everywhere
    return p


def make_frame(persons, dropped=None) -> PersonFrame:
    return PersonFrame(stamp_ns=0, frame_id="camera", image_size=(W, H), persons=persons,
                       timings_ms={"detector": 5.0}, dropped=dropped)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(60, 200, (H, W, 3), dtype=np.uint8)


def test_deterministic_and_input_untouched(image):
    frame = make_frame([person(2, [10, 12, 40, 66]), person(0, [55, 20, 80, 60])])
    before = image.copy()
    first = draw_frame(image, frame, show_parts=True)
    assert first.dtype == np.uint8 and first.shape == image.shape
    assert draw_frame(image, frame, show_parts=True).tobytes() == first.tobytes()
    np.testing.assert_array_equal(image, before)
    assert not np.array_equal(first, image)


def test_mask_tint_parts_and_untouched_background():
    black = np.zeros((H, W, 3), np.uint8)
    p = person(2, [50, 30, 90, 70])
    p.keypoints[:, 2] = 0.0
    frame = make_frame([p])
    tinted = draw_frame(black, frame, show_keypoints=False, show_labels=False)
    inside = tinted[50, 70]  # mask interior, away from box corners and outline
    expected = (0.45 * np.array(track_color(2))).astype(np.uint8)
    np.testing.assert_array_equal(inside, expected)
    assert not tinted[:28, :48].any()  # nothing drawn far from the person (no labels, no status line)
    parts = draw_frame(black, frame, show_parts=True, show_keypoints=False, show_labels=False)
    np.testing.assert_array_equal(parts[50, 70], (0.55 * PART_PALETTE[4]).astype(np.uint8))


def test_tentative_tracks_are_grey_and_dashed():
    black = np.zeros((H, W, 3), np.uint8)
    box = [10, 10, 50, 70]  # corner arms of 8 px along the top edge from x = 10
    confirmed = draw_frame(black, make_frame([person(1, box, mask=False)]), show_keypoints=False, show_labels=False)
    tentative = draw_frame(black, make_frame([person(0, box, mask=False)]), show_keypoints=False, show_labels=False)
    assert confirmed[10, 17].any()              # solid corner arm
    assert not tentative[10, 17].any()          # gap of the dashed arm
    r, g, b = (int(v) for v in tentative[10, 12])
    assert r == g == b > 100 and TENTATIVE_COLOR == (170, 170, 170)  # grey (anti-aliased edge: a bit darker)
    assert person_label(person(0, box))[0].startswith("?")
    assert person_label(person(4, box)) == ["#4 0.80", "upper: blue", "backpack"]


@pytest.mark.parametrize("box", [
    [-30, -20, 20, 30],        # partly outside (top-left)
    [80, 60, 140, 120],        # partly outside (bottom-right)
    [200, 200, 260, 300],      # entirely outside
    [30, 30, 30, 30],          # zero-size box
    [30.5, 30.2, 30.7, 30.4],  # sub-pixel box
])
def test_robust_to_boxes_at_and_beyond_the_border(image, box):
    p = person(3, box)
    p.keypoints[0] = (1e9, -1e9, 1.0)             # absurd coordinates must not overflow OpenCV
    p.keypoints[1] = (np.nan, 5.0, 1.0)
    out = draw_frame(image, make_frame([p]), show_parts=True)
    assert out.shape == image.shape


def test_empty_and_dropped_frames(image):
    empty = draw_frame(image, make_frame([]))
    np.testing.assert_array_equal(empty[H // 2:], image[H // 2:])  # only the status line at the top changes
    dropped = draw_frame(image, make_frame([], dropped="decode error"))
    assert dropped[H - 2, W - 2].sum() < image[H - 2, W - 2].sum()  # dimmed
    assert not np.array_equal(dropped[H // 2:H // 2 + 10], (image[H // 2:H // 2 + 10] * 2 // 5))  # reason drawn
    canvas = draw_frame(None, make_frame([], dropped="no image"))
    assert canvas.shape == (H, W, 3)


def test_bad_inputs_raise():
    frame = make_frame([person(1, [10, 10, 40, 40])])
    with pytest.raises(ValueError, match="image is 50x40 but frame.image_size is 96x72"):
        draw_frame(np.zeros((40, 50, 3), np.uint8), frame)
    with pytest.raises(ValueError, match="uint8"):
        draw_frame(np.zeros((H, W, 3), np.float32), frame)
    frame.persons[0].mask = np.ones((3, 3), bool)
    with pytest.raises(ValueError, match=r"track 1: mask is \[3, 3\]"):
        draw_frame(np.zeros((H, W, 3), np.uint8), frame)


def test_frame_from_sample_crops_ground_truth_to_the_box_grid():
    sample = generate_image(5, SceneConfig(width=96, height=96, min_people=2, max_people=4))
    frame = frame_from_sample(sample, stamp_ns=7, frame_id="cam")
    assert frame.image_size == (96, 96) and frame.stamp_ns == 7 and len(frame.persons) == len(sample.persons)
    assert [p.track_id for p in frame.persons] == list(range(1, len(sample.persons) + 1))  # no tracks: index + 1
    for ann, p in zip(sample.persons, frame.persons):
        x0, y0, w, h = p.box_grid()
        pasted = np.zeros((96 + h, 96 + w), bool)  # paste the box-grid mask back at full size
        pasted[y0:y0 + h, x0:x0 + w] = p.mask
        np.testing.assert_array_equal(pasted[:96, :96], ann.mask)
        assert not p.parts[~p.mask].any() and set(np.unique(p.parts[p.mask])) <= set(range(1, 15))
        vis = ann.keypoints[:, 2]
        np.testing.assert_array_equal(p.keypoints[:, 2], np.select([vis == 2, vis == 1], [1.0, 0.5], 0.0))
        assert p.attributes == {k: (v, 1.0) for k, v in ann.attributes.items()}
    assert draw_frame(sample.image, frame).shape == sample.image.shape
