"""Joint error of matched people against a template baseline: did the pose head learn articulation?

Keypoints AP near 0 cannot tell "joints a bit off" from "joints are a fixed template in the box". This measures,
over people of at least ``min_area`` pixels (COCO medium + large) matched to a detection (greedy by score,
box IoU >= 0.5), the mean distance of each labelled joint to its prediction divided by the person's box scale
sqrt(w * h): ``keypoints_err`` for the predicted joints and ``keypoints_err_template`` for the canonical
template pose placed in the same predicted box. A pose head that learnt nothing scores the same on both.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from pycocotools.coco import COCO

from hcq_ros.evaluation.attributes import greedy_match

MIN_AREA = 32.0 ** 2


def template_pose() -> np.ndarray:
    """[17, 2] canonical joints ((0, 0) = box top-left, (1, 1) = bottom-right), the HCQNet query init."""
    from hcq_ros.models.heads import CANONICAL_POSE_TEMPLATE
    return np.asarray(CANONICAL_POSE_TEMPLATE, dtype=np.float64)


def joint_errors(coco: COCO, results: Sequence[dict], min_area: float = MIN_AREA) -> dict:
    """{"keypoints_err", "keypoints_err_template", "keypoints_err_people"}; the errors are None without a match.

    results: COCO results with "bbox" xywh, "score" and "keypoints" (51 values); GT annotations need
    "keypoints" and "area" (the segment area, as COCO).
    """
    template = template_pose()
    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(int(r["image_id"]), []).append(r)
    pred_err, tmpl_err = [], []
    for image_id, preds in by_image.items():
        gts = [a for a in coco.imgToAnns.get(image_id, []) if a.get("num_keypoints", 0) > 0
               and a["area"] >= min_area and not a.get("iscrowd", 0)]
        if not gts:
            continue
        pairs = greedy_match(np.array([g["bbox"] for g in gts]), np.array([p["bbox"] for p in preds]),
                             np.array([p["score"] for p in preds]))
        for p, g in pairs:
            gt = np.asarray(gts[g]["keypoints"], np.float64).reshape(17, 3)
            labelled = gt[:, 2] > 0
            _, _, gw, gh = gts[g]["bbox"]
            scale = max(np.sqrt(gw * gh), 1.0)
            pred = np.asarray(preds[p]["keypoints"], np.float64).reshape(17, 3)[:, :2]
            x0, y0, w, h = preds[p]["bbox"]
            placed = np.array([x0, y0]) + template * np.array([w, h])
            pred_err.append(np.linalg.norm(pred - gt[:, :2], axis=1)[labelled].mean() / scale)
            tmpl_err.append(np.linalg.norm(placed - gt[:, :2], axis=1)[labelled].mean() / scale)
    mean = (lambda v: float(np.mean(v)) if v else None)
    return {"keypoints_err": mean(pred_err), "keypoints_err_template": mean(tmpl_err),
            "keypoints_err_people": len(pred_err)}
