"""Augmentation keeps image, masks, part map, keypoints and boxes consistent; letterbox inverts."""
from __future__ import annotations

import numpy as np
import pytest

from hcq_ros.data.formats import mask_to_box
from hcq_ros.data.schema import KEYPOINT_NAMES, PART_NAMES, PersonAnnotation, Sample
from hcq_ros.data.transforms import (PAD_VALUE, TrainAugment, hflip, large_scale_jitter, letterbox,
                                     unletterbox_boxes, unletterbox_map, unletterbox_points)

KP = KEYPOINT_NAMES.index
PART = PART_NAMES.index


def blob_person(x0, y0, w, h, size, track_id):
    """Rectangle mask; left joints on its right third, right joints on its left third (person faces us)."""
    width, height = size
    mask = np.zeros((height, width), bool)
    mask[y0:y0 + h, x0:x0 + w] = True
    kps = np.zeros((17, 3), np.float32)
    for k, name in enumerate(KEYPOINT_NAMES[5:]):
        fx = 0.8 if name.startswith("left") else 0.2
        kps[KP(name)] = (x0 + int(fx * w) + 0.5, y0 + int((0.1 + 0.07 * k) * h) + 0.5, 2 if k % 3 else 1)
    return PersonAnnotation(box=[x0, y0, x0 + w, y0 + h], mask=mask, keypoints=kps, track_id=track_id)


def scene(size=(120, 90)) -> Sample:
    width, height = size
    persons = [blob_person(10, 10, 30, 70, size, 1), blob_person(70, 5, 40, 80, size, 2)]
    parts = np.zeros((height, width), np.uint8)
    for p in persons:
        x0, y0, x1, y1 = p.box.astype(int)
        xm = (x0 + x1) // 2
        parts[y0:y1, x0:xm] = PART("right_arm")   # image left = person's right
        parts[y0:y1, xm:x1] = PART("left_arm")
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs * 2, ys * 2, (xs + ys) % 256], axis=-1).astype(np.uint8)
    return Sample(image=image, persons=persons, parts=parts)


def on_mask(person: PersonAnnotation) -> bool:
    labelled = person.keypoints[person.keypoints[:, 2] > 0]
    cols, rows = np.floor(labelled[:, 0]).astype(int), np.floor(labelled[:, 1]).astype(int)
    return bool(person.mask[rows, cols].all())


def test_hflip_twice_is_identity():
    s = scene()
    back = hflip(hflip(s))
    np.testing.assert_array_equal(back.image, s.image)
    np.testing.assert_array_equal(back.parts, s.parts)
    for a, b in zip(back.persons, s.persons):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-4)
        np.testing.assert_allclose(a.box, b.box)


def test_hflip_mirrors_and_swaps_left_right():
    s = scene()
    f = hflip(s)
    width = s.size[0]
    np.testing.assert_array_equal(f.image[:, 0], s.image[:, width - 1])
    original, flipped = s.persons[0], f.persons[0]
    # the mirrored right shoulder is now the left shoulder (and vice versa)
    np.testing.assert_allclose(flipped.keypoints[KP("left_shoulder")],
                               [width - original.keypoints[KP("right_shoulder"), 0],
                                *original.keypoints[KP("right_shoulder"), 1:]])
    np.testing.assert_allclose(flipped.box, [width - 40, 10, width - 10, 80])
    assert on_mask(flipped)
    # part labels move with the mirror AND swap side
    assert f.parts[40, width - 1 - 15] == PART("left_arm") and s.parts[40, 15] == PART("right_arm")
    assert f.parts[40, width - 1 - 35] == PART("right_arm")
    # after the flip the person's left joints sit on the image-left third, where labels say left_arm
    x, y = flipped.keypoints[KP("left_wrist"), :2].astype(int)
    assert f.parts[y, x] == PART("left_arm")


def test_lsj_output_size_and_consistency():
    base = scene()
    kept_any = dropped_any = 0
    for seed in range(12):
        out = large_scale_jitter(base, (64, 48), np.random.default_rng(seed))
        assert out.image.shape == (48, 64, 3) and out.parts.shape == (48, 64)
        kept_any += len(out.persons)
        dropped_any += len(out.persons) < len(base.persons)
        union = np.zeros((48, 64), bool)
        for p in out.persons:
            np.testing.assert_array_equal(p.box, mask_to_box(p.mask))   # boxes tight around the masks
            assert p.mask.any() and on_mask(p)                          # surviving joints stay on the mask
            outside = p.keypoints[:, 2] == 0
            assert not p.keypoints[outside].any()
            union |= p.mask
        np.testing.assert_array_equal(out.parts > 0, union)  # part map and masks moved together
        assert set(np.unique(out.parts)) <= {0, PART("left_arm"), PART("right_arm")}
    assert kept_any > 0 and dropped_any > 0  # 0.1-2.0 scales both keep and crop people away


