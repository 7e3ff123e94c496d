"""COCO person AP (bbox, segm, keypoints) with pycocotools' ``COCOeval``, person category only.

Protocol:
- Ground truth is a COCO json (``load_coco_gt``); only the category named "person" is scored
  (``params.catIds = [person]``), every image of the json is scored (images without persons included: any
  detection there is a false positive), crowd regions are COCOeval's usual "ignore" regions.
- Predictions are a COCO results list (see ``hcq_ros.evaluation.predictions``). Entries of another category
  are dropped and counted (``det_non_person_entries``). bbox AP is always computed; segm AP only when every
  entry has a ``segmentation`` and keypoints AP only when every entry has ``keypoints`` (pycocotools would
  otherwise invent box-shaped masks / crash); a list where only some entries have them is an error.
- ``keypoints_AP_nosmall`` (the HCQNet paper's pose protocol, "no small persons"): the keypoints COCOeval
  gets one extra area range ``[32², 1e10]`` labelled "nosmall". COCOeval then treats every GT person whose
  ``area`` (its mask area in our json) is < 32² as *ignored*: a detection matched to it is neither TP nor FP,
  and an unmatched detection whose area (box w*h, as ``loadRes`` sets it) is < 32² is also ignored. GT
  persons without labelled keypoints are ignored in every keypoints range (COCOeval's ``num_keypoints == 0``
  rule). The same single evaluation also yields the standard ranges (all / medium / large).
- AP values are in [0, 1]; an AP that COCO leaves undefined (no GT person in that area range) is ``None``.
  An empty prediction list scores 0.0 wherever GT exists (pycocotools' ``loadRes`` cannot take an empty list).
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hcq_ros.data.formats import load_json
from hcq_ros.data.schema import NUM_KEYPOINTS

from .attributes import check_attributes

NOSMALL_MIN_AREA = 32 ** 2
_MAX_AREA = 1e5 ** 2  # COCOeval's "infinite" upper area bound


def _quiet(verbose: bool):
    """Context that swallows pycocotools' progress prints unless ``verbose``."""
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def load_coco_gt(ann_file: str | Path) -> COCO:
    """Ground-truth COCO object from ``ann_file``; FileNotFoundError / ValueError naming the path."""
    ann_file = Path(ann_file)
    data = load_json(ann_file)
    if not isinstance(data, dict):
        raise ValueError(f"{ann_file}: expected a COCO json object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{ann_file}: missing or non-list '{key}'")
    coco = COCO()
    coco.dataset = data
    with _quiet(False):
        coco.createIndex()
    coco.source_path = ann_file  # for error messages further down
    person_category_id(coco)  # fail early when there is no person category
    return coco


