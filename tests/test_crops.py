"""The product's person-crop function: geometry rules, sub-pixel alignment, inverses, degenerate boxes, jitter."""
import numpy as np
import pytest

from hcq_ros.data.crops import (crop_affines, crop_keypoints, crop_persons, crop_regions, inside_fraction,
                                invert_affines, jitter_boxes, keypoints_to_image, paste_to_box, transform_points,
                                warp_map_to_crops)
from hcq_ros.data.transforms import PAD_VALUE
from hcq_ros.result import box_grid

CROP = (64, 128)  # (W, H)


def _ramp(width=256, height=200):
    """uint8 image whose red channel is the pixel's column index and green its row index."""
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    return np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)


def test_box_with_crop_aspect_maps_onto_the_crop_corners():
    box = np.array([[10.0, 20.0, 42.0, 84.0]])          # 32 x 64: the crop's aspect ratio
    affine = crop_affines(box, CROP, expand=1.0)[0]
    corners = transform_points(np.array([[[10.0, 20.0], [42.0, 84.0]]]), affine[None])[0]
    np.testing.assert_allclose(corners, [[0, 0], [64, 128]], atol=1e-4)
    # expand 1.5 about the centre: the box then spans the middle 2/3 of the crop
    affine = crop_affines(box, CROP, expand=1.5)[0]
    corners = transform_points(np.array([[[10.0, 20.0], [42.0, 84.0]]]), affine[None])[0]
    np.testing.assert_allclose(corners, [[32 - 64 / 3, 64 - 128 / 3], [32 + 64 / 3, 64 + 128 / 3]], atol=1e-3)


@pytest.mark.parametrize("box", [[37.3, 21.8, 61.9, 71.4], [3.0, 2.0, 250.0, 190.0]])  # upscale / strong downscale
def test_crop_pixels_sample_the_image_at_the_affine_position(box):
    image = _ramp()
    crops, affines = crop_persons(image, np.array([box]), CROP, expand=1.2)
    assert crops.shape == (1, 128, 64, 3) and crops.dtype == np.uint8
    inverse = invert_affines(affines)
    us, vs = np.meshgrid(np.arange(64) + 0.5, np.arange(128) + 0.5)
    src = transform_points(np.stack([us, vs], -1).reshape(1, -1, 2), inverse)[0].reshape(128, 64, 2) - 0.5
    inside = (src[..., 0] > 3) & (src[..., 0] < 252) & (src[..., 1] > 3) & (src[..., 1] < 196)
    assert inside.sum() > 1000
    # continuous pixel convention: the crop pixel centre maps back to column x = value of the ramp
    np.testing.assert_allclose(crops[0][..., 0][inside], src[..., 0][inside], atol=1.01)
    np.testing.assert_allclose(crops[0][..., 1][inside], src[..., 1][inside], atol=1.01)
    assert (crops[0][~inside & ((src[..., 0] < -2) | (src[..., 1] < -2))] == PAD_VALUE).all()


def test_odd_aspect_ratios_grow_one_side_and_keep_the_whole_box():
    boxes = np.array([[0, 0, 100, 20], [0, 0, 20, 100], [0, 0, 10, 100]], dtype=np.float32)
    regions = crop_regions(boxes, CROP, expand=1.0)
    sizes = regions[:, 2:] - regions[:, :2]
    np.testing.assert_allclose(sizes[:, 1] / sizes[:, 0], 2.0)            # always the crop's aspect ratio
    np.testing.assert_allclose(sizes[0], [100, 200])                       # wide: height grown
    np.testing.assert_allclose(sizes[1], [50, 100])                        # width grown
    np.testing.assert_allclose(sizes[2], [50, 100])
    assert (regions[:, :2] <= boxes[:, :2]).all() and (regions[:, 2:] >= boxes[:, 2:]).all()
    np.testing.assert_allclose((regions[:, :2] + regions[:, 2:]) / 2, (boxes[:, :2] + boxes[:, 2:]) / 2)


def test_degenerate_boxes_follow_the_documented_rules():
    image = _ramp()
    # zero width/height: widened to 1 px about the centre -> a finite affine and a valid crop
    crops, affines = crop_persons(image, np.array([[50.0, 60.0, 50.0, 60.0]]), CROP)
    assert np.isfinite(affines).all() and crops.shape == (1, 128, 64, 3)
    # entirely outside the image: pure padding; inside_fraction says so
    outside = np.array([[-500.0, -400.0, -450.0, -300.0], [1000.0, 10.0, 1040.0, 90.0]])
    crops, _ = crop_persons(image, outside, CROP)
    assert (crops == np.asarray(PAD_VALUE, np.uint8)).all()
    np.testing.assert_allclose(inside_fraction(outside, (256, 200)), [0.0, 0.0])
    np.testing.assert_allclose(inside_fraction([[-10, 0, 10, 20], [5, 5, 5, 5]], (256, 200)), [0.5, 1.0])
    with pytest.raises(ValueError, match="box 1 is reversed"):
        crop_persons(image, np.array([[0, 0, 10, 10], [20, 0, 10, 10]], np.float32), CROP)
    with pytest.raises(ValueError, match="box 0 has a non-finite"):
        crop_persons(image, np.array([[0, np.nan, 10, 10]]), CROP)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        crop_persons(image, np.zeros((2, 3)), CROP)
    with pytest.raises(ValueError, match="uint8"):
        crop_persons(image.astype(np.float32), np.zeros((1, 4)), CROP)
    crops, affines = crop_persons(image, np.zeros((0, 4)), CROP)
    assert crops.shape == (0, 128, 64, 3) and affines.shape == (0, 2, 3)


