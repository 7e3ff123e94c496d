"""Score a PersonNet (or a backend running one) on a SynthHumans sequence folder (``hcq-ros synth --sequences K
--frames T``): ReID, attributes, part segmentation and crop pose, all on the crops the product makes.

Protocol (``evaluate_person_net``):
- Frames: every image of ``annotations/person_keypoints.json`` whose ``frame % frame_step == 0``.
- Persons: non-crowd GT persons whose box is >= ``MIN_HEIGHT`` (32) px tall with >= ``MIN_VISIBLE`` (8) visible
  (v = 2) keypoints (the rule of the folder's Market export).
- Crops: ``crops.crop_persons`` on the GT box (no jitter, ``expand`` 1.2) at the model's crop size.
- ReID (``reid_mAP``, ``reid_rank1/5/10``): persons with identity >= 1. Per (identity, camera) the crop with the
  most visible keypoints (then the earliest frame) is the query, every other crop is gallery; scored by
  ``evaluation.reid.evaluate_reid`` (cosine distance; gallery crops of the query's identity AND camera are left
  out of its ranking; a query without a match in another camera is skipped).
- Attributes (``attr_acc``, ``attr_per_attribute``): per-attribute argmax vs the GT person's attributes
  (``evaluation.attributes.AttributeAccuracy``; the mean is over attributes).
- Parts (``parts_mIoU``): on the crop grid. GT = the person's own part labels warped into the crop (nearest);
  pixels of other annotated people and outside the image are ignored (as in training, see
  ``person_dataset.person_part_targets``); prediction = argmax of ``part_logits``. One confusion matrix over all
  crops (``evaluation.parts.PartConfusion``; 15 classes with background).
- Pose (``pose_PCK`` = PCK@0.5 of the torso size; ``pose_PCK_0.2``): per person, torso size = distance between
  the shoulder midpoint and the hip midpoint of the GT keypoints (image pixels; both shoulders and both hips must
  be labelled, else the person is not scored, ``pose_unscored_persons``). Scored joints: GT visibility > 0 and
  inside the crop. A joint is correct when ||prediction - GT|| <= 0.5 (0.2) x torso size, the prediction mapped
  back to image pixels with ``crops.keypoints_to_image``. PCK = correct / scored joints over the whole folder.

``model_or_backend``: a ``PersonNet`` (run in eval mode, float32), or a callable taking normalised crops
``float32 [B, 3, H, W]`` (``torch_dataset.image_to_tensor`` convention) and returning ``{name: array}`` with the
names of ``PersonNet.output_names()`` (what an ONNX export returns: embedding, attr_<name>..., keypoints,
keypoint_conf, part_logits); then ``crop_size`` (width, height) must be given. Outputs a model does not produce
give None metrics.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from hcq_ros.data.crops import DEFAULT_EXPAND, crop_keypoints, crop_persons, keypoints_to_image
from hcq_ros.data.person_dataset import owner_map, person_part_targets
from hcq_ros.data.schema import ATTRIBUTE_NAMES, KEYPOINT_NAMES, attributes_to_indices
from hcq_ros.data.torch_dataset import image_to_tensor
from hcq_ros.evaluation.attributes import AttributeAccuracy
from hcq_ros.evaluation.parts import PartConfusion
from hcq_ros.evaluation.reid import evaluate_reid

MIN_HEIGHT = 32.0
MIN_VISIBLE = 8
_SHOULDERS = (KEYPOINT_NAMES.index("left_shoulder"), KEYPOINT_NAMES.index("right_shoulder"))
_HIPS = (KEYPOINT_NAMES.index("left_hip"), KEYPOINT_NAMES.index("right_hip"))


def torso_sizes(keypoints: np.ndarray) -> np.ndarray:
    """float32 [N]: ||mid(shoulders) - mid(hips)|| of image keypoints [N, 17, 3]; NaN where one is unlabelled."""
    kp = np.asarray(keypoints, dtype=np.float64)
    shoulder = kp[:, list(_SHOULDERS)]
    hip = kp[:, list(_HIPS)]
    size = np.linalg.norm(shoulder[..., :2].mean(1) - hip[..., :2].mean(1), axis=1)
    labelled = (shoulder[..., 2] > 0).all(1) & (hip[..., 2] > 0).all(1)
    return np.where(labelled, size, np.nan).astype(np.float32)


def collect_crops(data_dir: str | Path, crop_size: tuple[int, int], frame_step: int = 5,
                  expand: float = DEFAULT_EXPAND, max_images: Optional[int] = None) -> dict:
    """Crops and crop-level ground truth of the evaluated persons (protocol in the module doc).

    Returns {crops uint8 [N, H, W, 3], affines [N, 2, 3], identities [N], cameras [N], frames [N],
    visible [N] (v = 2 joint count), attributes int64 [N, A], parts uint8 [N, H, W], keypoints image [N, 17, 3],
    crop_keypoints normalised [N, 17, 3], images (frames used)}.
    """
    from hcq_ros.data.formats import CocoPersonDataset

    data_dir = Path(data_dir)
    ann = data_dir / "annotations" / "person_keypoints.json"
    if not ann.is_file():
        raise FileNotFoundError(f"no SynthHumans annotations at {ann} (write the folder with hcq-ros synth)")
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    dataset = CocoPersonDataset(ann, data_dir)
    chosen = [i for i, image_id in enumerate(dataset.image_ids)
              if int(dataset.coco.imgs[image_id].get("frame", 0)) % frame_step == 0][: max_images or None]
    rows: dict[str, list] = {k: [] for k in ("crops", "affines", "identities", "cameras", "frames", "visible",
                                             "attributes", "parts", "keypoints", "crop_keypoints")}
    for i in chosen:
        sample = dataset[i]
        persons = [p for p in sample.persons if not p.iscrowd]
        keep = [k for k, p in enumerate(persons) if p.box[3] - p.box[1] >= MIN_HEIGHT
                and int((p.keypoints[:, 2] == 2).sum()) >= MIN_VISIBLE]
        if not keep:
            continue
        boxes = np.stack([persons[k].box for k in keep])
        crops, affines = crop_persons(sample.image, boxes, crop_size, expand)
        keypoints = np.stack([persons[k].keypoints for k in keep])
        rows["crops"].append(crops)
        rows["affines"].append(affines)
        rows["keypoints"].append(keypoints)
        rows["crop_keypoints"].append(crop_keypoints(keypoints, affines, crop_size))
        if sample.parts is not None:
            owner = owner_map([p.mask for p in persons], sample.parts.shape)
            rows["parts"] += [person_part_targets(sample.parts, owner, k, affines[j:j + 1], crop_size)[0]
                              for j, k in enumerate(keep)]
        else:
            rows["parts"] += [np.full(crops.shape[1:3], 255, np.uint8)] * len(keep)
        for k in keep:
            p = persons[k]
            rows["identities"].append(p.identity)
            rows["cameras"].append(sample.camera)
            rows["frames"].append(sample.frame)
            rows["visible"].append(int((p.keypoints[:, 2] == 2).sum()))
            rows["attributes"].append(attributes_to_indices(p.attributes))
    if not rows["crops"]:
        raise ValueError(f"{data_dir}: no person passes the evaluation filter (box >= {MIN_HEIGHT:g} px tall, "
                         f">= {MIN_VISIBLE} visible keypoints) in frames with frame % {frame_step} == 0")
    out = {k: np.concatenate(rows[k]) for k in ("crops", "affines", "keypoints", "crop_keypoints")}
    out.update({k: np.asarray(rows[k]) for k in ("identities", "cameras", "frames", "visible")})
    out["attributes"] = np.stack(rows["attributes"])
    out["parts"] = np.stack(rows["parts"])
    out["images"] = len(chosen)
    return out


def _flatten(outputs: dict) -> dict[str, np.ndarray]:
    """PersonNet forward dict -> {export output name: numpy array}."""
    flat = {}
    for key, value in outputs.items():
        if key == "attr_logits":
            flat.update({f"attr_{n}": v.float().cpu().numpy() for n, v in zip(ATTRIBUTE_NAMES, value)})
        elif key in ("embedding", "keypoints", "keypoint_conf", "part_logits"):
            flat[key] = value.float().cpu().numpy()
    return flat


def run_person_net(model_or_backend, crops: np.ndarray, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Outputs over uint8 crops [N, H, W, 3]: embedding [N, D], attributes int64 [N, A] (argmax),
    keypoints [N, 17, 2] crop-normalised, part labels uint8 [N, H, W] (argmax); keys only for produced outputs."""
    is_module = isinstance(model_or_backend, torch.nn.Module)
    was_training = model_or_backend.training if is_module else False
    if is_module:
        model_or_backend.eval()
        param = next(model_or_backend.parameters())
    chunks: dict[str, list[np.ndarray]] = {}
    try:
        for start in range(0, len(crops), batch_size):
            x = torch.stack([image_to_tensor(c) for c in crops[start:start + batch_size]])
            if is_module:
                with torch.no_grad():
                    flat = _flatten(model_or_backend(x.to(device=param.device, dtype=param.dtype)))
            else:
                flat = {k: np.asarray(v) for k, v in model_or_backend(x.numpy()).items()}
            batch = {}
            if "embedding" in flat:
                batch["embedding"] = flat["embedding"].astype(np.float32)
            if all(f"attr_{n}" in flat for n in ATTRIBUTE_NAMES):
                batch["attributes"] = np.stack([flat[f"attr_{n}"].argmax(1) for n in ATTRIBUTE_NAMES], 1)
            if "keypoints" in flat:
                batch["keypoints"] = flat["keypoints"].astype(np.float32)
            if "part_logits" in flat:
                batch["parts"] = flat["part_logits"].argmax(1).astype(np.uint8)
            for k, v in batch.items():
                chunks.setdefault(k, []).append(v)
    finally:
        if is_module:
            model_or_backend.train(was_training)
    return {k: np.concatenate(v) for k, v in chunks.items()}


