"""Person-crop datasets for PersonNet: SynthHumans identity crops generated on the fly, and readers over folders in
the real formats, each giving only the targets its format has (DESIGN.md §6, multi-dataset training).

| source              | crops from                                 | targets                                   |
|---------------------|--------------------------------------------|-------------------------------------------|
| ``SynthCropSource`` | a scene rendered around one pool identity  | identity, attributes, parts, keypoints    |
| ``MarketCropSource``| Market-1501 ``bounding_box_train`` crops   | identity, attributes                      |
| ``LipCropSource``   | LIP single-person images (box = the mask)  | parts, keypoints (12 limb joints)         |
| ``MpiiCropSource``  | MPII images, one random annotated person   | keypoints (12 limb joints)                |

Every crop goes through the product's crop function (``hcq_ros.data.crops.crop_persons``) on a jittered box
(``crops.jitter_boxes``, detector-like noise), then a random horizontal flip (left/right joints and parts
swapped). Crop targets (``CropTargets``; what ``PersonCriterion`` reads after ``collate_crops``):

- ``identity``: class index of the identity classifier (source label + the source's ``label_offset``), -1 none;
- ``attributes``: int64 [A] ``schema.attributes_to_indices`` (-1 = not labelled);
- ``parts``: uint8 [H, W] labels of THIS person on the crop grid: other annotated people's pixels and pixels
  outside the image are 255 (ignored), the rest background — so a part map never penalises a neighbour's limb;
- ``keypoints``: float32 [17, 3] crop-normalised xy + COCO visibility, 0 outside the crop (``crops.crop_keypoints``).

SynthHumans identity scenes: the target identity (from an ``IdentityPool``) stands in a random pose and
orientation, its full-body height log-uniform in ``person_height`` pixels, seen from eye level or a surveillance
height; up to ``max_distractors`` other pool identities stand beside, in front (occluding) or behind it, and a
foreground object occludes it with ``occluder_prob``. The scene image is only as large as the crop needs, so
small people are cheap. Everything is deterministic from (seed, identity, position).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from hcq_ros.data.crops import (DEFAULT_CROP_SIZE, DEFAULT_EXPAND, crop_keypoints, crop_persons, jitter_boxes,
                                warp_map_to_crops)
from hcq_ros.data.schema import ATTRIBUTE_NAMES, KEYPOINT_FLIP, NUM_KEYPOINTS, PART_FLIP, attributes_to_indices
from hcq_ros.data.torch_dataset import image_to_tensor

IGNORE = 255
_PART_FLIP_LUT = np.arange(256, dtype=np.uint8)
_PART_FLIP_LUT[:len(PART_FLIP)] = PART_FLIP


@dataclass
class CropTargets:
    """One training crop and its targets (see the module docstring); absent targets are None."""
    crop: np.ndarray                               # uint8 [H, W, 3] RGB
    identity: int = -1
    attributes: Optional[np.ndarray] = None        # int64 [A]
    parts: Optional[np.ndarray] = None             # uint8 [H, W]
    keypoints: Optional[np.ndarray] = None         # float32 [17, 3]


@dataclass
class CropAugment:
    """Box jitter (``crops.jitter_boxes`` sigmas; 0 = none), crop framing and flip probability."""
    crop_size: tuple[int, int] = DEFAULT_CROP_SIZE      # (width, height)
    expand: float = DEFAULT_EXPAND
    shift: float = 0.06
    scale: float = 0.08
    aspect: float = 0.08
    flip_prob: float = 0.5

    @classmethod
    def from_dict(cls, data: dict | None, **defaults) -> "CropAugment":
        data = {**defaults, **(data or {})}
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown crop augmentation keys {unknown}")
        if "crop_size" in data:
            data["crop_size"] = tuple(int(v) for v in data["crop_size"])
        return cls(**data)


def person_part_targets(parts: np.ndarray, owner: np.ndarray, target: int, affines: np.ndarray,
                        crop_size) -> np.ndarray:
    """Part labels of person ``target`` on each crop grid: uint8 [N, H, W].

    parts: uint8 [H, W] image part map; owner: uint8 [H, W] annotated person index + 1 per pixel (0 = nobody);
    target: the person's index (0-based). Other people's pixels and pixels outside the image -> IGNORE.
    """
    labels = warp_map_to_crops(parts, affines, crop_size, border_value=IGNORE)
    owners = warp_map_to_crops(owner, affines, crop_size, border_value=IGNORE)
    other = (owners != 0) & (owners != target + 1) & (owners != IGNORE)
    labels[other] = IGNORE
    labels[owners == IGNORE] = IGNORE
    return labels


def owner_map(masks: list[Optional[np.ndarray]], shape: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W]: index + 1 of the person whose mask covers each pixel (0 = nobody; at most 254 people)."""
    owner = np.zeros(shape, dtype=np.uint8)
    for k, mask in enumerate(masks[:254]):
        if mask is not None:
            owner[mask] = k + 1
    return owner


