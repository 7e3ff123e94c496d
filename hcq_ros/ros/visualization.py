"""Overlay drawing for a PersonFrame (the ``image_annotated`` topic, the demo video) and colour conventions
shared with the RViz markers. ROS-free: numpy + OpenCV only.

``draw_frame`` is deterministic (same input -> same bytes): no randomness, colours come from fixed palettes
indexed by track id / part label. Confirmed tracks get a palette colour; tentative tracks (track_id 0) are grey
and drawn with dashed lines.
"""
from __future__ import annotations

import math
from typing import Optional

import cv2
import numpy as np

from hcq_ros.data.schema import ATTRIBUTE_NAMES, COCO_SKELETON, PART_NAMES, Sample
from hcq_ros.result import Person, PersonFrame

# 20 well-separated RGB colours (Tableau 20 order re-arranged so consecutive ids differ strongly).
TRACK_PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138),
    (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (219, 219, 141), (158, 218, 229),
    (57, 59, 121), (99, 121, 57)], dtype=np.uint8)
TENTATIVE_COLOR = (170, 170, 170)
# One RGB colour per PART_NAMES label (index 0 = background, never drawn).
PART_PALETTE = np.array([
    (0, 0, 0), (128, 0, 0), (90, 50, 20), (255, 200, 150), (220, 30, 30), (0, 170, 255), (0, 90, 255),
    (120, 255, 120), (0, 200, 80), (30, 30, 200), (255, 170, 0), (200, 110, 0), (200, 0, 200), (120, 0, 160),
    (255, 255, 0)], dtype=np.uint8)
assert len(PART_PALETTE) == len(PART_NAMES)

KEYPOINT_THRESHOLD = 0.3  # joints below this confidence are not drawn (and not used for marker lines)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def track_color(track_id: int) -> tuple[int, int, int]:
    """RGB colour of a track: fixed palette entry for confirmed ids, grey for tentative (0)."""
    if track_id <= 0:
        return TENTATIVE_COLOR
    return tuple(int(v) for v in TRACK_PALETTE[(track_id - 1) % len(TRACK_PALETTE)])


def person_label(person: Person, max_attributes: int = 2) -> list[str]:
    """Text lines describing a person: "#<id> <score>" (or "? <score>" while tentative), then the most confident
    attributes (ties in schema.ATTRIBUTE_NAMES order) as "upper: red"; yes/no attributes show their bare name
    when "yes" and are skipped when "no"."""
    head = f"#{person.track_id}" if person.track_id > 0 else "?"
    lines = [f"{head} {person.score:.2f}"]
    order = {name: i for i, name in enumerate(ATTRIBUTE_NAMES)}
    ranked = sorted(person.attributes.items(),
                    key=lambda kv: (-float(kv[1][1]), order.get(kv[0], len(order)), kv[0]))
    for name, (value, _) in ranked:
        if len(lines) > max_attributes:
            break
        if value != "no":
            lines.append(name if value == "yes" else f"{name.removesuffix('_color').replace('_', ' ')}: {value}")
    return lines


def clipped_grid(person: Person, width: int, height: int) -> tuple[int, int, int, int, int, int]:
    """The person's box grid clipped to a width x height image.

    Returns (x0, y0, x1, y1, dx, dy): the clipped pixel rectangle [x0, x1) x [y0, y1) and the offset (dx, dy)
    of its top-left corner inside ``person.mask`` / ``person.parts`` (which cover the unclipped grid).
    Empty rectangles have x1 == x0 or y1 == y0.
    """
    gx, gy, gw, gh = person.box_grid()
    x0, y0 = min(max(gx, 0), width), min(max(gy, 0), height)
    x1, y1 = min(max(gx + gw, 0), width), min(max(gy + gh, 0), height)
    return x0, y0, max(x0, x1), max(y0, y1), x0 - gx, y0 - gy


def grid_crop(grid_map: Optional[np.ndarray], person: Person, width: int, height: int,
              what: str) -> Optional[np.ndarray]:
    """The part of a box-grid map (mask or parts, [h, w]) inside the image; None if the map is absent.

    Raises ValueError if the map does not have the box grid's shape (the Person contract).
    """
    if grid_map is None:
        return None
    _, _, gw, gh = person.box_grid()
    if grid_map.shape != (gh, gw):
        raise ValueError(f"person track {person.track_id}: {what} is {list(grid_map.shape)}, but box "
                         f"{person.box.tolist()} has a {gh}x{gw} pixel grid (Person.box_grid)")
    x0, y0, x1, y1, dx, dy = clipped_grid(person, width, height)
    return grid_map[dy:dy + (y1 - y0), dx:dx + (x1 - x0)]