def test_lsj_deterministic_padding_and_zoom_out():
    base = scene()
    a = large_scale_jitter(base, 200, np.random.default_rng(3), scale_range=(0.5, 0.5))
    b = large_scale_jitter(base, 200, np.random.default_rng(3), scale_range=(0.5, 0.5))
    np.testing.assert_array_equal(a.image, b.image)
    # 120x90 -> 0.5 * 200/120 -> 100x75 placed inside a 200x200 canvas: all joints survive, scaled by 5/6
    assert a.image.shape == (200, 200, 3) and len(a.persons) == 2
    pad = (a.image == np.array(PAD_VALUE, np.uint8)).all(-1)
    assert pad.sum() == 200 * 200 - 100 * 75
    ys, xs = np.nonzero(~pad)
    ox, oy = xs.min(), ys.min()
    src = base.persons[1].keypoints
    got = a.persons[1].keypoints
    np.testing.assert_allclose(got[:, :2][src[:, 2] > 0], src[src[:, 2] > 0, :2] * (100 / 120) + [ox, oy], atol=1e-3)
    np.testing.assert_array_equal(got[:, 2], src[:, 2])


def test_lsj_box_fallback_without_mask():
    base = scene()
    base.persons = [PersonAnnotation(box=[100, 10, 120, 50], mask=None, keypoints=np.zeros((17, 3)))]
    base.parts = None
    out = large_scale_jitter(base, (60, 45), np.random.default_rng(0), scale_range=(1.0, 1.0))
    # scale 0.5 exactly (120x90 -> 60x45): the box is halved and stays inside
    np.testing.assert_allclose(out.persons[0].box, [50, 5, 60, 25])
    crop = large_scale_jitter(base, (60, 45), np.random.default_rng(0), scale_range=(2.0, 2.0))
    for p in crop.persons:
        assert (p.box[:2] >= 0).all() and p.box[2] <= 60 and p.box[3] <= 45 and p.box[2] > p.box[0]


def test_train_augment_runs_and_is_seeded():
    augment = TrainAugment((48, 64), flip_prob=0.5)
    a = augment(scene(), np.random.default_rng(7))
    b = augment(scene(), np.random.default_rng(7))
    assert a.image.shape == (64, 48, 3)
    np.testing.assert_array_equal(a.image, b.image)
    assert [p.track_id for p in a.persons] == [p.track_id for p in b.persons]


def test_letterbox_and_inverse():
    image = np.zeros((90, 120, 3), np.uint8)
    image[30:60, 40:80] = 255
    boxed, scale, pad = letterbox(image, 240)
    assert boxed.shape == (240, 240, 3) and scale == pytest.approx(2.0) and pad == (0, 30)
    assert (boxed[:30] == np.array(PAD_VALUE, np.uint8)).all()
    np.testing.assert_allclose(unletterbox_points(np.array([[80.0, 90.0], [160.0, 150.0]]), scale, pad),
                               [[40, 30], [80, 60]])
    np.testing.assert_allclose(unletterbox_boxes(np.array([80.0, 90.0, 160.0, 150.0]), scale, pad), [40, 30, 80, 60])
    mask = boxed[..., 0] > 127  # bilinear upscaling blurs the edge by one pixel
    np.testing.assert_array_equal(unletterbox_map(mask, scale, pad, (120, 90)), image[..., 0] == 255)
    tall, scale2, pad2 = letterbox(np.zeros((100, 50, 3), np.uint8), (64, 64))
    assert tall.shape == (64, 64, 3) and pad2 == (16, 0) and scale2 == pytest.approx(0.64)


def test_normalize_images_matches_the_formula_for_one_image_and_a_batch():
    from hcq_ros.data.torch_dataset import IMAGE_MEAN, IMAGE_STD, image_to_tensor, normalize_images

    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, 10, 6, 3), dtype=np.uint8)
    expected = ((batch.astype(np.float32) / 255.0 - IMAGE_MEAN) / IMAGE_STD).transpose(0, 3, 1, 2)
    out = normalize_images(batch)
    assert out.dtype == np.float32 and out.shape == (3, 3, 10, 6) and out.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(out, expected, atol=1e-5)
    one = image_to_tensor(batch[1])
    assert one.shape == (3, 10, 6) and one.is_contiguous()
    np.testing.assert_allclose(one.numpy(), expected[1], atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        image_to_tensor(batch[1].astype(np.float32))