def person_category_id(coco: COCO) -> int:
    for cat in coco.dataset.get("categories", []):
        if cat.get("name") == "person":
            return int(cat["id"])
    raise ValueError(f"{getattr(coco, 'source_path', 'ground truth')}: no category named 'person'")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_results(results: Sequence[dict], coco: COCO, source: str = "predictions") -> tuple[list[dict], int]:
    """Check a COCO results list against the GT; returns (deep-copied person entries, number of other entries).

    Raises ValueError naming ``source`` and the entry index for: a non-object entry, an ``image_id`` absent
    from the GT, a bbox that is not 4 finite numbers with w, h >= 0, a missing/non-finite score, a keypoint
    list whose length is not 51, an RLE whose size differs from the image, unknown attributes, and a list
    where only some entries carry ``segmentation`` / ``keypoints``.
    """
    if not isinstance(results, (list, tuple)):
        raise ValueError(f"{source}: expected a list of detections, got {type(results).__name__}")
    person = person_category_id(coco)
    kept, others = [], 0
    for i, entry in enumerate(results):
        where = f"{source}: entry {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
        image_id = entry.get("image_id")
        if image_id not in coco.imgs:
            raise ValueError(f"{where}: image_id {image_id!r} is not in the ground truth "
                             f"({len(coco.imgs)} images)")
        where = f"{where} (image {image_id})"
        if entry.get("category_id", person) != person:
            others += 1
            continue
        bbox = entry.get("bbox")
        if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox)
                or bbox[2] < 0 or bbox[3] < 0):
            raise ValueError(f"{where}: bbox must be 4 finite numbers [x, y, w, h] with w, h >= 0, got {bbox!r}")
        if not _is_number(entry.get("score")):
            raise ValueError(f"{where}: score must be a finite number, got {entry.get('score')!r}")
        if "keypoints" in entry:
            kps = entry["keypoints"]
            if not isinstance(kps, (list, tuple)) or len(kps) != 3 * NUM_KEYPOINTS:
                n = len(kps) if isinstance(kps, (list, tuple)) else type(kps).__name__
                raise ValueError(f"{where}: {n} keypoint values, expected {3 * NUM_KEYPOINTS} (17 x, y, score)")
            if not all(_is_number(v) for v in kps):
                raise ValueError(f"{where}: keypoints must be finite numbers")
        if "segmentation" in entry:
            _check_segmentation(entry["segmentation"], coco.imgs[image_id], where)
        if "attributes" in entry:
            check_attributes(entry["attributes"], where)
        entry = copy.deepcopy(entry)
        entry["category_id"] = person
        kept.append(entry)
    for key in ("segmentation", "keypoints"):
        have = [key in e for e in kept]
        if any(have) and not all(have):
            raise ValueError(f"{source}: entry {have.index(False)} has no '{key}' while others have one "
                             f"(give it for every detection or for none)")
    return kept, others


def _check_segmentation(segm, image: dict, where: str) -> None:
    if isinstance(segm, dict):
        size = segm.get("size")
        if "counts" not in segm or not isinstance(size, (list, tuple)) or len(size) != 2:
            raise ValueError(f"{where}: segmentation RLE needs 'size' [h, w] and 'counts'")
        if "height" in image and [int(size[0]), int(size[1])] != [int(image["height"]), int(image["width"])]:
            raise ValueError(f"{where}: segmentation size {list(size)} differs from the image "
                             f"[{image['height']}, {image['width']}]")
    elif not isinstance(segm, list) or not segm:
        raise ValueError(f"{where}: segmentation must be an RLE object or a non-empty polygon list")


def _average_precision(E: COCOeval, iou: Optional[float] = None, area: str = "all") -> Optional[float]:
    """Mean of COCOeval's precision array (as ``summarize`` does) at the largest maxDets; None if undefined."""
    precision = E.eval["precision"]  # [T iou thresholds, R recall points, K categories, A areas, M maxDets]
    a = E.params.areaRngLbl.index(area)
    p = precision[:, :, :, a, -1]
    if iou is not None:
        p = p[np.flatnonzero(np.isclose(E.params.iouThrs, iou))]
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else None


def best_f1(E: COCOeval, iou: float = 0.5) -> tuple[Optional[float], Optional[float]]:
    """(best F1, the score threshold that gives it) over COCOeval's 101 recall points at one IoU, all areas,
    largest maxDets: F1 = 2PR / (P + R) with COCOeval's interpolated precision (a slight over-estimate between
    detections) and ``eval["scores"]``, the score of the detection reached at each recall point. This is how the
    product's default score threshold is chosen; (None, None) when no recall point is reached."""
    t = int(np.flatnonzero(np.isclose(E.params.iouThrs, iou))[0])
    a = E.params.areaRngLbl.index("all")
    precision = E.eval["precision"][t, :, 0, a, -1]
    scores = E.eval["scores"][t, :, 0, a, -1]
    recall = np.asarray(E.params.recThrs)
    valid = precision > 0
    if not valid.any():
        return None, None
    f1 = np.where(valid, 2 * precision * recall / np.maximum(precision + recall, 1e-12), -1.0)
    i = int(np.argmax(f1))
    return float(f1[i]), float(scores[i])


