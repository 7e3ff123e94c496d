"""Evaluation with the standard tools: COCO AP (pycocotools), ReID mAP/CMC, part mIoU, attribute accuracy,
MOT metrics (motmetrics).

| module        | scores                                   | entry points                                          |
|---------------|------------------------------------------|-------------------------------------------------------|
| coco_eval     | bbox / segm / keypoints AP (+ no-small)  | ``evaluate_detections(gt, results)``                  |
| attributes    | attribute accuracy                       | ``evaluate_detection_attributes``, ``AttributeAccuracy`` |
| parts         | part segmentation mIoU                   | ``PartConfusion``, ``evaluate_part_maps``             |
| reid          | ReID mAP, CMC rank-1/5/10                | ``evaluate_reid(arrays)``, ``evaluate_reid_npz``      |
| mot           | MOTA, IDF1, ID switches, MOTP, ...       | ``evaluate_mot(rows)``, ``evaluate_mot_dir``          |
| predictions   | prediction file formats (the contract)   | loaders, ``write_ground_truth_as_predictions``        |
| cli           | ``hcq-ros eval``                         | ``evaluate_paths(gt_dir, pred_paths)``                |

The in-memory functions (``evaluate_detections`` on a results list, ``PartConfusion.update`` on label maps,
``evaluate_reid`` on embedding arrays, ``evaluate_mot`` on box rows) are what a model or pipeline evaluation
calls directly; the file-level ones only load files and call them.
"""
from __future__ import annotations

from .attributes import AttributeAccuracy, evaluate_detection_attributes, greedy_match
from .cli import evaluate_paths, score_detections
from .coco_eval import evaluate_detections, load_coco_gt, validate_results
from .mot import accumulate_sequence, evaluate_mot, evaluate_mot_dir
from .parts import PartConfusion, evaluate_part_maps
from .predictions import (find_predictions, load_detections, load_mot_results, load_reid_npz,
                          write_ground_truth_as_predictions)
from .reid import evaluate_reid, evaluate_reid_npz

__all__ = [
    "AttributeAccuracy", "evaluate_detection_attributes", "greedy_match", "evaluate_paths", "score_detections",
    "evaluate_detections", "load_coco_gt", "validate_results", "accumulate_sequence", "evaluate_mot",
    "evaluate_mot_dir", "PartConfusion", "evaluate_part_maps", "find_predictions", "load_detections",
    "load_mot_results", "load_reid_npz", "write_ground_truth_as_predictions", "evaluate_reid",
    "evaluate_reid_npz",
]
