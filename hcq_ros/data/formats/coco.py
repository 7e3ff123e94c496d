"""COCO person keypoints (+ instance masks, + optional part maps): ``CocoWriter`` and ``CocoPersonDataset``.

Real COCO layout (``image_root`` = the image folder, ``ann_file`` = the json)::

    coco/
      train2017/000000000009.jpg ...          image_root
      val2017/...
      annotations/person_keypoints_train2017.json   (instances_*.json works too: filtered to "person")
      annotations/person_keypoints_val2017.json

SynthHumans layout written by ``CocoWriter(root)``: ``root/<image_rel>``, ``root/<parts_rel>`` and
``root/annotations/<ann_name>``; read it back with ``CocoPersonDataset(root/"annotations"/ann_name, root)``.
Our json is plain COCO plus extra fields that pycocotools ignores: images carry ``sequence``, ``camera``,
``frame``, ``parts_file`` (part label PNG relative to the image root, or null); annotations carry
``track_id``, ``identity`` and ``attributes``. Coordinates are stored as our continuous pixel coordinates
rounded to 0.01 px (no half-pixel shift is applied to real COCO's integer keypoints either).
A person without a mask is written with ``segmentation: []`` and read back with ``mask=None``.

Messy real data is tolerated, counted in ``dataset.skipped``: boxes with width or height < 1 px are
dropped ("degenerate_box"); polygons with fewer than 3 points are dropped ("bad_polygon"; a person with
no usable polygon left gets ``mask=None``); annotations with ``num_keypoints == 0`` are KEPT (they label
boxes and masks); crowd regions (``iscrowd=1``, uncompressed RLE) are kept with ``iscrowd=1`` and zero
keypoints unless ``include_crowd=False``; grey JPEGs are read as RGB. Hard errors: json missing or
invalid (path + parser message), a keypoint list whose length is not 51 (annotation id), an image file
missing (path), a part PNG unreadable (path), an image whose size disagrees with the json (path).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from hcq_ros.data.schema import COCO_SKELETON, KEYPOINT_NAMES, NUM_KEYPOINTS, PersonAnnotation, Sample

from . import load_json, read_image, read_label_png, save_json, write_label_png
from . import write_image as write_image_file  # add() has a write_image flag

PERSON_CATEGORY = {
    "id": 1, "name": "person", "supercategory": "person",
    "keypoints": list(KEYPOINT_NAMES), "skeleton": [list(edge) for edge in COCO_SKELETON],
}


def _r2(values) -> list[float]:
    """Round to 0.01 px for compact json (the error is far below any annotation's accuracy)."""
    return [round(float(v), 2) for v in values]


def encode_mask(mask: np.ndarray) -> dict:
    """``bool [H, W]`` -> compressed RLE ``{"size": [H, W], "counts": str}`` (json-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


class CocoWriter:
    """Accumulates Samples into one COCO json; ``close()`` (or leaving the ``with`` block) writes it."""

    def __init__(self, root: Path, ann_name: str = "person_keypoints.json", jpeg_quality: int = 95):
        self.root = Path(root)
        self.ann_name = ann_name
        self.jpeg_quality = jpeg_quality
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self._image_ids: set[int] = set()
        self.closed = False

    def add(self, sample: Sample, image_rel: str, parts_rel: Optional[str] = None, write_image: bool = True) -> int:
        """Record ``sample`` (writing its image and part map); returns the COCO image id.

        The image id is ``sample.image_id`` when that is > 0, else the next free id.
        """
        if self.closed:
            raise RuntimeError("CocoWriter.add after close()")
        image_id = int(sample.image_id) if sample.image_id > 0 else max(self._image_ids, default=0) + 1
        if image_id in self._image_ids:
            raise ValueError(f"duplicate image id {image_id} ({image_rel})")
        self._image_ids.add(image_id)
        if write_image:
            write_image_file(self.root / image_rel, sample.image, self.jpeg_quality)
        if parts_rel is not None:
            if sample.parts is None:
                raise ValueError(f"{image_rel}: parts_rel given but sample.parts is None")
            write_label_png(self.root / parts_rel, sample.parts)
        width, height = sample.size
        self.images.append({
            "id": image_id, "file_name": image_rel, "width": width, "height": height,
            "sequence": sample.sequence, "camera": int(sample.camera), "frame": int(sample.frame),
            "parts_file": parts_rel,
        })
        for person in sample.persons:
            x0, y0, x1, y1 = (float(v) for v in person.box)
            keypoints = person.keypoints
            self.annotations.append({
                "id": len(self.annotations) + 1, "image_id": image_id, "category_id": 1,
                "bbox": _r2([x0, y0, x1 - x0, y1 - y0]), "area": round(person.area, 2),
                "iscrowd": int(person.iscrowd),
                "segmentation": encode_mask(person.mask) if person.mask is not None else [],
                "keypoints": [v for xyv in keypoints for v in (*_r2(xyv[:2]), int(xyv[2]))],
                "num_keypoints": int((keypoints[:, 2] > 0).sum()),
                "track_id": int(person.track_id), "identity": int(person.identity),
                "attributes": dict(person.attributes),
            })
        return image_id

    def close(self) -> Path:
        """Write ``root/annotations/<ann_name>``; returns its path. Idempotent."""
        path = self.root / "annotations" / self.ann_name
        if not self.closed:
            save_json(path, {
                "info": {"description": "hcq_ros COCO person export", "version": "1.0"},
                "licenses": [], "images": self.images, "annotations": self.annotations,
                "categories": [PERSON_CATEGORY],
            })
            self.closed = True
        return path

    def __enter__(self) -> "CocoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _find_person_category(data: dict, ann_file: Path) -> int:
    for cat in data.get("categories", []):
        if cat.get("name") == "person":
            return int(cat["id"])
    raise ValueError(f"{ann_file}: no category named 'person' in categories")


class CocoPersonDataset:
    """COCO person annotations as Samples. ``len(ds)``, ``ds[i] -> Sample``, ``ds.image_ids``, ``ds.coco``.

    ``skip_empty=True`` keeps only images with at least one (non-crowd) person.
    """

    def __init__(self, ann_file: str | Path, image_root: str | Path, load_parts: bool = True,
                 include_crowd: bool = True, skip_empty: bool = False):
        self.ann_file = Path(ann_file)
        self.image_root = Path(image_root)
        self.load_parts = load_parts
        self.include_crowd = include_crowd
        data = load_json(self.ann_file)
        for key in ("images", "annotations", "categories"):
            if key not in data or not isinstance(data[key], list):
                raise ValueError(f"{self.ann_file}: missing or non-list '{key}'")
        self.category_id = _find_person_category(data, self.ann_file)
        self.skipped: dict[str, int] = {"degenerate_box": 0, "bad_polygon": 0}
        for ann in data["annotations"]:
            if ann.get("category_id") == self.category_id and "keypoints" in ann:
                if len(ann["keypoints"]) != 3 * NUM_KEYPOINTS:
                    raise ValueError(f"{self.ann_file}: annotation id {ann.get('id')} (image {ann.get('image_id')}) "
                                     f"has {len(ann['keypoints'])} keypoint values, expected {3 * NUM_KEYPOINTS}")
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            self.coco.createIndex()
        image_ids = sorted(self.coco.imgs)
        if skip_empty:
            image_ids = [i for i in image_ids
                         if self.coco.getAnnIds(imgIds=[i], catIds=[self.category_id], iscrowd=False)]
        self.image_ids: list[int] = image_ids

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        image_path = self.image_root / info["file_name"]
        image = read_image(image_path)
        height, width = image.shape[:2]
        if (info.get("width", width), info.get("height", height)) != (width, height):
            raise ValueError(f"{image_path}: image is {width}x{height} but the json says "
                             f"{info.get('width')}x{info.get('height')}")
        persons = []
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id], catIds=[self.category_id])):
            person = self._person(ann, height, width)
            if person is not None:
                persons.append(person)
        parts = None
        if self.load_parts and info.get("parts_file"):
            parts = read_label_png(self.image_root / info["parts_file"])
            if parts.shape != (height, width):
                raise ValueError(f"{self.image_root / info['parts_file']}: part map is {parts.shape[1]}x"
                                 f"{parts.shape[0]}, image is {width}x{height}")
        return Sample(image=image, persons=persons, parts=parts, image_id=image_id, file_name=info["file_name"],
                      sequence=info.get("sequence", ""), camera=int(info.get("camera", 0)),
                      frame=int(info.get("frame", 0)))

    def _person(self, ann: dict, height: int, width: int) -> Optional[PersonAnnotation]:
        iscrowd = int(ann.get("iscrowd", 0))
        if iscrowd and not self.include_crowd:
            return None
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w < 1 or h < 1:
            self.skipped["degenerate_box"] += 1
            return None
        keypoints = np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32)
        if "keypoints" in ann:
            keypoints = np.asarray(ann["keypoints"], dtype=np.float32).reshape(NUM_KEYPOINTS, 3)
            keypoints[keypoints[:, 2] == 0, :2] = 0.0
        return PersonAnnotation(
            box=[x, y, x + w, y + h], mask=self._mask(ann, height, width), keypoints=keypoints,
            identity=int(ann.get("identity", -1)), track_id=int(ann.get("track_id", -1)),
            attributes=dict(ann.get("attributes", {})), iscrowd=iscrowd)

    def _mask(self, ann: dict, height: int, width: int) -> Optional[np.ndarray]:
        """Decode polygons / RLE (compressed or not) with pycocotools; None when there is no segmentation."""
        segm = ann.get("segmentation")
        if not segm:
            return None
        if isinstance(segm, list):  # polygons: drop those with < 3 points (present in real COCO)
            polygons = [p for p in segm if len(p) >= 6]
            self.skipped["bad_polygon"] += len(segm) - len(polygons)
            if not polygons:
                return None
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(segm.get("counts"), list):  # uncompressed RLE (crowd regions)
            rle = mask_utils.frPyObjects(segm, height, width)
        else:
            rle = segm
        with warnings.catch_warnings():  # pycocotools' Cython decode trips a numpy-2 DeprecationWarning
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*__array__")
            return mask_utils.decode(rle).astype(bool)
