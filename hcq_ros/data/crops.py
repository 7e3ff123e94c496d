"""Person crops: the affine warp of a box to PersonNet's fixed crop size, its inverse, and training box jitter.

This is the ONE crop function of the product: training (``hcq_ros.data.person_dataset``), evaluation
(``hcq_ros.evaluation.person_eval``) and the runtime pipeline (detector boxes -> PersonNet) all call
``crop_persons``, so the network always sees people framed the same way.

Geometry (coordinates follow ``schema``: continuous pixels, (0, 0) = top-left corner of the top-left pixel):

1. Degenerate boxes: a non-finite coordinate or a reversed box (x1 < x0 or y1 < y0) is a ValueError naming the
   box; a width or height below ``MIN_BOX_SIZE`` (1 px, e.g. zero) is widened to it about the box centre.
2. The box is scaled by ``expand`` about its centre (context margin; 1.2 = 10 % each side).
3. Odd aspect ratios: the expanded box is GROWN (never shrunk) along one axis about its centre until its
   aspect ratio equals the crop's (W / H), so the whole box is always inside the crop and people are never
   distorted (a lying person gives a crop with more context above and below).
4. That region is mapped onto the crop by a uniform scale + translation: ``crop_xy = A @ [x, y, 1]`` with
   ``A = [[s, 0, tx], [0, s, ty]]`` (the ``affines`` returned, float32 [N, 2, 3]).
5. Parts of the region outside the image are filled with ``pad_value`` (the ImageNet mean, ~0 after
   normalisation); a box entirely outside the image gives a crop of pure padding (``inside_fraction`` tells
   callers how much of each box lies in the image, to drop such boxes if they wish).
6. Strong downscaling (s < 2/3) blurs the source region first (sigma = (1/s - 1) / 2) against aliasing.

Inverses: ``keypoints_to_image`` (crop-normalised joints -> image pixels) and ``paste_to_box`` (a crop-sized
map -> the box's pixel grid ``result.box_grid``, as ``Person.parts``/``Person.mask`` store it).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from hcq_ros.data.transforms import PAD_VALUE
from hcq_ros.result import box_grid

DEFAULT_CROP_SIZE = (64, 128)   # (width, height): PersonNet "small" crops
DEFAULT_EXPAND = 1.2
MIN_BOX_SIZE = 1.0


def _check_crop_size(crop_size: Sequence[int]) -> tuple[int, int]:
    if len(crop_size) != 2 or int(crop_size[0]) < 1 or int(crop_size[1]) < 1:
        raise ValueError(f"crop_size must be (width, height) >= 1, got {crop_size!r}")
    return int(crop_size[0]), int(crop_size[1])


def check_boxes(boxes) -> np.ndarray:
    """``[N, 4]`` xyxy as float64; ValueError naming the first non-finite or reversed box."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4] xyxy, got shape {list(boxes.shape)}")
    bad = ~np.isfinite(boxes).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"box {i} has a non-finite coordinate: {boxes[i].tolist()}")
    reversed_ = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if reversed_.any():
        i = int(np.flatnonzero(reversed_)[0])
        raise ValueError(f"box {i} is reversed (x1 < x0 or y1 < y0): {boxes[i].tolist()}")
    return boxes


def crop_regions(boxes, crop_size: Sequence[int] = DEFAULT_CROP_SIZE, expand: float = DEFAULT_EXPAND) -> np.ndarray:
    """The image region (xyxy, float64 [N, 4]) each crop covers: rules 1-3 of the module docstring."""
    if not expand > 0:
        raise ValueError(f"expand must be > 0, got {expand}")
    w_crop, h_crop = _check_crop_size(crop_size)
    boxes = check_boxes(boxes)
    centre = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    size = np.maximum(boxes[:, 2:] - boxes[:, :2], MIN_BOX_SIZE) * expand
    aspect = w_crop / h_crop
    width = np.maximum(size[:, 0], size[:, 1] * aspect)
    height = width / aspect
    half = 0.5 * np.stack([width, height], axis=1)
    return np.concatenate([centre - half, centre + half], axis=1)


