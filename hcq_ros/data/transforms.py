"""Geometric augmentation on ``Sample`` (image, masks, part map, keypoints, boxes kept consistent) and the
deterministic letterbox used at inference.

- ``hflip``: mirrors coordinates AND swaps left/right joints (``schema.KEYPOINT_FLIP``) and part labels
  (``schema.PART_FLIP``), so a flipped "left_wrist" is still the person's left wrist.
- ``large_scale_jitter``: resize by ``r * min(W/w, H/h)``, r ~ U(scale_range) (default 0.1-2.0), then a
  random crop (when larger) or a random placement in a canvas padded with ``pad_value`` (when smaller)
  to the fixed output size (W, H). Keypoints leaving the output get visibility 0 (x = y = 0); boxes are
  recomputed tight around the transformed masks (clipped box when a person has no mask); persons with no
  mask pixel (or, without a mask, no box area) left are dropped.
- ``letterbox`` / ``unletterbox_points`` / ``unletterbox_boxes`` / ``unletterbox_map``.

Sizes are (width, height) like ``Sample.size``. Randomness comes only from the ``numpy.random.Generator``
passed in. Coordinates follow the schema (continuous, (0, 0) = top-left corner of the top-left pixel),
so a pixel resize by s maps x -> s * x; masks use INTER_NEAREST_EXACT (pixel-centre aligned).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional, Sequence

import cv2
import numpy as np

from hcq_ros.data.formats import mask_to_box
from hcq_ros.data.schema import KEYPOINT_FLIP, NUM_PARTS, PART_FLIP, Sample

# ImageNet mean in RGB uint8: padding becomes ~0 after the usual mean/std normalisation.
PAD_VALUE = (124, 116, 104)
_PART_FLIP_LUT = np.arange(256, dtype=np.uint8)
_PART_FLIP_LUT[:NUM_PARTS] = PART_FLIP
_MAX_CV_CHANNELS = 512  # cv2.resize channel limit: masks are resized in stacks of at most this many


def _size_wh(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ValueError(f"output size must be positive, got {size}")
    return width, height


def hflip(sample: Sample) -> Sample:
    """Horizontal mirror of everything in ``sample`` (left/right joints and part labels swapped)."""
    width = sample.size[0]
    persons = []
    for p in sample.persons:
        keypoints = p.keypoints[list(KEYPOINT_FLIP)].copy()
        labelled = keypoints[:, 2] > 0
        keypoints[labelled, 0] = width - keypoints[labelled, 0]
        box = np.array([width - p.box[2], p.box[1], width - p.box[0], p.box[3]], dtype=np.float32)
        mask = np.ascontiguousarray(p.mask[:, ::-1]) if p.mask is not None else None
        persons.append(replace(p, box=box, mask=mask, keypoints=keypoints, attributes=dict(p.attributes)))
    parts = _PART_FLIP_LUT[sample.parts[:, ::-1]] if sample.parts is not None else None
    return replace(sample, image=np.ascontiguousarray(sample.image[:, ::-1]), persons=persons, parts=parts)


def random_hflip(sample: Sample, rng: np.random.Generator, p: float = 0.5) -> Sample:
    return hflip(sample) if rng.random() < p else sample


def _resize(array: np.ndarray, width: int, height: int, interpolation: int) -> np.ndarray:
    out = cv2.resize(array, (width, height), interpolation=interpolation)
    return out.reshape(height, width, *array.shape[2:])  # cv2 drops a trailing channel axis of 1


def _paste(src: np.ndarray, ox: int, oy: int, width: int, height: int, fill) -> np.ndarray:
    """Place ``src`` with its top-left corner at (ox, oy) (may be negative) in a (width, height) canvas."""
    canvas = np.empty((height, width, *src.shape[2:]), dtype=src.dtype)
    canvas[...] = fill
    sx0, sy0 = max(0, -ox), max(0, -oy)
    dx0, dy0 = max(0, ox), max(0, oy)
    w = min(src.shape[1] - sx0, width - dx0)
    h = min(src.shape[0] - sy0, height - dy0)
    if w > 0 and h > 0:
        canvas[dy0:dy0 + h, dx0:dx0 + w] = src[sy0:sy0 + h, sx0:sx0 + w]
    return canvas


def _transform_masks(masks: list[np.ndarray], rw: int, rh: int, ox: int, oy: int, width: int,
                     height: int) -> list[np.ndarray]:
    out = []
    for start in range(0, len(masks), _MAX_CV_CHANNELS):
        stack = np.stack(masks[start:start + _MAX_CV_CHANNELS], axis=-1).astype(np.uint8)
        moved = _paste(_resize(stack, rw, rh, cv2.INTER_NEAREST_EXACT), ox, oy, width, height, 0)
        out.extend(moved[..., k].astype(bool) for k in range(moved.shape[-1]))
    return out


def large_scale_jitter(sample: Sample, output_size: int | Sequence[int], rng: np.random.Generator,
                       scale_range: tuple[float, float] = (0.1, 2.0), pad_value=PAD_VALUE) -> Sample:
    """Random rescale + crop/pad of ``sample`` to ``output_size`` (W, H); see the module docstring."""
    out_w, out_h = _size_wh(output_size)
    h, w = sample.image.shape[:2]
    ratio = rng.uniform(*scale_range)
    scale = ratio * min(out_w / w, out_h / h)
    rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
    sx, sy = rw / w, rh / h
    # top-left corner of the resized image in the output: a random crop or a random placement
    ox = int(rng.integers(min(0, out_w - rw), max(0, out_w - rw) + 1))
    oy = int(rng.integers(min(0, out_h - rh), max(0, out_h - rh) + 1))

    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    image = _paste(_resize(sample.image, rw, rh, interpolation), ox, oy, out_w, out_h,
                   np.asarray(pad_value, dtype=np.uint8))
    parts = None
    if sample.parts is not None:
        parts = _paste(_resize(sample.parts, rw, rh, cv2.INTER_NEAREST_EXACT), ox, oy, out_w, out_h, 0)
    with_mask = [i for i, p in enumerate(sample.persons) if p.mask is not None]
    moved = _transform_masks([sample.persons[i].mask for i in with_mask], rw, rh, ox, oy, out_w, out_h)
    new_masks = dict(zip(with_mask, moved))  # person index -> transformed mask

    persons = []
    for index, p in enumerate(sample.persons):
        keypoints = p.keypoints.copy()
        keypoints[:, 0] = keypoints[:, 0] * sx + ox
        keypoints[:, 1] = keypoints[:, 1] * sy + oy
        inside = ((keypoints[:, 2] > 0) & (keypoints[:, 0] >= 0) & (keypoints[:, 0] < out_w)
                  & (keypoints[:, 1] >= 0) & (keypoints[:, 1] < out_h))
        keypoints[~inside] = 0.0
        mask = new_masks.get(index)
        if mask is not None:
            box = mask_to_box(mask)
            if box is None:
                continue
        else:
            x0, y0, x1, y1 = p.box
            box = np.clip([x0 * sx + ox, y0 * sy + oy, x1 * sx + ox, y1 * sy + oy], 0, [out_w, out_h, out_w, out_h])
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
        persons.append(replace(p, box=box, mask=mask, keypoints=keypoints, attributes=dict(p.attributes)))
    return replace(sample, image=image, persons=persons, parts=parts)


class TrainAugment:
    """Random horizontal flip then large-scale jitter: ``augment(sample, rng) -> Sample`` of ``output_size``."""

    def __init__(self, output_size: int | Sequence[int], scale_range: tuple[float, float] = (0.1, 2.0),
                 flip_prob: float = 0.5, pad_value=PAD_VALUE):
        self.output_size = _size_wh(output_size)
        self.scale_range = scale_range
        self.flip_prob = flip_prob
        self.pad_value = pad_value

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        sample = random_hflip(sample, rng, self.flip_prob)
        return large_scale_jitter(sample, self.output_size, rng, self.scale_range, self.pad_value)


def letterbox(image: np.ndarray, size: int | Sequence[int], pad_value=PAD_VALUE
              ) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize ``image`` [h, w, C] keeping its aspect ratio to fit ``size`` (W, H), centred on a padded canvas.

    Returns (image [H, W, C], scale, (pad_x, pad_y)): original x maps to ``x * scale + pad_x``.
    """
    out_w, out_h = _size_wh(size)
    h, w = image.shape[:2]
    scale = min(out_w / w, out_h / h)
    rw, rh = min(out_w, max(1, round(w * scale))), min(out_h, max(1, round(h * scale)))
    pad = ((out_w - rw) // 2, (out_h - rh) // 2)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    fill = np.asarray(pad_value, dtype=image.dtype) if image.ndim == 3 else np.asarray(pad_value).ravel()[0]
    return _paste(_resize(image, rw, rh, interpolation), pad[0], pad[1], out_w, out_h, fill), scale, pad


def unletterbox_points(points: np.ndarray, scale: float, pad: tuple[int, int]) -> np.ndarray:
    """``[..., 2]`` letterboxed xy -> original image xy."""
    points = np.asarray(points, dtype=np.float32)
    return (points - np.asarray(pad, dtype=np.float32)) / scale


def unletterbox_boxes(boxes: np.ndarray, scale: float, pad: tuple[int, int]) -> np.ndarray:
    """``[..., 4]`` letterboxed xyxy -> original image xyxy."""
    boxes = np.asarray(boxes, dtype=np.float32)
    return unletterbox_points(boxes.reshape(*boxes.shape[:-1], 2, 2), scale, pad).reshape(boxes.shape)


def unletterbox_map(value_map: np.ndarray, scale: float, pad: tuple[int, int], original_size: Sequence[int],
                    interpolation: Optional[int] = None) -> np.ndarray:
    """A per-pixel map over the letterboxed image ``[H', W'(, C)]`` -> ``[h, w(, C)]`` of the original image.

    ``original_size`` is (w, h). Label maps/masks default to nearest-neighbour, float maps to bilinear.
    The map must be at the letterboxed resolution (upsample a lower-resolution head output first).
    """
    w, h = (int(v) for v in original_size)
    rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
    crop = value_map[pad[1]:pad[1] + rh, pad[0]:pad[0] + rw]
    if interpolation is None:
        floating = np.issubdtype(value_map.dtype, np.floating)
        interpolation = cv2.INTER_LINEAR if floating else cv2.INTER_NEAREST_EXACT
    dtype = value_map.dtype
    if dtype == bool:
        crop = crop.astype(np.uint8)
    return _resize(np.ascontiguousarray(crop), w, h, interpolation).astype(dtype)
