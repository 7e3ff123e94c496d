"""Body-part segmentation mIoU from one confusion matrix accumulated over every scored image.

Classes are ``schema.PART_NAMES`` (background included, as in LIP's 20-class mIoU). Per class
IoU = TP / (TP + FP + FN) over the whole dataset (not averaged per image). A class absent from both the
ground truth and the predictions of the whole dataset (TP + FP + FN = 0) has no IoU (``None`` in
``parts_per_class``) and is left out of the mean. GT pixels labelled 255 are ignored (the usual "void"
label); any other GT or predicted label >= ``NUM_PARTS`` is an error. Keys: ``parts_mIoU``,
``parts_pixel_acc``, ``parts_per_class`` ({part name: IoU}), ``parts_images``.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Optional

import numpy as np
from pycocotools.coco import COCO

from hcq_ros.data.formats import read_label_png
from hcq_ros.data.schema import NUM_PARTS, PART_NAMES

IGNORE_LABEL = 255
PARTS_SUBDIR = "parts"


class PartConfusion:
    """Confusion matrix ``int64 [C, C]`` (rows = GT class, columns = predicted class) over images."""

    def __init__(self, num_classes: int = NUM_PARTS, ignore_label: int = IGNORE_LABEL) -> None:
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.images = 0

    def update(self, gt: np.ndarray, pred: np.ndarray, where: str = "part map") -> None:
        """Add one image: ``gt`` and ``pred`` uint8 [H, W] label maps of the same size."""
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.shape != pred.shape or gt.ndim != 2:
            raise ValueError(f"{where}: prediction is {list(pred.shape)}, ground truth is {list(gt.shape)}")
        valid = gt != self.ignore_label
        gt, pred = gt[valid].astype(np.int64), pred[valid].astype(np.int64)
        for name, labels in (("ground truth", gt), ("prediction", pred)):
            if labels.size and (labels.max() >= self.num_classes or labels.min() < 0):
                raise ValueError(f"{where}: {name} label {int(labels.max())} outside 0..{self.num_classes - 1}")
        self.matrix += np.bincount(gt * self.num_classes + pred,
                                   minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)
        self.images += 1

    def result(self, names: tuple[str, ...] = PART_NAMES) -> dict:
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(axis=0) + self.matrix.sum(axis=1) - tp
        present = union > 0
        iou = np.divide(tp, union, out=np.zeros_like(tp), where=present)
        total = self.matrix.sum()
        return {
            "parts_mIoU": float(iou[present].mean()) if present.any() else None,
            "parts_pixel_acc": float(tp.sum() / total) if total else None,
            "parts_per_class": {n: (float(v) if p else None) for n, v, p in zip(names, iou, present)},
            "parts_images": self.images,
        }


def prediction_path(pred_dir: str | Path, parts_file: str) -> Path:
    """Where a prediction for GT ``parts_file`` lives: ``pred_dir / parts_file`` without its leading ``parts/``.

    ``parts/000001.png`` -> ``pred_dir/000001.png``; ``parts/seq/000001.png`` -> ``pred_dir/seq/000001.png``.
    So ``--pred DIR/parts`` of a GT dataset scores the GT against itself.
    """
    rel = PurePosixPath(parts_file)
    if rel.parts and rel.parts[0] == PARTS_SUBDIR:
        rel = PurePosixPath(*rel.parts[1:])
    return Path(pred_dir) / rel


def evaluate_part_maps(gt_dir: str | Path, pred_dir: str | Path, coco: COCO,
                       image_ids: Optional[list[int]] = None) -> dict:
    """mIoU of the PNGs in ``pred_dir`` against every GT image of ``coco`` that has a ``parts_file``.

    ``gt_dir`` is the dataset root (``parts_file`` is relative to it). A missing prediction PNG is a
    FileNotFoundError naming it, an unreadable one a ValueError naming it.
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"part prediction folder not found: {pred_dir}")
    ids = sorted(coco.imgs) if image_ids is None else image_ids
    scored = [coco.imgs[i] for i in ids if coco.imgs[i].get("parts_file")]
    if not scored:
        raise ValueError(f"{gt_dir}: no ground-truth image has a 'parts_file'; nothing to score part maps on")
    confusion = PartConfusion()
    for info in scored:
        pred_path = prediction_path(pred_dir, info["parts_file"])
        if not pred_path.is_file():
            raise FileNotFoundError(f"part prediction not found: {pred_path} (for image {info['id']})")
        confusion.update(read_label_png(gt_dir / info["parts_file"]), read_label_png(pred_path), str(pred_path))
    return confusion.result()