def crop_affines(boxes, crop_size: Sequence[int] = DEFAULT_CROP_SIZE,
                 expand: float = DEFAULT_EXPAND) -> np.ndarray:
    """float32 [N, 2, 3] image -> crop affines (continuous pixel coordinates) of ``crop_persons``."""
    w_crop, h_crop = _check_crop_size(crop_size)
    regions = crop_regions(boxes, crop_size, expand)
    scale = w_crop / (regions[:, 2] - regions[:, 0])
    affines = np.zeros((len(regions), 2, 3), dtype=np.float64)
    affines[:, 0, 0] = affines[:, 1, 1] = scale
    affines[:, 0, 2] = -scale * regions[:, 0]
    affines[:, 1, 2] = -scale * regions[:, 1]
    return affines.astype(np.float32)


def _index_matrix(affine: np.ndarray) -> np.ndarray:
    """Continuous-coordinate affine -> the same map between pixel indices (cv2 puts pixel centres at integers)."""
    m = np.asarray(affine, dtype=np.float64).copy()
    m[:, 2] += 0.5 * (m[:, 0] + m[:, 1]) - 0.5
    return m


def crop_persons(image_rgb: np.ndarray, boxes, crop_size: Sequence[int] = DEFAULT_CROP_SIZE,
                 expand: float = DEFAULT_EXPAND, pad_value=PAD_VALUE) -> tuple[np.ndarray, np.ndarray]:
    """Cut every box out of ``image_rgb`` (uint8 [H, W, 3] RGB) at ``crop_size`` (width, height).

    Returns (crops uint8 [N, crop_h, crop_w, 3], affines float32 [N, 2, 3] image -> crop); N may be 0.
    """
    image_rgb = np.asarray(image_rgb)
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3] RGB, got {image_rgb.dtype} {list(image_rgb.shape)}")
    w_crop, h_crop = _check_crop_size(crop_size)
    affines = crop_affines(boxes, crop_size, expand)
    crops = np.empty((len(affines), h_crop, w_crop, 3), dtype=np.uint8)
    fill = tuple(int(v) for v in np.broadcast_to(np.asarray(pad_value), (3,)))
    for i, affine in enumerate(affines):
        crops[i] = _warp_one(image_rgb, affine.astype(np.float64), (w_crop, h_crop), fill)
    return crops, affines