def make_crop(image: np.ndarray, box: np.ndarray, rng: np.random.Generator, augment: CropAugment,
              keypoints: Optional[np.ndarray] = None, parts: Optional[np.ndarray] = None,
              owner: Optional[np.ndarray] = None, target: int = 0, identity: int = -1,
              attributes: Optional[np.ndarray] = None) -> CropTargets:
    """Jitter ``box`` (xyxy), crop image (+ keypoints [17, 3] image px, parts [H, W] with owner map), flip."""
    box = np.asarray(box, dtype=np.float32).reshape(1, 4)
    if augment.shift or augment.scale or augment.aspect:
        box = jitter_boxes(box, rng, augment.shift, augment.scale, augment.aspect)
    crops, affines = crop_persons(image, box, augment.crop_size, augment.expand)
    crop = crops[0]
    kp = crop_keypoints(keypoints[None], affines, augment.crop_size)[0] if keypoints is not None else None
    part_crop = None
    if parts is not None:
        owner = owner if owner is not None else np.zeros(parts.shape, np.uint8)
        part_crop = person_part_targets(parts, owner, target, affines, augment.crop_size)[0]
    if rng.random() < augment.flip_prob:
        crop = np.ascontiguousarray(crop[:, ::-1])
        if part_crop is not None:
            part_crop = np.ascontiguousarray(_PART_FLIP_LUT[part_crop[:, ::-1]])
        if kp is not None:
            kp = kp[list(KEYPOINT_FLIP)].copy()
            labelled = kp[:, 2] > 0
            kp[labelled, 0] = 1.0 - kp[labelled, 0]
    return CropTargets(crop, identity, attributes, part_crop, kp)


# ------------------------------------------------------------------------------------------- SynthHumans
@dataclass
class SynthCropConfig:
    """SynthHumans identity crops. identities: pool size; pool_seed: the pool (use another seed than any
    evaluation set, so that evaluation identities are held out); person_height: target full-body pixel height
    range; context: scene height / person height range; distance: camera-to-person ground distance range
    (metres, log-uniform); size: nominal dataset size (multi-source weighting)."""
    identities: int = 1500
    pool_seed: int = 7919
    person_height: tuple[float, float] = (36.0, 170.0)
    context: tuple[float, float] = (1.3, 1.9)
    distance: tuple[float, float] = (3.0, 14.0)
    eye_level_prob: float = 0.3
    max_distractors: int = 3
    distractor_prob: float = 0.6
    occluder_prob: float = 0.25
    blur_prob: float = 0.3
    noise_max: float = 8.0
    child_prob: float = 0.2
    size: int = 100000

    @classmethod
    def from_dict(cls, data: dict | None) -> "SynthCropConfig":
        data = dict(data or {})
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown synth crop keys {unknown}")
        for key in ("person_height", "context", "distance"):
            if key in data:
                data[key] = tuple(float(v) for v in data[key])
        config = cls(**data)
        if config.identities < 2:
            raise ValueError(f"synth crops need >= 2 identities, got {config.identities}")
        return config


