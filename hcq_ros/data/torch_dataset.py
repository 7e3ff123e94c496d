"""Samples -> tensors for training the detector: image normalisation, target dicts, collation, data sources.

Model input contract (shared with the runtime's preprocessing): ``image_to_tensor`` turns uint8 [H, W, 3] RGB into
float32 [3, H, W] with ``(x / 255 - IMAGE_MEAN) / IMAGE_STD``.

Detector targets per image (what ``HCQCriterion`` reads):
    boxes [G, 4] normalised xyxy; keypoints [G, 17, 3] normalised xy + COCO visibility; masks [G, H, W] bool at
    input resolution; identities [G] long; image_size (W, H).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from hcq_ros.data.schema import Sample

IMAGE_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGE_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_NORM_SCALE = (1.0 / (255.0 * IMAGE_STD)).astype(np.float32)[:, None, None]
_NORM_OFFSET = (-IMAGE_MEAN / IMAGE_STD).astype(np.float32)[:, None, None]


def normalize_images(images: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, 3] RGB -> float32 [..., 3, H, W] normalised (C-contiguous)."""
    # (v / 255 - mean) / std as one multiply-add, in place on the channel-first copy (it runs on every frame).
    x = np.moveaxis(images, -1, -3).astype(np.float32, order="C")
    x *= _NORM_SCALE
    x += _NORM_OFFSET
    return x


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] RGB -> float32 [3, H, W] normalised."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3] RGB, got {image.dtype} {list(image.shape)}")
    return torch.from_numpy(normalize_images(image))


def sample_to_target(sample: Sample) -> dict[str, torch.Tensor]:
    """Sample -> detector target dict (see module docstring). Crowd annotations are left out."""
    w, h = sample.size
    persons = [p for p in sample.persons if not p.iscrowd]
    scale = np.array([w, h], dtype=np.float32)
    if persons:
        boxes = np.stack([p.box for p in persons]) / np.tile(scale, 2)
        kpts = np.stack([p.keypoints for p in persons]).copy()
        kpts[..., :2] /= scale
        masks = np.stack([p.mask if p.mask is not None else _box_mask(p.box, h, w) for p in persons])
    else:
        boxes, kpts, masks = np.zeros((0, 4), np.float32), np.zeros((0, 17, 3), np.float32), np.zeros((0, h, w), bool)
    return {
        "boxes": torch.from_numpy(boxes.astype(np.float32)).clamp_(0, 1),
        "keypoints": torch.from_numpy(kpts.astype(np.float32)),
        "masks": torch.from_numpy(masks),
        "identities": torch.tensor([p.identity for p in persons], dtype=torch.long),
        "image_size": torch.tensor([w, h]),
    }


def _box_mask(box: np.ndarray, h: int, w: int) -> np.ndarray:
    # Datasets without masks (MOT, MPII) still train the mask head on their boxes rather than on nothing.
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = np.round(box).astype(int)
    m[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = True
    return m


class SynthSource:
    """An endless-looking, reproducible stream of SynthHumans images: item i is generated from (seed, i)."""

    def __init__(self, scene_config, seed: int, length: int):
        self.scene_config, self.seed, self.length = scene_config, int(seed), int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Sample:
        from hcq_ros.data.synth import generate_image

        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        return generate_image(rng, self.scene_config, image_id=index)


class DetectionDataset(torch.utils.data.Dataset):
    """Wraps a sequence of Samples: optional augmentation (``TrainAugment``) or a fixed-size letterbox, then tensors.

    ``dataset[i]`` or ``dataset[(i, position)]`` (as ``StreamBatchSampler`` yields) -> (image [3, H, W] float32,
    target dict). Augmentation randomness comes from (seed, position), so a resumed run sees the same data as an
    uninterrupted one.
    """

    def __init__(self, source: Sequence[Sample], image_size: tuple[int, int], augment=None, seed: int = 0):
        self.source, self.image_size, self.augment, self.seed = source, tuple(image_size), augment, int(seed)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item):
        index, position = item if isinstance(item, tuple) else (item, item)
        sample = self.source[index]
        if self.augment is not None:
            sample = self.augment(sample, np.random.default_rng([self.seed, position]))
        elif sample.size != self.image_size:
            sample = letterbox_sample(sample, self.image_size)
        return image_to_tensor(sample.image), sample_to_target(sample)


def letterbox_sample(sample: Sample, size: tuple[int, int]) -> Sample:
    """Letterbox a whole Sample (image, masks, parts, boxes, keypoints) to ``size`` (W, H)."""
    from hcq_ros.data.transforms import letterbox

    image, scale, pad = letterbox(sample.image, size)
    persons = []
    for p in sample.persons:
        kp = p.keypoints.copy()
        on = kp[:, 2] > 0
        kp[on, :2] = kp[on, :2] * scale + np.asarray(pad, np.float32)
        mask = None if p.mask is None else letterbox(p.mask.astype(np.uint8), size, pad_value=0)[0] > 0
        box = p.box * scale + np.tile(np.asarray(pad, np.float32), 2)
        persons.append(replace(p, box=box, keypoints=kp, mask=mask))
    parts = None if sample.parts is None else letterbox(sample.parts, size, pad_value=0)[0]
    return replace(sample, image=image, persons=persons, parts=parts)


def collate_detection(batch):
    """[(image, target)] -> (images [B, 3, H, W], list of target dicts)."""
    images = torch.stack([b[0] for b in batch])
    return images, [b[1] for b in batch]


def open_detection_source(spec: str, split: str, scene_config=None, seed: int = 0, length: int = 10000):
    """``synth`` -> SynthSource; ``coco:PATH`` -> CocoPersonDataset over PATH's real COCO layout
    (annotations/person_keypoints_{split}2017.json, {split}2017/) or a SynthHumans folder
    (annotations/person_keypoints.json, file names relative to PATH)."""
    if spec == "synth":
        from hcq_ros.data.synth import SceneConfig

        return SynthSource(scene_config or SceneConfig(), seed, length)
    if spec.startswith("coco:"):
        from hcq_ros.data.formats.coco import CocoPersonDataset

        root = Path(spec[5:])
        real = root / "annotations" / f"person_keypoints_{split}2017.json"
        if real.exists():
            return CocoPersonDataset(real, root / f"{split}2017", load_parts=False)
        synth = root / "annotations" / "person_keypoints.json"
        if synth.exists():
            return CocoPersonDataset(synth, root)
        raise FileNotFoundError(f"no COCO annotations under {root}: looked for {real} and {synth}")
    raise ValueError(f"unknown data source {spec!r}: use 'synth' or 'coco:PATH'")


def single_thread_worker(_: int) -> None:
    """DataLoader worker_init_fn: one torch and one OpenCV thread per worker (the trainer owns the cores)."""
    import cv2

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def loader_worker_options(workers: int) -> dict:
    """DataLoader keyword arguments for ``workers`` background workers (0 = load in the training process).

    Workers are *spawned*, not forked: a forked child inherits OpenCV's thread-pool state, and its first
    ``cv2.setNumThreads`` then waits forever on a condition variable whose waiters only existed in the parent
    (seen in the PersonNet ablation, whose parent process had written thousands of images with OpenCV first).
    Spawning costs a few seconds once per run (persistent workers)."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers == 0:
        return {"num_workers": 0}
    return {"num_workers": workers, "persistent_workers": True, "prefetch_factor": 2,
            "worker_init_fn": single_thread_worker, "multiprocessing_context": "spawn"}
