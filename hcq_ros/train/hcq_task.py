"""HCQNet training task for ``hcq_ros.train.trainer.Trainer``: model/criterion from the config, endless augmented
batches (SynthHumans generated on the fly, or COCO), periodic COCO evaluation on a fixed validation folder.

Training YAML (see ``hcq_ros/train/configs/hcq_small.yaml``)::

    model: {kind: hcq, preset: hcqnet, profile: small, overrides: {...HCQConfig fields}}
    data:  {train: synth | coco:PATH, image_size: [W, H], batch_size: 8, workers: 1, scale_range: [0.3, 1.5],
            scene: {...SceneConfig fields}, length: 1000000000,
            val: synth | coco:PATH, val_images: 200, val_seed: 1000003, val_size: [W, H]}
    train: {...TrainSchedule fields}
"""
from __future__ import annotations

from pathlib import Path

import torch

from hcq_ros.data.sampler import StreamBatchSampler
from hcq_ros.data.torch_dataset import (DetectionDataset, collate_detection, loader_worker_options,
                                       open_detection_source)
from hcq_ros.data.transforms import TrainAugment
from hcq_ros.models.hcq import HCQConfig, HCQNet
from hcq_ros.train.losses import build_criterion


def hcq_config_from(model_cfg: dict) -> HCQConfig:
    return HCQConfig.preset(model_cfg.get("preset", "hcqnet"), model_cfg.get("profile", "small"),
                            **(model_cfg.get("overrides") or {}))


def synth_scene_config(scene: dict | None, size):
    from hcq_ros.data.synth import SceneConfig
    return SceneConfig(width=int(size[0]), height=int(size[1]), **(scene or {}))


def write_synth_validation(out: Path, images: int, seed: int, size, scene: dict | None = None) -> Path:
    """A fixed SynthHumans validation folder (COCO layout) under ``out``; reused when already complete."""
    from hcq_ros.data.formats.coco import CocoWriter
    from hcq_ros.data.synth import generate_image

    ann = out / "annotations" / "person_keypoints.json"
    if ann.exists():
        return out
    cfg = synth_scene_config(scene, size)
    import numpy as np
    with CocoWriter(out) as writer:
        for i in range(images):
            sample = generate_image(np.random.default_rng([seed, i]), cfg, image_id=i + 1)
            writer.add(sample, f"images/{i + 1:06d}.jpg", f"parts/{i + 1:06d}.png")
    return out


class HCQTask:
    HEADLINE_METRICS = ("bbox_AP", "segm_AP", "keypoints_AP", "keypoints_AP_nosmall")

    def __init__(self, config: dict, out_dir: str | Path):
        self.config, self.out = config, Path(out_dir)
        self.model_cfg = hcq_config_from(config["model"])
        self.data = dict(config.get("data") or {})
        self.seed = int((config.get("train") or {}).get("seed", 0))

    def build_model(self):
        return HCQNet(self.model_cfg)

    @staticmethod
    def architecture_mismatches(theirs: dict, ours: dict) -> list[str]:
        """Architecture fields that differ between two ``model:`` config dicts (loss settings may differ)."""
        return hcq_config_from(theirs).architecture_mismatches(hcq_config_from(ours))

    def build_criterion(self):
        return build_criterion(self.model_cfg)

    def checkpoint_extra(self) -> dict:
        from hcq_ros.models.hcq import CHECKPOINT_CONFIG_KEY
        return {CHECKPOINT_CONFIG_KEY: self.model_cfg.to_dict()}

    def batches(self, rank: int, world_size: int, start_iteration: int):
        d = self.data
        size = tuple(d.get("image_size", (256, 256)))
        spec = d.get("train", "synth")
        scene = synth_scene_config(d.get("scene"), d.get("source_size", size)) if spec == "synth" else None
        source = open_detection_source(spec, "train", scene_config=scene, seed=self.seed,
                                       length=int(d.get("length", 10**9)))
        augment = TrainAugment(size, scale_range=tuple(d.get("scale_range", (0.3, 1.5))))
        dataset = DetectionDataset(source, size, augment=augment, seed=self.seed)
        sampler = StreamBatchSampler(len(dataset), int(d.get("batch_size", 8)), seed=self.seed,
                                     shuffle=spec != "synth", start_iteration=start_iteration, rank=rank,
                                     world_size=world_size)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_detection,
                                             **loader_worker_options(int(d.get("workers", 1))))
        return iter(loader)

    def loss(self, model, criterion, batch) -> dict:
        images, targets = batch
        outputs = model(images)
        # Losses in float32: bf16 autocast covers the network; the matcher, RLE flow and dice need the range.
        with torch.autocast(images.device.type, enabled=False):
            outputs = _to_float(outputs)
            return criterion(outputs, targets)

    def validation_dir(self) -> tuple[Path, Path]:
        """(annotation json, image root) of the fixed validation set."""
        d = self.data
        spec = d.get("val", "synth")
        if spec == "synth":
            root = write_synth_validation(self.out / "val", int(d.get("val_images", 200)),
                                          int(d.get("val_seed", 1000003)), tuple(d.get("val_size", (256, 256))),
                                          d.get("scene"))
            return root / "annotations" / "person_keypoints.json", root
        if spec.startswith("coco:"):
            root = Path(spec[5:])
            real = root / "annotations" / "person_keypoints_val2017.json"
            if real.exists():
                return real, root / "val2017"
            return root / "annotations" / "person_keypoints.json", root
        raise ValueError(f"unknown validation source {spec!r}")

    def evaluate(self, model) -> dict:
        from hcq_ros.evaluation.detector import evaluate_detector
        ann, root = self.validation_dir()
        size = tuple(self.data.get("image_size", (256, 256)))
        return evaluate_detector(model, ann, root, input_size=size,
                                 max_images=int(self.data.get("val_images", 200)))


def _to_float(outputs):
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, dict):
        return {k: _to_float(v) for k, v in outputs.items()}
    if isinstance(outputs, list):
        return [_to_float(v) for v in outputs]
    return outputs