def render_identity_scene(rng: np.random.Generator, pool, identity: int, cfg: SynthCropConfig):
    """Render one scene around pool ``identity``: returns (Sample, index of the target in sample.persons), or
    (Sample, -1) if the target ended up invisible (fully occluded)."""
    from hcq_ros.data.schema import Sample
    from hcq_ros.data.synth.background import make_background, object_prims, seat_prims
    from hcq_ros.data.synth.camera import Camera
    from hcq_ros.data.synth.render import PlacedPerson, finish_image, render_scene, sample_lighting
    from hcq_ros.data.synth.skeleton import J, forward_kinematics, place, random_pose

    target = pool.get(identity)
    height_px = math.exp(rng.uniform(*np.log(cfg.person_height)))
    img_h = max(48, int(round(height_px * rng.uniform(*cfg.context))))
    img_w = max(48, int(round(img_h * rng.uniform(0.55, 1.1))))
    # A realistic viewing distance, then the focal length that gives the wanted pixel height (a small image
    # of a far person is a narrow field of view, not a close-up from above).
    cam_h = float(rng.uniform(1.2, 1.9) if rng.random() < cfg.eye_level_prob else rng.uniform(2.2, 5.0))
    body_h = target.body.height
    ground_d = math.exp(rng.uniform(*np.log(cfg.distance)))
    pitch = math.atan2(cam_h - 0.5 * body_h, ground_d) + float(rng.normal(0.0, 0.03))
    focal = height_px * math.hypot(ground_d, cam_h - 0.5 * body_h) / body_h
    fov = float(np.clip(math.degrees(2 * math.atan(0.5 * img_w / focal)), 5.0, 170.0))
    camera = Camera.look(img_w, img_h, fov, cam_h, 0.0, pitch, float(rng.uniform(-0.04, 0.04)))
    lighting = sample_lighting(rng, cfg.blur_prob, cfg.noise_max)
    canvas = make_background(rng, camera, (2, 8), 0.35)
    focal = 0.5 * img_w / math.tan(math.radians(0.5 * fov))
    lateral = float(rng.normal(0.0, 0.06)) * ground_d * img_w / focal
    spots = [(target, lateral, ground_d)]
    if rng.random() < cfg.distractor_prob:
        for _ in range(int(rng.integers(1, cfg.max_distractors + 1))):
            other = int(rng.integers(1, len(pool)))
            other += other >= identity                  # any pool identity but the target
            d = max(0.6 * ground_d, ground_d + float(rng.uniform(-2.5, 4.0)))
            spots.append((pool.get(other), lateral + float(rng.uniform(-1.6, 1.6)), d))
    people, scenery = [], []
    for ident, x, d in spots:
        pose = random_pose(rng)
        joints, frames = forward_kinematics(ident.body, pose)
        joints, frames = place(joints, frames, (x, d), float(rng.uniform(-math.pi, math.pi)))
        people.append(PlacedPerson(ident, joints, frames))
        if pose.seated:
            color = tuple(int(c) for c in rng.uniform(40, 200, 3))
            scenery += seat_prims(joints[J["pelvis"]], frames["pelvis"][0], frames["pelvis"][2], ident.body.hip_half,
                                  ident.body.thigh_radius, camera, lighting.direction, color)
    if rng.random() < cfg.occluder_prob:
        t = float(rng.uniform(0.45, 0.85))
        ground = np.array([lateral * t + float(rng.uniform(-0.5, 0.5)), ground_d * t])
        scenery += object_prims(rng, camera, ground, lighting.direction, order=1000)
    canvas, persons, parts = render_scene(canvas, people, scenery, camera, lighting.direction, 16)
    image = finish_image(canvas, lighting, rng)
    sample = Sample(image=image, persons=persons, parts=parts)
    found = [k for k, p in enumerate(persons) if p.identity == identity]
    return sample, (found[0] if found else -1)