def _warp_one(image: np.ndarray, affine: np.ndarray, crop_size: tuple[int, int], fill) -> np.ndarray:
    """Warp one crop; when downscaling strongly, blur only the source window (plus margin) first."""
    scale = float(affine[0, 0])
    if scale >= 2.0 / 3.0:
        return cv2.warpAffine(image, _index_matrix(affine), crop_size, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
    sigma = 0.5 * (1.0 / scale - 1.0)
    margin = int(np.ceil(3 * sigma)) + 2
    h, w = image.shape[:2]
    x0 = int(np.floor(-affine[0, 2] / scale)) - margin
    y0 = int(np.floor(-affine[1, 2] / scale)) - margin
    x1 = int(np.ceil((crop_size[0] - affine[0, 2]) / scale)) + margin
    y1 = int(np.ceil((crop_size[1] - affine[1, 2]) / scale)) + margin
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if xb <= xa or yb <= ya:      # the region misses the image entirely: pure padding
        return np.full((crop_size[1], crop_size[0], 3), fill, dtype=np.uint8)
    window = cv2.GaussianBlur(image[ya:yb, xa:xb], (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    shifted = affine.copy()
    shifted[0, 2] += scale * xa
    shifted[1, 2] += scale * ya
    return cv2.warpAffine(window, _index_matrix(shifted), crop_size, flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def warp_map_to_crops(value_map: np.ndarray, affines: np.ndarray, crop_size: Sequence[int] = DEFAULT_CROP_SIZE,
                      border_value: float = 0, nearest: bool = True) -> np.ndarray:
    """Warp a full-image map ``[H, W]`` (labels, masks; or ``[H, W, C]`` floats) into every crop.

    Label maps use nearest neighbour (``nearest``); pixels outside the image get ``border_value``.
    Returns ``[N, crop_h, crop_w(, C)]`` of the map's dtype (bool maps go through uint8).
    """
    w_crop, h_crop = _check_crop_size(crop_size)
    value_map = np.asarray(value_map)
    dtype = value_map.dtype
    source = value_map.astype(np.uint8) if dtype == bool else value_map
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    out = np.empty((len(affines), h_crop, w_crop, *source.shape[2:]), dtype=source.dtype)
    for i, affine in enumerate(np.asarray(affines)):
        warped = cv2.warpAffine(source, _index_matrix(affine), (w_crop, h_crop), flags=flags,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)
        out[i] = warped.reshape(out.shape[1:])
    return out.astype(dtype) if dtype == bool else out


def invert_affines(affines: np.ndarray) -> np.ndarray:
    """float32 [N, 2, 3] inverses of 2x3 affines (crop -> image for ``crop_affines``)."""
    affines = np.asarray(affines, dtype=np.float64).reshape(-1, 2, 3)
    linear_inv = np.linalg.inv(affines[:, :, :2])
    out = np.concatenate([linear_inv, -linear_inv @ affines[:, :, 2:]], axis=2)
    return out.astype(np.float32)


def transform_points(points: np.ndarray, affines: np.ndarray) -> np.ndarray:
    """``[N, K, 2]`` points through ``[N, 2, 3]`` affines -> float32 ``[N, K, 2]``."""
    points = np.asarray(points, dtype=np.float64)
    affines = np.asarray(affines, dtype=np.float64)
    return (points @ affines[:, :, :2].transpose(0, 2, 1) + affines[:, None, :, 2]).astype(np.float32)


def crop_keypoints(keypoints: np.ndarray, affines: np.ndarray,
                   crop_size: Sequence[int] = DEFAULT_CROP_SIZE) -> np.ndarray:
    """Image keypoints ``[N, 17, 3]`` (x, y, COCO visibility) -> crop-normalised ``float32 [N, 17, 3]``.

    xy are divided by the crop (width, height), so the crop spans [0, 1]; a labelled joint that lands outside
    the crop ([0, W) x [0, H) in crop pixels) gets visibility 0 and x = y = 0, as do unlabelled joints.
    """
    w_crop, h_crop = _check_crop_size(crop_size)
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if keypoints.ndim != 3 or keypoints.shape[2] != 3 or len(keypoints) != len(affines):
        raise ValueError(f"keypoints must be [N, K, 3] with N = {len(affines)} affines, got {list(keypoints.shape)}")
    xy = transform_points(keypoints[..., :2], affines)
    inside = ((keypoints[..., 2] > 0) & (xy[..., 0] >= 0) & (xy[..., 0] < w_crop)
              & (xy[..., 1] >= 0) & (xy[..., 1] < h_crop))
    out = np.zeros_like(keypoints)
    out[..., 0] = xy[..., 0] / w_crop
    out[..., 1] = xy[..., 1] / h_crop
    out[..., 2] = keypoints[..., 2]
    out[~inside] = 0.0
    return out


def keypoints_to_image(xy_normalised: np.ndarray, affines: np.ndarray,
                       crop_size: Sequence[int] = DEFAULT_CROP_SIZE) -> np.ndarray:
    """Crop-normalised joints ``[N, K, 2]`` (PersonNet's ``keypoints``) -> image pixels ``float32 [N, K, 2]``."""
    w_crop, h_crop = _check_crop_size(crop_size)
    xy = np.asarray(xy_normalised, dtype=np.float64) * np.array([w_crop, h_crop], dtype=np.float64)
    return transform_points(xy, invert_affines(affines))


def paste_to_box(crop_map: np.ndarray, affine: np.ndarray, box, nearest: bool | None = None,
                 border_value: float = 0) -> np.ndarray:
    """A crop-sized map ``[h, w]`` or ``[h, w, C]`` -> the same map on the box's pixel grid
    (``result.box_grid(box)``: ``[bh, bw(, C)]``, row r / column c = image pixel (floor(y0) + r, floor(x0) + c)).

    ``affine``: the crop's [2, 3] image -> crop affine. Label maps (integer/bool) use nearest neighbour, float
    maps bilinear (``nearest`` overrides). Part labels: pasting the float logits and taking the argmax over C
    afterwards is smoother than pasting labels, but about 10x slower (the pipeline pastes labels).
    """
    crop_map = np.asarray(crop_map)
    x0, y0, bw, bh = box_grid(np.asarray(box, dtype=np.float64))
    if bw == 0 or bh == 0:
        return np.zeros((bh, bw, *crop_map.shape[2:]), dtype=crop_map.dtype)
    if nearest is None:
        nearest = not np.issubdtype(crop_map.dtype, np.floating)
    dtype = crop_map.dtype
    source = crop_map.astype(np.uint8) if dtype == bool else crop_map
    # box grid -> crop: crop = A @ (x0 + u, y0 + v); WARP_INVERSE_MAP takes this destination -> source map.
    to_crop = np.asarray(affine, dtype=np.float64).copy()
    to_crop[:, 2] += to_crop[:, 0] * x0 + to_crop[:, 1] * y0
    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    pasted = cv2.warpAffine(source, _index_matrix(to_crop), (bw, bh), flags=flags,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)
    pasted = pasted.reshape(bh, bw, *source.shape[2:])
    return pasted.astype(dtype) if dtype == bool else pasted


def inside_fraction(boxes, image_size: Sequence[int]) -> np.ndarray:
    """float32 [N]: share of each box's area inside the image ``(width, height)`` (1 for a zero-area box inside)."""
    boxes = check_boxes(boxes)
    w, h = float(image_size[0]), float(image_size[1])
    clipped = np.clip(boxes, 0.0, [w, h, w, h])
    area = np.prod(np.maximum(boxes[:, 2:] - boxes[:, :2], 0.0), axis=1)
    kept = np.prod(np.maximum(clipped[:, 2:] - clipped[:, :2], 0.0), axis=1)
    centre = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    point_inside = (centre >= 0).all(axis=1) & (centre[:, 0] <= w) & (centre[:, 1] <= h)
    return np.where(area > 0, kept / np.maximum(area, 1e-12), point_inside.astype(np.float64)).astype(np.float32)


def jitter_boxes(boxes, rng: np.random.Generator, shift: float = 0.06, scale: float = 0.08,
                 aspect: float = 0.08) -> np.ndarray:
    """Detector-like box noise for training: float32 [N, 4].

    Per box: centre moved by N(0, shift) x (width, height); size multiplied by exp(N(0, scale)); aspect ratio
    by exp(N(0, aspect)) (split evenly between width and height). Draws are clipped at 2.5 sigma, so boxes
    stay plausible (the defaults give a median IoU with the input of about 0.85). Widths/heights stay >= 1 px.
    """
    boxes = check_boxes(boxes)
    n = len(boxes)
    draws = np.clip(rng.standard_normal((n, 4)), -2.5, 2.5)
    size = np.maximum(boxes[:, 2:] - boxes[:, :2], MIN_BOX_SIZE)
    centre = 0.5 * (boxes[:, :2] + boxes[:, 2:]) + draws[:, :2] * shift * size
    factor = np.exp(draws[:, 2:3] * scale) * np.exp(np.array([0.5, -0.5]) * draws[:, 3:4] * aspect)
    half = 0.5 * np.maximum(size * factor, MIN_BOX_SIZE)
    return np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)
