"""Attribute accuracy per attribute of ``schema.ATTRIBUTE_NAMES`` and their mean.

Two sources are scored the same way (``AttributeAccuracy``):
- scene persons (``evaluate_detection_attributes``): each detection's ``"attributes"`` is compared with the
  GT person it matches. Matching is per image, greedy by descending score: a detection takes the unmatched,
  non-crowd GT person of highest box IoU, if that IoU >= 0.5. Only matched pairs are scored (a missed person
  has no predicted attributes to judge; ``attr_matched`` says which fraction of GT persons was matched).
  Keys ``attr_acc``, ``attr_per_attribute``, ``attr_matched``.
- Market-1501 crops (``hcq_ros.evaluation.reid``): keys ``crop_attr_acc``, ``crop_attr_per_attribute``.

Within a scored pair, every attribute the GT labels counts once: correct when the prediction gives the same
value, wrong when it gives another value or none. Attributes the GT leaves out are not counted. The mean is
over attributes with at least one counted label (others are ``None`` in the per-attribute dict).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from hcq_ros.data.schema import ATTRIBUTE_NAMES, ATTRIBUTES, attributes_to_indices

MATCH_IOU = 0.5


def check_attributes(attrs, where: str) -> None:
    """ValueError naming ``where`` unless ``attrs`` is ``{name: value}`` with known names and values."""
    if not isinstance(attrs, dict):
        raise ValueError(f"{where}: attributes must be an object {{name: value}}, got {type(attrs).__name__}")
    unknown = sorted(set(attrs) - set(ATTRIBUTES))
    if unknown:
        raise ValueError(f"{where}: unknown attributes {unknown} (known: {list(ATTRIBUTE_NAMES)})")
    try:
        attributes_to_indices(attrs)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


class AttributeAccuracy:
    """Accumulates correct / labelled counts per attribute (order of ``ATTRIBUTE_NAMES``)."""

    def __init__(self) -> None:
        self.correct = np.zeros(len(ATTRIBUTE_NAMES), dtype=np.int64)
        self.labelled = np.zeros(len(ATTRIBUTE_NAMES), dtype=np.int64)

    def update_indices(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """``gt``, ``pred``: int [N, A] or [A] class indices per attribute, -1 = not labelled / not predicted."""
        gt = np.atleast_2d(np.asarray(gt, dtype=np.int64))
        pred = np.atleast_2d(np.asarray(pred, dtype=np.int64))
        if gt.shape != pred.shape or gt.shape[1] != len(ATTRIBUTE_NAMES):
            raise ValueError(f"attribute indices must both be [N, {len(ATTRIBUTE_NAMES)}], "
                             f"got {list(gt.shape)} and {list(pred.shape)}")
        labelled = gt >= 0
        self.labelled += labelled.sum(axis=0)
        self.correct += (labelled & (pred == gt)).sum(axis=0)

    def update(self, gt: dict[str, str], pred: dict[str, str]) -> None:
        self.update_indices(attributes_to_indices(gt), attributes_to_indices(pred))

    def result(self, prefix: str = "attr") -> dict:
        """``{prefix}_acc`` (mean over labelled attributes, None if none) and ``{prefix}_per_attribute``."""
        per = {name: (float(c / n) if n else None)
               for name, c, n in zip(ATTRIBUTE_NAMES, self.correct, self.labelled)}
        defined = [v for v in per.values() if v is not None]
        return {f"{prefix}_acc": float(np.mean(defined)) if defined else None, f"{prefix}_per_attribute": per}


def greedy_match(gt_boxes: np.ndarray, pred_boxes: np.ndarray, pred_scores: np.ndarray,
                 iou_threshold: float = MATCH_IOU) -> list[tuple[int, int]]:
    """(pred index, gt index) pairs; boxes are xywh ``[G, 4]`` / ``[P, 4]``, ``pred_scores`` [P].

    Detections in descending score order each take the free GT box of highest IoU if it is >= the threshold.
    """
    if len(gt_boxes) == 0 or len(pred_boxes) == 0:
        return []
    iou = np.asarray(mask_utils.iou(np.asarray(pred_boxes, np.float64), np.asarray(gt_boxes, np.float64),
                                    [0] * len(gt_boxes)))  # [P, G]
    free = np.ones(len(gt_boxes), dtype=bool)
    pairs = []
    for p in np.argsort(-np.asarray(pred_scores), kind="stable"):
        candidates = np.where(free, iou[p], -1.0)
        g = int(np.argmax(candidates))
        if candidates[g] >= iou_threshold:
            free[g] = False
            pairs.append((int(p), g))
    return pairs


def evaluate_detection_attributes(coco: COCO, results: Sequence[dict],
                                  iou_threshold: float = MATCH_IOU) -> dict:
    """Attribute accuracy of validated person detections (``coco_eval.validate_results``) against ``coco``.

    Returns {} when no detection carries ``"attributes"`` (nothing to score).
    """
    if not any("attributes" in r for r in results):
        return {}
    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    accuracy = AttributeAccuracy()
    n_gt = n_matched = 0
    for image_id in coco.imgs:
        gts = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        gts = [a for a in gts if coco.cats.get(a.get("category_id"), {}).get("name") == "person"]
        gts = [a for a in gts if a.get("attributes")]
        n_gt += len(gts)
        preds = by_image.get(image_id, [])
        pairs = greedy_match(np.array([g["bbox"] for g in gts]).reshape(-1, 4),
                             np.array([p["bbox"] for p in preds]).reshape(-1, 4),
                             np.array([p["score"] for p in preds]), iou_threshold)
        for p, g in pairs:
            try:
                gt_idx = attributes_to_indices(gts[g]["attributes"])
            except ValueError as e:
                raise ValueError(f"ground truth annotation {gts[g].get('id')}: {e}") from e
            accuracy.update_indices(gt_idx, attributes_to_indices(preds[p].get("attributes", {})))
        n_matched += len(pairs)
    out = accuracy.result("attr")
    out["attr_matched"] = float(n_matched / n_gt) if n_gt else None
    return out


def indices_from_names(values: np.ndarray, names: Optional[Sequence[str]], source: str) -> np.ndarray:
    """Check an int [N, A] attribute index array (columns in ``names`` order, default ATTRIBUTE_NAMES)."""
    values = np.asarray(values)
    if names is not None and tuple(str(n) for n in names) != ATTRIBUTE_NAMES:
        raise ValueError(f"{source}: attribute_names {list(names)} differ from {list(ATTRIBUTE_NAMES)}")
    if values.ndim != 2 or values.shape[1] != len(ATTRIBUTE_NAMES) or values.dtype.kind not in "iu":
        raise ValueError(f"{source}: attributes must be integer [N, {len(ATTRIBUTE_NAMES)}], "
                         f"got {values.dtype} {list(values.shape)}")
    sizes = np.array([len(ATTRIBUTES[n]) for n in ATTRIBUTE_NAMES])
    bad = (values < -1) | (values >= sizes)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"{source}: attributes[{row}, {col}] = {values[row, col]} is not a valid index "
                         f"for {ATTRIBUTE_NAMES[col]!r} (0..{sizes[col] - 1}, or -1)")
    return values.astype(np.int64)
