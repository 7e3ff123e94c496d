"""Score an HCQNet on a COCO-layout folder: letterbox -> model -> postprocessor -> COCO results -> the same
``evaluate_detections`` that scores prediction files (``hcq-ros eval --gt --pred``). The model is a torch HCQNet
(``evaluate_detector``) or an ONNX export run by the onnxruntime backend (``evaluate_exported_detector``, the fp32
``.onnx`` or the int8 ``.int8.onnx``: how much AP the int8 profile costs, on the same images)."""
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
    ``model``: a torch HCQNet, or any callable images float32 [B, 3, H, W] -> the HCQNet's raw output dict.

    A low score threshold is the COCO convention: AP integrates over the whole precision/recall curve.
    """
    from hcq_ros.data.transforms import letterbox
    from hcq_ros.models.postprocess import HCQPostProcess

    post = HCQPostProcess(score_threshold=score_threshold, max_people=100)
    was_training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
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
    if was_training:
        model.train()
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


def evaluate_exported_detector(onnx_path: str | Path, ann_file: str | Path, image_root: str | Path,
                               max_images: int | None = None, threads: int | None = None,
                               verbose: bool = False) -> dict:
    """COCO metrics of an HCQNet ONNX export (fp32 ``.onnx`` or ``.int8.onnx``) through the onnxruntime backend, at
    the export's static input size; the same letterbox, postprocessor and scoring as ``evaluate_detector``. Not an
    HCQNet export (PersonNet, no hcq_ros metadata, the TensorRT-plugin form) -> ValueError."""
    from hcq_ros.runtime.export import export_kind_phrase, read_export_metadata
    from hcq_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend

    onnx_path = Path(onnx_path)
    meta = read_export_metadata(onnx_path)
    if meta.get("kind") != "hcq":
        held = export_kind_phrase(meta)
        raise ValueError(f"{onnx_path}: not an HCQNet export, this is {held}")
    if str(meta.get("target", "")).startswith("tensorrt"):
        raise ValueError(f"{onnx_path}: the TensorRT-plugin form needs TensorRT; score the onnxruntime form "
                         f"(.onnx / .int8.onnx) of the same checkpoint")
    backend = OnnxRuntimeBackend(intra_op_threads=threads).load(onnx_path)
    try:
        shape = backend.input_shapes.get("images") or ()
        if len(shape) != 4 or shape[2] is None or shape[3] is None:
            raise ValueError(f"{onnx_path}: detector export without a static input size (input shape {shape})")
        input_size = (int(shape[3]), int(shape[2]))

        def forward(x: torch.Tensor) -> dict:   # the export's batch is 1: run the images one by one
            outs = [backend.infer({"images": x[i:i + 1].numpy()}) for i in range(len(x))]
            return {k: torch.from_numpy(np.concatenate([o[k] for o in outs])) for k in outs[0]}

        metrics = evaluate_detector(forward, ann_file, image_root, input_size, max_images, verbose)
    finally:
        backend.close()
    return {"file": str(onnx_path), "precision": meta.get("precision", "fp32"),
            "input_size": list(input_size), **metrics}


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