class SynthCropSource:
    """Identity crops rendered on demand. ``identities()``: pool ids 1..N; ``get(identity, position)``.

    Identity labels are ``identity - 1 + label_offset`` (classifier indices 0..N-1).
    """
    has = ("identity", "attributes", "parts", "keypoints")

    def __init__(self, config: SynthCropConfig, augment: CropAugment, seed: int = 0, label_offset: int = 0,
                 max_attempts: int = 6):
        from hcq_ros.data.synth import IdentityPool

        self.config, self.augment, self.seed = config, augment, int(seed)
        self.pool = IdentityPool(config.identities, config.pool_seed, config.child_prob)
        self.label_offset, self.max_attempts = label_offset, max_attempts

    def __len__(self) -> int:
        return self.config.size

    @property
    def num_identities(self) -> int:
        return self.config.identities

    def identity_ids(self) -> list[int]:
        return self.pool.ids

    def get(self, identity: int, position: int) -> CropTargets:
        rng = np.random.default_rng([self.seed, identity, position])
        cfg = self.config
        for attempt in range(self.max_attempts):
            if attempt == self.max_attempts - 1:        # last try: nobody and nothing in front of the target
                cfg = SynthCropConfig(**{**cfg.__dict__, "distractor_prob": 0.0, "occluder_prob": 0.0})
            sample, k = render_identity_scene(rng, self.pool, identity, cfg)
            if k >= 0 and (sample.persons[k].keypoints[:, 2] == 2).sum() >= 4:
                break
        if k < 0:
            raise RuntimeError(f"identity {identity} (position {position}) never became visible in "
                               f"{self.max_attempts} scenes")
        person = sample.persons[k]
        owner = owner_map([p.mask for p in sample.persons], sample.parts.shape)
        return make_crop(sample.image, person.box, rng, self.augment, person.keypoints, sample.parts, owner, k,
                         identity - 1 + self.label_offset, attributes_to_indices(person.attributes))


# ------------------------------------------------------------------------------------------- real formats
class MarketCropSource:
    """Market-1501 ``bounding_box_train`` (ReID + attributes only). Each file is a whole person crop: its box is
    the full image, framed with ``augment.expand`` (1.0 in the configs: Market boxes already have context).
    Identity labels: the sorted training identities -> ``label_offset + 0..N-1`` (distractors 0 are skipped)."""
    has = ("identity", "attributes")

    def __init__(self, root: str | Path, augment: CropAugment, seed: int = 0, label_offset: int = 0,
                 split: str = "train"):
        from hcq_ros.data.formats import read_market

        self.root, self.augment, self.seed = Path(root), augment, int(seed)
        self.items = [it for it in read_market(self.root, split) if it.identity > 0]
        if not self.items:
            raise ValueError(f"{self.root}: no labelled Market-1501 crops in split {split!r}")
        self.label_of = {pid: label_offset + i for i, pid in enumerate(sorted({it.identity for it in self.items}))}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_identities(self) -> int:
        return len(self.label_of)

    def identities(self) -> np.ndarray:
        """int64 [len(self)]: the identity label of every item (for P x K sampling)."""
        return np.array([self.label_of[it.identity] for it in self.items], dtype=np.int64)

    def get(self, index: int, position: int) -> CropTargets:
        from hcq_ros.data.formats import read_image

        item = self.items[index]
        image = read_image(item.path)
        rng = np.random.default_rng([self.seed, index, position])
        attributes = attributes_to_indices(item.attributes) if item.attributes else None
        return make_crop(image, np.array([0, 0, image.shape[1], image.shape[0]], np.float32), rng, self.augment,
                         identity=self.label_of[item.identity], attributes=attributes)