def test_keypoints_round_trip_and_outside_joints_lose_visibility():
    boxes = np.array([[40.0, 30.0, 80.0, 150.0], [100.5, 8.2, 140.0, 118.0]])
    _, affines = crop_persons(_ramp(), boxes, CROP)
    kp = np.zeros((2, 17, 3), np.float32)
    kp[:, :, 0] = np.linspace(45, 75, 17)[None] + np.array([[0.0], [60.0]])
    kp[:, :, 1] = np.linspace(35, 140, 17)[None] - np.array([[0.0], [25.0]])
    kp[:, :, 2] = 2
    kp[0, 3, 2] = 0                                   # unlabelled stays unlabelled
    kp[1, 16, :2] = (400.0, 400.0)                    # far outside person 1's crop
    cropped = crop_keypoints(kp, affines, CROP)
    assert cropped[0, 3].tolist() == [0, 0, 0] and cropped[1, 16].tolist() == [0, 0, 0]
    on = cropped[..., 2] > 0
    assert on.sum() == 32 and (cropped[..., :2][on] >= 0).all() and (cropped[..., :2][on] < 1).all()
    back = keypoints_to_image(cropped[..., :2], affines, CROP)
    np.testing.assert_allclose(back[on], kp[..., :2][on], atol=1e-3)


def test_part_maps_warp_into_crops_and_paste_back_onto_the_box_grid():
    labels = np.zeros((200, 256), np.uint8)
    labels[40:100, 60:90] = 3
    labels[100:170, 55:95] = 9
    labels[20:40, 68:82] = 2
    box = np.array([52.3, 18.6, 98.1, 171.2], np.float32)
    _, affines = crop_persons(_ramp(), box[None], CROP)
    crop_labels = warp_map_to_crops(labels, affines, CROP, border_value=255)
    assert crop_labels.shape == (1, 128, 64) and set(np.unique(crop_labels)) <= {0, 2, 3, 9}
    pasted = paste_to_box(crop_labels[0], affines[0], box)
    x0, y0, w, h = box_grid(box)
    assert pasted.shape == (h, w) and pasted.dtype == np.uint8
    assert (pasted == labels[y0:y0 + h, x0:x0 + w]).mean() > 0.95
    # float maps (logits) paste bilinearly, channel-last; argmax gives the labels back
    logits = np.eye(10, dtype=np.float32)[crop_labels[0]]               # [128, 64, 10]
    pasted_logits = paste_to_box(logits, affines[0], box)
    assert pasted_logits.shape == (h, w, 10)
    assert (pasted_logits.argmax(-1) == labels[y0:y0 + h, x0:x0 + w]).mean() > 0.95
    mask = paste_to_box(crop_labels[0] == 3, affines[0], box)
    assert mask.dtype == bool and abs(int(mask.sum()) - 60 * 30) < 120


def test_strong_downscaling_is_antialiased():
    checker = ((np.indices((600, 300)).sum(0) % 2) * 255).astype(np.uint8)
    image = np.repeat(checker[..., None], 3, axis=2)
    crops, affines = crop_persons(image, np.array([[0.0, 0.0, 300.0, 600.0]]), CROP, expand=1.0)
    assert affines[0, 0, 0] < 0.25
    centre = crops[0, 10:-10, 10:-10].astype(np.float32)
    assert abs(centre.mean() - 127.5) < 8 and centre.std() < 12     # grey, not an aliasing pattern


def test_jitter_is_reproducible_and_detector_like():
    boxes = np.tile(np.array([[100.0, 50.0, 140.0, 150.0]]), (400, 1))
    a = jitter_boxes(boxes, np.random.default_rng(3))
    b = jitter_boxes(boxes, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert (a[:, 2:] > a[:, :2]).all()
    inter = np.prod(np.clip(np.minimum(a[:, 2:], boxes[:, 2:]) - np.maximum(a[:, :2], boxes[:, :2]), 0, None), 1)
    union = np.prod(a[:, 2:] - a[:, :2], 1) + np.prod(boxes[:, 2:] - boxes[:, :2], 1) - inter
    iou = inter / union
    assert 0.75 < np.median(iou) < 0.95 and iou.min() > 0.4
    np.testing.assert_allclose(jitter_boxes(boxes[:2], np.random.default_rng(0), 0, 0, 0), boxes[:2], atol=1e-4)