def _run_cocoeval(coco: COCO, results: list[dict], iou_type: str, verbose: bool) -> COCOeval:
    with _quiet(verbose):
        dt = coco.loadRes(copy.deepcopy(results))  # loadRes writes ids/areas into the entries
        E = COCOeval(coco, dt, iouType=iou_type)
        E.params.catIds = [person_category_id(coco)]
        if iou_type == "keypoints":
            E.params.areaRng = list(E.params.areaRng) + [[NOSMALL_MIN_AREA, _MAX_AREA]]
            E.params.areaRngLbl = list(E.params.areaRngLbl) + ["nosmall"]
        E.evaluate()
        E.accumulate()
        if verbose:
            print(f"--- COCO {iou_type} (person) ---")
            E.summarize()
    return E


def _metric_names(iou_type: str) -> list[tuple[str, Optional[float], str]]:
    """(key suffix, IoU/OKS threshold or None = mean over 0.5:0.95, area label)."""
    names = [("AP", None, "all"), ("AP50", 0.5, "all"), ("AP75", 0.75, "all")]
    if iou_type != "keypoints":
        names.append(("APs", None, "small"))
    names += [("APm", None, "medium"), ("APl", None, "large")]
    if iou_type == "keypoints":
        names.append(("AP_nosmall", None, "nosmall"))
    return names


# COCOeval's area ranges by label (a GT person counts in a range when lo <= area <= hi).
_AREA_RANGES = {"all": (0.0, _MAX_AREA), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
                "large": (96.0 ** 2, _MAX_AREA), "nosmall": (NOSMALL_MIN_AREA, _MAX_AREA)}


def _has_gt(coco: COCO, iou_type: str, area: str) -> bool:
    """Whether COCOeval would find a non-ignored GT person for ``iou_type`` in area range ``area``."""
    anns = coco.loadAnns(coco.getAnnIds(catIds=[person_category_id(coco)], iscrowd=False))
    if iou_type == "keypoints":
        anns = [a for a in anns if a.get("num_keypoints", 0) > 0]
    lo, hi = _AREA_RANGES[area]
    return any(lo <= a.get("area", 0) <= hi and not a.get("ignore", 0) for a in anns)


def evaluate_detections(gt: str | Path | COCO, results: Sequence[dict], verbose: bool = False,
                        source: str = "predictions") -> dict:
    """COCO person AP of ``results`` (a COCO results list) against ``gt`` (json path or COCO object).

    Returns ``{"bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl", "segm_*" (same),
    "keypoints_AP", "keypoints_AP50", "keypoints_AP75", "keypoints_APm", "keypoints_APl",
    "keypoints_AP_nosmall", "bbox_best_F1", "bbox_best_F1_score" (see ``best_f1``), "keypoints_err",
    "keypoints_err_template", "keypoints_err_people" (see ``pose_error``), "det_num_predictions",
    "det_non_person_entries"}`` (segm/keypoints keys only
    when the predictions carry them; every key when the list is empty).
    """
    coco = gt if isinstance(gt, COCO) else load_coco_gt(gt)
    kept, others = validate_results(results, coco, source)
    out: dict = {"det_num_predictions": len(kept), "det_non_person_entries": others}
    if not kept:
        for iou_type in ("bbox", "segm", "keypoints"):
            for suffix, _, area in _metric_names(iou_type):
                out[f"{iou_type}_{suffix}"] = 0.0 if _has_gt(coco, iou_type, area) else None
        return out
    iou_types = ["bbox"] + [t for t, key in (("segm", "segmentation"), ("keypoints", "keypoints")) if key in kept[0]]
    for iou_type in iou_types:
        E = _run_cocoeval(coco, kept, iou_type, verbose)
        for suffix, iou, area in _metric_names(iou_type):
            out[f"{iou_type}_{suffix}"] = _average_precision(E, iou, area)
        if iou_type == "bbox":
            out["bbox_best_F1"], out["bbox_best_F1_score"] = best_f1(E)
    if "keypoints" in iou_types:
        from hcq_ros.evaluation.pose_error import joint_errors
        out.update(joint_errors(coco, kept))
    return out