class LipCropSource:
    """LIP (parts + pose only): one person per image, boxed by its parsing mask (``LipDataset``)."""
    has = ("parts", "keypoints")

    def __init__(self, root: str | Path, augment: CropAugment, seed: int = 0, split: str = "train"):
        from hcq_ros.data.formats import LipDataset

        self.dataset, self.augment, self.seed = LipDataset(root, split), augment, int(seed)
        if len(self.dataset) == 0:
            raise ValueError(f"{root}: no LIP images in split {split!r}")

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, index: int, position: int) -> CropTargets:
        sample = self.dataset[index]
        person = sample.persons[0]
        rng = np.random.default_rng([self.seed, index, position])
        return make_crop(sample.image, person.box, rng, self.augment, person.keypoints, sample.parts)


class MpiiCropSource:
    """MPII (pose only): item = image; each draw crops one of its annotated people (chosen from the position)."""
    has = ("keypoints",)

    def __init__(self, root: str | Path, augment: CropAugment, seed: int = 0, ann_file: str = "annot/train.json"):
        from hcq_ros.data.formats import MpiiDataset

        self.dataset, self.augment, self.seed = MpiiDataset(root, ann_file), augment, int(seed)
        if len(self.dataset) == 0:
            raise ValueError(f"{self.dataset.ann_file}: no MPII person entries")

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, index: int, position: int) -> CropTargets:
        sample = self.dataset[index]
        rng = np.random.default_rng([self.seed, index, position])
        if not sample.persons:
            raise ValueError(f"MPII image {sample.file_name}: no usable person annotation")
        person = sample.persons[int(rng.integers(len(sample.persons)))]
        return make_crop(sample.image, person.box, rng, self.augment, person.keypoints)


# ------------------------------------------------------------------------------------------- torch side
class PersonCropDataset(torch.utils.data.Dataset):
    """Several crop sources behind one index space: ``dataset[(source, index, position)] -> CropTargets``
    (``index`` is the pool identity for ``SynthCropSource``, an item index otherwise; ``position`` seeds the
    augmentation, so a resumed run sees the same crops)."""

    def __init__(self, sources: list):
        if not sources:
            raise ValueError("PersonCropDataset needs at least one source")
        self.sources = list(sources)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __getitem__(self, item) -> CropTargets:
        source, index, position = item
        return self.sources[source].get(int(index), int(position))


def collate_crops(batch: list[CropTargets]) -> tuple[torch.Tensor, dict]:
    """-> (crops float32 [B, 3, H, W] normalised, targets) with ``PersonCriterion``'s keys: identities [B],
    attributes [B, A], parts [B, H, W] long, keypoints [B, 17, 3]. A target no crop has is None; crops lacking a
    target others have get the ignore value (-1, 255, visibility 0)."""
    crops = torch.stack([image_to_tensor(b.crop) for b in batch])
    b_size, (h, w) = len(batch), batch[0].crop.shape[:2]
    targets: dict = {"identities": None, "attributes": None, "parts": None, "keypoints": None}
    if any(b.identity >= 0 for b in batch):
        targets["identities"] = torch.tensor([b.identity for b in batch], dtype=torch.long)
    if any(b.attributes is not None for b in batch):
        attrs = np.full((b_size, len(ATTRIBUTE_NAMES)), -1, dtype=np.int64)
        for i, b in enumerate(batch):
            if b.attributes is not None:
                attrs[i] = b.attributes
        targets["attributes"] = torch.from_numpy(attrs)
    if any(b.parts is not None for b in batch):
        parts = np.full((b_size, h, w), IGNORE, dtype=np.uint8)
        for i, b in enumerate(batch):
            if b.parts is not None:
                parts[i] = b.parts
        targets["parts"] = torch.from_numpy(parts).long()
    if any(b.keypoints is not None for b in batch):
        kps = np.zeros((b_size, NUM_KEYPOINTS, 3), dtype=np.float32)
        for i, b in enumerate(batch):
            if b.keypoints is not None:
                kps[i] = b.keypoints
        targets["keypoints"] = torch.from_numpy(kps)
    return crops, targets
