"""Prediction file formats (the public contract model/pipeline code writes) and a GT-as-predictions writer.

Ground truth is a dataset folder ``DIR`` (SynthHumans layout)::

    DIR/annotations/person_keypoints.json   COCO person keypoints; images carry "parts_file" (or null),
                                            annotations "track_id", "identity", "attributes"
    DIR/parts/...png                        part label maps (paths given by "parts_file")
    DIR/mot/{seq}/gt/gt.txt + seqinfo.ini   MOTChallenge ground truth
    DIR/market/{bounding_box_train,bounding_box_test,query}/*.jpg + market/attributes.json

Predictions for ``DIR`` — each ``--pred PATH`` is one of these, or a folder holding several of them under
exactly these names (what ``write_ground_truth_as_predictions`` writes):

``detections.json`` — COCO results list, one entry per detected person::

    {"image_id": int,               an image id of DIR's COCO json (unknown ids are an error)
     "category_id": 1,              person (entries of other categories are ignored and counted)
     "bbox": [x, y, w, h],          pixels, x/y of the top-left corner
     "score": float,
     "segmentation": {"size": [H, W], "counts": str},   optional, compressed RLE of the full-image mask
     "keypoints": [x1, y1, s1, ..., x17, y17, s17],      optional, 51 numbers, COCO order, s = confidence
     "track_id": int,               optional, informative (tracking is scored from mot/)
     "attributes": {name: value}}   optional, names and values of schema.ATTRIBUTES

  segmentation / keypoints must be given for every entry or for none. Scored: COCO bbox/segm/keypoints AP
  (``coco_eval``) and, when any entry has "attributes", attribute accuracy (``attributes``).

``parts/`` — single-channel uint8 PNGs (labels of schema.PART_NAMES, full image size), one per GT image
  with a ``parts_file``, at that path without its leading ``parts/``: GT ``parts/000001.png`` ->
  ``PRED/000001.png``, ``parts/seq01/000001.png`` -> ``PRED/seq01/000001.png``. Scored: ``parts`` mIoU.

``reid.npz`` — ``names``: str [N] crop paths relative to ``DIR/market`` (``query/0001_c1s1_000001_00.jpg``,
  ``bounding_box_test/...``); ``embeddings``: float [N, D] (L2-normalised when scored); optional
  ``attributes``: int [N, A] class indices in ``attribute_names`` order (str [A], must equal
  schema.ATTRIBUTE_NAMES), -1 = not predicted. Every query and gallery crop needs a row. Scored: ReID
  mAP/CMC (``reid``) and crop attribute accuracy.

``mot/`` — ``{seq}.txt`` per GT sequence, MOTChallenge results rows ``frame,id,x,y,w,h,conf,-1,-1,-1``
  (comma-separated, 1-based frames, pixel xywh; columns after h are ignored; an empty file = no tracks).
  Scored: MOT metrics (``mot``).
"""
from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from pycocotools import mask as mask_utils

from hcq_ros.data.formats import load_json, read_market, save_json
from hcq_ros.data.formats.market import SPLIT_DIRS
from hcq_ros.data.formats.mot import read_mot_sequence
from hcq_ros.data.schema import ATTRIBUTE_NAMES, NUM_KEYPOINTS, attributes_to_indices

from .attributes import indices_from_names
from .coco_eval import load_coco_gt, person_category_id
from .parts import prediction_path

GT_ANNOTATIONS = "annotations/person_keypoints.json"
GT_MOT = "mot"
GT_MARKET = "market"
KINDS = {"detections": "detections.json", "parts": "parts", "reid": "reid.npz", "mot": "mot"}


def load_detections(path: str | Path) -> list[dict]:
    """The COCO results list in ``path``; FileNotFoundError / ValueError naming the path."""
    data = load_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a COCO results list, got a json {type(data).__name__}")
    return data


@dataclass
class ReidPredictions:
    """names: str [N] crop paths relative to the market folder; embeddings: float32 [N, D];
    attributes: int64 [N, len(ATTRIBUTE_NAMES)] or None."""
    names: list[str]
    embeddings: np.ndarray
    attributes: Optional[np.ndarray] = None