def _dashed_line(img: np.ndarray, p0, p1, color, thickness: int, dash: int = 5) -> None:
    """Dashed segment: dashes of ``dash`` px separated by equal gaps."""
    (xa, ya), (xb, yb) = p0, p1
    length = math.hypot(xb - xa, yb - ya)
    steps = max(1, int(length // (2 * dash)))
    for k in range(steps + 1):
        t0, t1 = min(1.0, 2 * k * dash / max(length, 1e-6)), min(1.0, (2 * k + 1) * dash / max(length, 1e-6))
        if t0 >= 1.0:
            break
        a = (int(round(xa + (xb - xa) * t0)), int(round(ya + (yb - ya) * t0)))
        b = (int(round(xa + (xb - xa) * t1)), int(round(ya + (yb - ya) * t1)))
        cv2.line(img, a, b, color, thickness, cv2.LINE_AA)


def _line(img, p0, p1, color, thickness: int, dashed: bool) -> None:
    if dashed:
        _dashed_line(img, p0, p1, color, thickness)
    else:
        cv2.line(img, p0, p1, color, thickness, cv2.LINE_AA)


def _block_rect(img_shape: tuple, lines: list[str], anchor: tuple[int, int], scale: float,
                below: bool = False) -> tuple[int, int, int, int]:
    """(x, y, w, h) of a text block placed above ``anchor`` (x, y) - or below it if ``below`` or there is no
    room above - and kept inside the image."""
    h_img, w_img = img_shape[:2]
    sizes = [cv2.getTextSize(line, _FONT, scale, 1) for line in lines]
    block_w = max(s[0][0] for s in sizes) + 6
    block_h = _line_height(scale) * len(lines) + 2
    x = min(max(anchor[0], 0), max(0, w_img - block_w))
    y = anchor[1] - block_h if not below and anchor[1] - block_h >= 0 else anchor[1]
    return x, min(max(y, 0), max(0, h_img - block_h)), block_w, block_h


def _line_height(scale: float) -> int:
    (_, text_h), baseline = cv2.getTextSize("#Ag", _FONT, scale, 1)
    return text_h + baseline + 3


def _draw_block(img: np.ndarray, lines: list[str], rect: tuple[int, int, int, int], color, scale: float) -> None:
    """Text lines on a translucent background of ``color``; ink black or white by the colour's luminance."""
    x, y, block_w, block_h = rect
    patch = img[y:y + block_h, x:x + block_w]  # blended only where it is drawn
    patch[:] = (0.2 * patch + 0.8 * np.array(color, np.float32)).astype(np.uint8)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    line_h = _line_height(scale)
    for i, line in enumerate(lines):
        cv2.putText(img, line, (x + 3, y + line_h * (i + 1) - 3), _FONT, scale, ink, 1, cv2.LINE_AA)


def _text_block(img: np.ndarray, lines: list[str], anchor: tuple[int, int], color, scale: float,
                below: bool = False) -> None:
    _draw_block(img, lines, _block_rect(img.shape, lines, anchor, scale, below), color, scale)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _draw_labels(img: np.ndarray, persons: list[Person], scale: float) -> None:
    """Greedy label placement: each label goes above its box, else inside its top, else below its bottom,
    wherever it overlaps no label placed before; failing that, only the id line is drawn (first free place,
    else above the box). Persons are taken in the given order, so earlier ones get the best places."""
    h, w = img.shape[:2]
    placed: list[tuple[int, int, int, int]] = []
    for p in persons:
        bx0, by0 = _to_px(p.box[0], p.box[1], w, h)
        by1 = _to_px(p.box[2], p.box[3], w, h)[1]
        x, top, bottom = min(max(bx0, 0), w - 1), min(max(by0, 0), h - 1), min(max(by1, 0), h - 1)
        candidates = [((x, top), False), ((x, top), True), ((x, bottom), True)]
        lines = person_label(p)
        if by1 - by0 < 3 * _line_height(scale) * len(lines):  # small person: attributes would hide the scene
            lines = lines[:1]
        choice = None
        for text in (lines, lines[:1]):
            rects = [_block_rect(img.shape, text, anchor, scale, below) for anchor, below in candidates]
            free = [r for r in rects if not any(_overlaps(r, q) for q in placed)]
            if free:
                choice = (text, free[0])
                break
        if choice is None:
            choice = (lines[:1], _block_rect(img.shape, lines[:1], candidates[0][0], scale))
        _draw_block(img, choice[0], choice[1], track_color(p.track_id), scale)
        placed.append(choice[1])


def _to_px(x: float, y: float, w: int, h: int) -> tuple[int, int]:
    """Float pixel coordinates -> int drawing coordinates, bounded so OpenCV never overflows."""
    return int(round(min(max(float(x), -4.0 * w), 5.0 * w))), int(round(min(max(float(y), -4.0 * h), 5.0 * h)))


def _draw_person(img: np.ndarray, p: Person, show_masks: bool, show_parts: bool, show_keypoints: bool,
                 keypoint_threshold: float, thick: int) -> None:
    h, w = img.shape[:2]
    color = track_color(p.track_id)
    tentative = p.track_id <= 0
    x0, y0, x1, y1, _, _ = clipped_grid(p, w, h)
    region = img[y0:y1, x0:x1]
    mask = grid_crop(p.mask, p, w, h, "mask")
    parts = grid_crop(p.parts, p, w, h, "parts")
    if region.size:
        if show_parts and parts is not None:
            labelled = (parts > 0) & (parts < len(PART_PALETTE))
            region[labelled] = (0.45 * region[labelled] + 0.55 * PART_PALETTE[parts[labelled]]).astype(np.uint8)
        elif show_masks and mask is not None:
            tint = np.array(color, np.float32)
            region[mask] = (0.55 * region[mask] + 0.45 * tint).astype(np.uint8)
        if show_masks and mask is not None and mask.any():
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE,
                                           offset=(x0, y0))
            cv2.drawContours(img, contours, -1, color, 1, cv2.LINE_AA)
    # Box corners only (product style): the mask outline already shows the extent.
    bx0, by0 = _to_px(p.box[0], p.box[1], w, h)
    bx1, by1 = _to_px(p.box[2], p.box[3], w, h)
    arm = max(3, min(bx1 - bx0, by1 - by0) // 5)
    for cx, cy, sx, sy in ((bx0, by0, 1, 1), (bx1, by0, -1, 1), (bx0, by1, 1, -1), (bx1, by1, -1, -1)):
        _line(img, (cx, cy), (cx + sx * arm, cy), color, thick, tentative)
        _line(img, (cx, cy), (cx, cy + sy * arm), color, thick, tentative)
    if show_keypoints:
        kp = p.keypoints
        ok = np.isfinite(kp).all(axis=1) & (kp[:, 2] >= keypoint_threshold) & (kp[:, 2] > 0)
        for a, b in COCO_SKELETON:
            if ok[a - 1] and ok[b - 1]:
                pa, pb = _to_px(*kp[a - 1, :2], w, h), _to_px(*kp[b - 1, :2], w, h)
                if not tentative:  # dark outline under the limb keeps it readable on any background
                    cv2.line(img, pa, pb, (20, 20, 20), thick + 2, cv2.LINE_AA)
                _line(img, pa, pb, color, thick, tentative)
        for j in np.flatnonzero(ok):
            centre = _to_px(*kp[j, :2], w, h)
            cv2.circle(img, centre, thick + 1, (20, 20, 20), cv2.FILLED, cv2.LINE_AA)
            cv2.circle(img, centre, thick, (255, 255, 255), cv2.FILLED, cv2.LINE_AA)


def draw_frame(image_rgb: Optional[np.ndarray], frame: PersonFrame, show_masks: bool = True,
               show_parts: bool = False, show_keypoints: bool = True, show_labels: bool = True,
               keypoint_threshold: float = KEYPOINT_THRESHOLD) -> np.ndarray:
    """Annotated copy of the input image. Returns uint8 [H, W, 3] RGB.

    image_rgb: uint8 [H, W, 3] RGB with (W, H) == frame.image_size, or None (e.g. an undecodable frame): a dark
        canvas of frame.image_size is drawn on instead.
    Per person: mask tint + outline in the track colour (or body-part colours with show_parts), box corners,
    skeleton (joints with confidence >= keypoint_threshold), and a label "#id score" + top attributes.
    Tentative tracks are grey and dashed. A status line shows person count and total latency; a dropped frame
    is dimmed and its reason written across it.
    """
    w_frame, h_frame = (int(v) for v in frame.image_size)
    if image_rgb is None:
        if w_frame <= 0 or h_frame <= 0:
            raise ValueError(f"draw_frame: no image and frame.image_size {frame.image_size} is empty")
        img = np.full((h_frame, w_frame, 3), 40, np.uint8)
    else:
        image_rgb = np.asarray(image_rgb)
        if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
            raise ValueError(f"draw_frame: image must be uint8 [H, W, 3] RGB, got {image_rgb.dtype} "
                             f"{list(image_rgb.shape)}")
        if (image_rgb.shape[1], image_rgb.shape[0]) != (w_frame, h_frame):
            raise ValueError(f"draw_frame: image is {image_rgb.shape[1]}x{image_rgb.shape[0]} but "
                             f"frame.image_size is {w_frame}x{h_frame}")
        img = np.ascontiguousarray(image_rgb).copy()
    h, w = img.shape[:2]
    thick = max(1, int(round(min(h, w) / 480)))
    font_scale = max(0.3, min(h, w) / 1200)
    # Tentative first, then confirmed by id, so confirmed tracks stay on top and the order is stable.
    ordered = sorted(frame.persons, key=lambda q: (q.track_id > 0, q.track_id))
    for p in ordered:
        _draw_person(img, p, show_masks, show_parts, show_keypoints, keypoint_threshold, thick)
    if show_labels:  # after all persons, so no mask or skeleton covers a label; confirmed ids placed first
        _draw_labels(img, sorted(ordered, key=lambda q: (q.track_id <= 0, q.track_id)), font_scale)
    if frame.dropped is not None:
        img = (img.astype(np.uint16) * 2 // 5).astype(np.uint8)
        _text_block(img, ["FRAME DROPPED", str(frame.dropped)[:80]], (4, h // 2), (200, 40, 40),
                    font_scale * 1.3, below=True)
    elif show_labels:
        total = sum(frame.timings_ms.values())
        status = f"{len(frame.persons)} persons" + (f"  {total:.1f} ms" if frame.timings_ms else "")
        _text_block(img, [status], (0, 0), (30, 30, 30), font_scale, below=True)
    return img


def frame_from_sample(sample: Sample, stamp_ns: int = 0, frame_id: str = "camera") -> PersonFrame:
    """Ground truth of a SynthHumans (or any) Sample as a PersonFrame, for tests and demos.

    track_id: the sample's track id when > 0, else the person's index + 1 (single images have no tracks).
    score 1. keypoints: confidence 1 for visible, 0.5 for occluded, 0 for unlabelled joints (x = y = 0).
    mask / parts: the full-image maps cropped to the box grid (zero outside the image); parts keep only this
    person's mask pixels. attributes: {name: (value, 1.0)}. embedding: empty (ground truth has none).
    """
    h, w = sample.image.shape[:2]
    persons = []
    for i, ann in enumerate(sample.persons):
        vis = ann.keypoints[:, 2]
        conf = np.where(vis >= 2, 1.0, np.where(vis >= 1, 0.5, 0.0)).astype(np.float32)
        keypoints = np.concatenate([ann.keypoints[:, :2] * (conf[:, None] > 0), conf[:, None]], axis=1)
        person = Person(track_id=ann.track_id if ann.track_id > 0 else i + 1, score=1.0, box=ann.box,
                        keypoints=keypoints, attributes={k: (v, 1.0) for k, v in ann.attributes.items()})
        gx, gy, gw, gh = person.box_grid()
        x0, y0, x1, y1, dx, dy = clipped_grid(person, w, h)
        if ann.mask is not None:
            person.mask = np.zeros((gh, gw), bool)
            person.mask[dy:dy + y1 - y0, dx:dx + x1 - x0] = ann.mask[y0:y1, x0:x1]
            if sample.parts is not None:
                person.parts = np.zeros((gh, gw), np.uint8)
                crop = sample.parts[y0:y1, x0:x1] * ann.mask[y0:y1, x0:x1]
                person.parts[dy:dy + y1 - y0, dx:dx + x1 - x0] = crop
        persons.append(person)
    return PersonFrame(stamp_ns=int(stamp_ns), frame_id=frame_id, image_size=(w, h), persons=persons)