def reid_split(identities: np.ndarray, cameras: np.ndarray, visible: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """bool [N]: True for the query crop of each (identity, camera) (most visible joints, then earliest frame)."""
    query = np.zeros(len(identities), dtype=bool)
    best: dict[tuple[int, int], int] = {}
    for i, key in enumerate(zip(identities.tolist(), cameras.tolist())):
        j = best.get(key)
        if j is None or (visible[i], -frames[i]) > (visible[j], -frames[j]):
            best[key] = i
    query[list(best.values())] = True
    return query


def pose_pck(pred_image: np.ndarray, gt: dict, thresholds=(0.5, 0.2)) -> dict:
    """PCK of predicted image joints [N, 17, 2] against ``collect_crops`` GT (protocol in the module doc)."""
    torso = torso_sizes(gt["keypoints"])
    scored_person = np.isfinite(torso)
    joints = (gt["crop_keypoints"][..., 2] > 0) & scored_person[:, None]
    error = np.linalg.norm(pred_image - gt["keypoints"][..., :2], axis=2)
    out = {"pose_joints": int(joints.sum()), "pose_unscored_persons": int((~scored_person).sum())}
    for t in thresholds:
        correct = joints & (error <= t * np.nan_to_num(torso, nan=0.0)[:, None])
        name = "pose_PCK" if t == 0.5 else f"pose_PCK_{t:g}"
        out[name] = float(correct.sum() / joints.sum()) if joints.any() else None
    return out


def evaluate_person_net(model_or_backend, data_dir: str | Path, frame_step: int = 5,
                        crop_size: Optional[tuple[int, int]] = None, expand: float = DEFAULT_EXPAND,
                        batch_size: int = 64, max_images: Optional[int] = None) -> dict:
    """Every PersonNet metric on ``data_dir`` (protocol in the module doc). crop_size: (width, height), taken from
    the model's config for a PersonNet."""
    if crop_size is None:
        if not isinstance(model_or_backend, torch.nn.Module) or not hasattr(model_or_backend, "config"):
            raise ValueError("crop_size (width, height) is required when evaluating a backend")
        h, w = model_or_backend.config.crop_size
        crop_size = (int(w), int(h))
    gt = collect_crops(data_dir, crop_size, frame_step, expand, max_images)
    pred = run_person_net(model_or_backend, gt["crops"], batch_size)
    metrics: dict = {"eval_crops": int(len(gt["crops"])), "eval_images": int(gt["images"])}
    metrics.update({"reid_mAP": None, "reid_rank1": None, "attr_acc": None, "parts_mIoU": None, "pose_PCK": None})
    if "embedding" in pred:
        labelled = gt["identities"] >= 1
        query = reid_split(gt["identities"], gt["cameras"], gt["visible"], gt["frames"]) & labelled
        gallery = labelled & ~query
        if query.any() and gallery.any():
            emb = pred["embedding"]
            metrics.update(evaluate_reid(emb[query], gt["identities"][query], gt["cameras"][query],
                                         emb[gallery], gt["identities"][gallery], gt["cameras"][gallery]))
    if "attributes" in pred:
        accuracy = AttributeAccuracy()
        accuracy.update_indices(gt["attributes"], pred["attributes"])
        metrics.update(accuracy.result("attr"))
    if "parts" in pred:
        confusion = PartConfusion()
        for g, p in zip(gt["parts"], pred["parts"]):
            confusion.update(g, p)
        metrics.update(confusion.result())
    if "keypoints" in pred:
        metrics.update(pose_pck(keypoints_to_image(pred["keypoints"], gt["affines"], crop_size), gt))
    return metrics