def load_reid_npz(path: str | Path) -> ReidPredictions:
    """Read and check a ``reid.npz`` (see the module docstring); errors name the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ReID prediction file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot read npz (needs plain, non-object arrays): {e}") from e
    for key in ("names", "embeddings"):
        if key not in arrays:
            raise ValueError(f"{path}: missing array {key!r} (has {sorted(arrays)})")
    names, emb = arrays["names"], arrays["embeddings"]
    if names.ndim != 1 or names.dtype.kind != "U":
        raise ValueError(f"{path}: 'names' must be a 1-D string array, got {names.dtype} {list(names.shape)}")
    if emb.ndim != 2 or emb.shape[0] != len(names) or emb.dtype.kind not in "fiu":
        raise ValueError(f"{path}: 'embeddings' must be numeric [{len(names)}, D], got {emb.dtype} {list(emb.shape)}")
    if not np.isfinite(emb).all():
        raise ValueError(f"{path}: 'embeddings' contains NaN or inf")
    if len(set(names.tolist())) != len(names):
        raise ValueError(f"{path}: duplicate crop names")
    attrs = None
    if "attributes" in arrays:
        attrs = indices_from_names(arrays["attributes"], arrays.get("attribute_names"), str(path))
        if len(attrs) != len(names):
            raise ValueError(f"{path}: {len(attrs)} attribute rows for {len(names)} names")
    return ReidPredictions(names=names.tolist(), embeddings=emb.astype(np.float32), attributes=attrs)


def load_mot_results(path: str | Path) -> np.ndarray:
    """``float64 [N, 6]`` rows (frame, id, x, y, w, h) of a MOTChallenge results file; empty file -> [0, 6]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MOT result file not found: {path}")
    if not path.read_text(encoding="utf-8").strip():
        return np.zeros((0, 6))
    try:
        table = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: malformed MOT results (expected frame,id,x,y,w,h,...): {e}") from e
    if table.shape[1] < 6:
        raise ValueError(f"{path}: MOT result rows need at least 6 columns (frame,id,x,y,w,h), got {table.shape[1]}")
    table = table[:, :6]
    if not np.isfinite(table).all() or (table[:, 0] < 1).any():
        raise ValueError(f"{path}: MOT results need finite values and 1-based frames")
    return table


