"""Score an HCQNet on a COCO-layout folder: letterbox -> model -> postprocessor -> COCO results -> the same
``evaluate_detections`` that scores prediction files (``hcq-ros eval --gt --pred``)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from pycocotools import mask as mask_utils

from hcq_ros.data.torch_dataset import image_to_tensor


def detections_to_coco(image_id: int, det: dict) -> list[dict]:
    """One postprocessed image (scores [K], boxes [K,4] xyxy, keypoints [K,17,3], masks [K,h,w]) -> COCO results."""
    out = []
    boxes = det["boxes"].cpu().numpy().astype(np.float64)
    scores = det["scores"].cpu().numpy().astype(np.float64)
    kps = det["keypoints"].cpu().numpy().astype(np.float64)
    masks = det["masks"].cpu().numpy()
    for k in range(len(scores)):
        x0, y0, x1, y1 = boxes[k]
        rle = mask_utils.encode(np.asfortranarray(masks[k].astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append({"image_id": int(image_id), "category_id": 1, "score": float(scores[k]),
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "segmentation": rle, "keypoints": [float(v) for v in kps[k].reshape(-1)]})
    return out


@torch.no_grad()
def predict_coco(model, images: Iterable[tuple[int, np.ndarray]], input_size: tuple[int, int],
                 score_threshold: float = 0.05, batch_size: int = 8) -> list[dict]:
    """Run ``model`` on (image_id, RGB image) pairs letterboxed to ``input_size`` (W, H); COCO results list.

    A low score threshold is the COCO convention: AP integrates over the whole precision/recall curve.
    """
    from hcq_ros.data.transforms import letterbox
    from hcq_ros.models.postprocess import HCQPostProcess

    post = HCQPostProcess(score_threshold=score_threshold, max_people=100)
    was_training = model.training
    model.eval()
    results: list[dict] = []
    batch: list[tuple[int, torch.Tensor, tuple, tuple]] = []

    def flush():
        x = torch.stack([b[1] for b in batch])
        outputs = model(x)
        dets = post(outputs, [b[2] for b in batch], letterbox=[b[3] for b in batch],
                    input_size=(input_size[1], input_size[0]))
        for (image_id, *_), det in zip(batch, dets):
            results.extend(detections_to_coco(image_id, det))
        batch.clear()

    for image_id, image in images:
        boxed, scale, pad = letterbox(image, input_size)
        batch.append((image_id, image_to_tensor(boxed), image.shape[:2], (scale, pad[0], pad[1])))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    model.train(was_training)
    return results


def evaluate_detector(model, ann_file: str | Path, image_root: str | Path, input_size: tuple[int, int],
                      max_images: int | None = None, verbose: bool = False) -> dict:
    """COCO bbox/segm/keypoints AP (+ no-small keypoints AP) of ``model`` on the first ``max_images`` images."""
    from hcq_ros.data.formats import read_image
    from hcq_ros.evaluation.coco_eval import evaluate_detections, load_coco_gt

    coco = load_coco_gt(ann_file)
    ids = sorted(coco.getImgIds())[: max_images or None]
    root = Path(image_root)
    images = ((i, read_image(root / coco.imgs[i]["file_name"])) for i in ids)
    results = predict_coco(model, images, input_size)
    if max_images:   # score only the images that were run
        coco = _subset(coco, ids)
    return evaluate_detections(coco, results, verbose=verbose)


def _subset(coco, ids):
    from pycocotools.coco import COCO

    from hcq_ros.evaluation.coco_eval import _quiet

    keep = set(ids)
    sub = COCO()
    sub.dataset = {"images": [im for im in coco.dataset["images"] if im["id"] in keep],
                   "annotations": [a for a in coco.dataset["annotations"] if a["image_id"] in keep],
                   "categories": coco.dataset["categories"]}
    with _quiet(False):
        sub.createIndex()
    return sub