def find_predictions(path: str | Path) -> dict[str, Path]:
    """{kind: path} for one ``--pred PATH``: kinds ``detections``, ``parts``, ``reid``, ``mot``.

    A ``.json`` file is detections, a ``.npz`` ReID; a folder holding any of ``detections.json``,
    ``parts/``, ``reid.npz``, ``mot/`` is a bundle of those; otherwise a folder of ``*.txt`` is MOT results
    and a folder with ``*.png`` (at any depth) is part maps.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prediction path not found: {path}")
    if path.is_file():
        if path.suffix == ".json":
            return {"detections": path}
        if path.suffix == ".npz":
            return {"reid": path}
        raise ValueError(f"{path}: unknown prediction file type (expected .json detections or .npz ReID)")
    bundle = {kind: path / name for kind, name in KINDS.items() if (path / name).exists()}
    if bundle:
        return bundle
    if any(path.glob("*.txt")):
        return {"mot": path}
    if any(path.rglob("*.png")):
        return {"parts": path}
    raise ValueError(f"{path}: folder holds no predictions (detections.json, reid.npz, parts/, mot/, "
                     f"*.txt MOT results or *.png part maps)")


def _rle_of(coco, ann: dict) -> dict:
    """Compressed RLE (json-ready) of a GT annotation's mask; its box when it has no segmentation."""
    info = coco.imgs[ann["image_id"]]
    if ann.get("segmentation"):
        rle = coco.annToRLE(ann)
    else:
        rle = mask_utils.frPyObjects([list(ann["bbox"])], info["height"], info["width"])[0]
    counts = rle["counts"]
    return {"size": [int(s) for s in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def _detections_from_gt(coco) -> list[dict]:
    person = person_category_id(coco)
    out = []
    for ann in coco.loadAnns(coco.getAnnIds(catIds=[person], iscrowd=False)):
        kps = np.asarray(ann.get("keypoints", [0] * 3 * NUM_KEYPOINTS), dtype=np.float64).reshape(NUM_KEYPOINTS, 3)
        labelled = kps[:, 2] > 0
        if labelled.any():
            kps[:, 2] = labelled.astype(np.float64)
        else:  # no labelled joint: put them at the box centre, where COCOeval's OKS matches the (ignored) GT
            x, y, w, h = ann["bbox"]
            kps[:] = (x + w / 2, y + h / 2, 0.0)
        entry = {"image_id": ann["image_id"], "category_id": person, "bbox": [float(v) for v in ann["bbox"]],
                 "score": 1.0, "segmentation": _rle_of(coco, ann), "keypoints": kps.reshape(-1).tolist()}
        if "track_id" in ann:
            entry["track_id"] = int(ann["track_id"])
        if ann.get("attributes"):
            entry["attributes"] = dict(ann["attributes"])
        out.append(entry)
    return out


def _mot_from_gt(mot_dir: Path, out_dir: Path) -> list[Path]:
    written = []
    for seq_dir in sorted(p for p in mot_dir.iterdir() if (p / "seqinfo.ini").is_file()):
        gt = read_mot_sequence(seq_dir).gt
        lines = [f"{r['frame']},{r['id']},{r['x']:.6g},{r['y']:.6g},{r['w']:.6g},{r['h']:.6g},1,-1,-1,-1\n"
                 for r in gt]
        path = out_dir / f"{seq_dir.name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(lines), encoding="utf-8")
        written.append(path)
    return written


def _reid_from_gt(market_dir: Path, path: Path) -> None:
    items = [(split, item) for split in ("query", "test") for item in read_market(market_dir, split)]
    identities = sorted({item.identity for _, item in items})
    embeddings = np.zeros((len(items), len(identities)), dtype=np.float32)
    embeddings[np.arange(len(items)), [identities.index(item.identity) for _, item in items]] = 1.0
    np.savez(path, names=np.array([f"{SPLIT_DIRS[split]}/{item.path.name}" for split, item in items]),
             embeddings=embeddings,
             attributes=np.stack([attributes_to_indices(item.attributes) for _, item in items])
             if items else np.zeros((0, len(ATTRIBUTE_NAMES)), np.int64),
             attribute_names=np.array(ATTRIBUTE_NAMES))


def write_ground_truth_as_predictions(gt_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Turn the GT of ``gt_dir`` into every prediction format under ``out_dir``; returns what was written.

    Writes ``detections.json`` (score 1, GT masks as RLE, GT keypoints with confidence 1 where labelled),
    ``parts/`` (copies of the GT maps), ``reid.npz`` (one-hot identity embeddings, GT attributes) and
    ``mot/{seq}.txt`` (GT boxes and ids) for the parts of the GT that exist. Scoring it gives 1.0 everywhere.
    """
    gt_dir, out_dir = Path(gt_dir), Path(out_dir)
    written: list[Path] = []
    ann_file = gt_dir / GT_ANNOTATIONS
    if ann_file.is_file():
        coco = load_coco_gt(ann_file)
        save_json(out_dir / KINDS["detections"], _detections_from_gt(coco))
        written.append(out_dir / KINDS["detections"])
        parts = [info["parts_file"] for info in coco.imgs.values() if info.get("parts_file")]
        for parts_file in parts:
            target = prediction_path(out_dir / KINDS["parts"], parts_file)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(gt_dir / parts_file, target)
        if parts:
            written.append(out_dir / KINDS["parts"])
    if (gt_dir / GT_MARKET / SPLIT_DIRS["query"]).is_dir():
        out_dir.mkdir(parents=True, exist_ok=True)
        _reid_from_gt(gt_dir / GT_MARKET, out_dir / KINDS["reid"])
        written.append(out_dir / KINDS["reid"])
    if (gt_dir / GT_MOT).is_dir() and _mot_from_gt(gt_dir / GT_MOT, out_dir / KINDS["mot"]):
        written.append(out_dir / KINDS["mot"])
    if not written:
        raise FileNotFoundError(f"{gt_dir}: no ground truth found ({GT_ANNOTATIONS}, {GT_MARKET}/, {GT_MOT}/)")
    return written
