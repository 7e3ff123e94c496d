"""Market-1501 person crops (+ identity-level attributes): ``MarketWriter``, ``read_market``.

Layout::

    Market-1501-v15.09.15/
      bounding_box_train/0002_c1s1_000451_03.jpg ...     split "train"  (751 ids)
      bounding_box_test/...                              split "test"   (gallery: 750 ids + 0000 + -1)
      query/...                                          split "query"
      attributes.json                (ours: {"identities": {"0002": {name: value}}})
      market_attribute.mat           (real: from the Market-1501_Attribute repository; also looked for in
                                      a sibling/child folder named Market-1501_Attribute)

File names are ``{identity:04d}_c{camera}s{sequence}_{frame:06d}_{k:02d}.jpg`` (k = box index in that
frame). Standard protocol: identity ``-1`` marks junk boxes (ignored by the evaluation): always skipped
and counted; identity ``0000`` marks distractors, which belong to the gallery in the standard
evaluation, so they are kept unless ``keep_distractors=False`` (they never occur in train/query).
Other files in the folders (Thumbs.db, odd names) are skipped and counted.

Real attribute file (``market_attribute.mat``: struct ``market_attribute`` with ``train``/``test``, each a
struct of 1 x N arrays plus the cell ``image_index`` of identity strings; values 1 = no / first option,
2 = yes / second option). Mapping onto schema.ATTRIBUTES:

| ours          | Market                                                                                   |
|---------------|------------------------------------------------------------------------------------------|
| hat           | hat (1 no, 2 yes)                                                                        |
| backpack      | backpack                                                                                 |
| handbag       | "yes" when handbag OR bag (shoulder bag) is 2                                            |
| sleeve        | up (1 long, 2 short)                                                                     |
| hair          | hair (1 short, 2 long)                                                                   |
| lower_type    | clothes 1 (dress) -> skirt; clothes 2 (pants) -> down 1 long -> trousers, 2 short -> shorts |
| upper_color   | the one of upblack/upwhite/upred/uppurple/upyellow/upgray/upblue/upgreen set to 2        |
| lower_color   | the one of downblack/white/pink/purple/yellow/gray/blue/green/brown set to 2             |
| age           | age 1 (young) -> child, 3/4 (adult/old) -> adult, 2 (teenager) -> left out               |
| upper_pattern | not annotated in Market: left out (gender is dropped: not in our schema)                 |

A colour is left out when no colour flag (or more than one) is set.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import scipy.io

from hcq_ros.data.schema import ATTRIBUTES, attributes_to_indices

from . import load_json, save_json, write_image

SPLIT_DIRS = {"train": "bounding_box_train", "test": "bounding_box_test", "query": "query"}
_NAME = re.compile(r"^(-1|\d{4})_c(\d+)s(\d+)_(\d+)_(\d+)\.jpg$")
_UP_COLORS = ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")
_DOWN_COLORS = ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown")


@dataclass
class MarketItem:
    """One crop: its path, identity (0 = distractor), camera (1-based in real Market), frame, sequence, box index k."""
    path: Path
    identity: int
    camera: int
    frame: int
    sequence: int = 1
    k: int = 0
    attributes: dict[str, str] = field(default_factory=dict)


def _split_dir(split: str) -> str:
    if split not in SPLIT_DIRS:
        raise ValueError(f"Market split must be one of {sorted(SPLIT_DIRS)}, got {split!r}")
    return SPLIT_DIRS[split]


class MarketWriter:
    """Writes crops in Market-1501 naming and, on ``close()``, ``root/attributes.json``."""

    def __init__(self, root: Path, jpeg_quality: int = 95):
        self.root = Path(root)
        self.jpeg_quality = jpeg_quality
        self.attributes: dict[int, dict[str, str]] = {}

    def add(self, crop_rgb: np.ndarray, identity: int, camera: int, frame: int, k: int, split: str) -> Path:
        """Write ``crop_rgb`` (uint8 [h, w, 3] RGB) as ``<split dir>/{id:04d}_c{cam}s1_{frame:06d}_{k:02d}.jpg``."""
        if not 0 <= identity <= 9999 and identity != -1:
            raise ValueError(f"Market identity must be -1 or 0..9999, got {identity}")
        if camera < 0 or frame < 0 or not 0 <= k <= 99:  # real Market cameras are 1..6; 0 is accepted
            raise ValueError(f"Market camera must be >= 0, frame >= 0 and k in 0..99; got {camera}, {frame}, {k}")
        ident = "-1" if identity == -1 else f"{identity:04d}"
        path = self.root / _split_dir(split) / f"{ident}_c{camera}s1_{frame:06d}_{k:02d}.jpg"
        write_image(path, crop_rgb, self.jpeg_quality)
        return path

    def set_attributes(self, identity: int, attrs: dict[str, str]) -> None:
        attributes_to_indices(attrs)  # raises on an unknown value
        unknown = set(attrs) - set(ATTRIBUTES)
        if unknown:
            raise ValueError(f"identity {identity}: unknown attributes {sorted(unknown)}")
        self.attributes[int(identity)] = dict(attrs)

    def close(self) -> Path:
        path = self.root / "attributes.json"
        save_json(path, {"identities": {f"{i:04d}": a for i, a in sorted(self.attributes.items())}})
        return path

    def __enter__(self) -> "MarketWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _one_colour(struct, prefix: str, colours: tuple[str, ...], i: int) -> Optional[str]:
    names = [c for c in colours if hasattr(struct, prefix + c) and int(np.ravel(getattr(struct, prefix + c))[i]) == 2]
    return names[0] if len(names) == 1 else None


def _mat_split_attributes(struct, mat_path: Path, split: str) -> dict[int, dict[str, str]]:
    """One ``train``/``test`` struct of market_attribute.mat -> ``{identity: attrs}``."""
    required = ("image_index", "hat", "backpack", "bag", "handbag", "up", "down", "clothes", "hair", "age")
    missing = [f for f in required if not hasattr(struct, f)]
    if missing:
        raise ValueError(f"{mat_path}: market_attribute.{split} lacks fields {missing}")
    ids = [int(str(s).strip()) for s in np.ravel(struct.image_index)]

    def col(name: str) -> np.ndarray:
        values = np.ravel(getattr(struct, name)).astype(int)
        if len(values) != len(ids):
            raise ValueError(f"{mat_path}: market_attribute.{split}.{name} has {len(values)} values "
                             f"for {len(ids)} identities")
        return values

    hat, backpack, bag, handbag = col("hat"), col("backpack"), col("bag"), col("handbag")
    up, down, clothes, hair, age = col("up"), col("down"), col("clothes"), col("hair"), col("age")
    out: dict[int, dict[str, str]] = {}
    for i, identity in enumerate(ids):
        attrs = {
            "hat": "yes" if hat[i] == 2 else "no",
            "backpack": "yes" if backpack[i] == 2 else "no",
            "handbag": "yes" if handbag[i] == 2 or bag[i] == 2 else "no",
            "sleeve": "short" if up[i] == 2 else "long",
            "hair": "long" if hair[i] == 2 else "short",
            "lower_type": "skirt" if clothes[i] == 1 else ("shorts" if down[i] == 2 else "trousers"),
        }
        if age[i] == 1:
            attrs["age"] = "child"
        elif age[i] in (3, 4):
            attrs["age"] = "adult"
        upper = _one_colour(struct, "up", _UP_COLORS, i)
        lower = _one_colour(struct, "down", _DOWN_COLORS, i)
        if upper:
            attrs["upper_color"] = upper
        if lower:
            attrs["lower_color"] = lower
        out[identity] = attrs
    return out


def read_market_attribute_mat(path: str | Path) -> dict[int, dict[str, str]]:
    """Real ``market_attribute.mat`` -> ``{identity: {name: value}}`` (train and test identities merged)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Market attribute file not found: {path}")
    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as e:  # scipy raises several types for corrupt files
        raise ValueError(f"{path}: cannot read MATLAB file: {e}") from e
    if "market_attribute" not in mat:
        raise ValueError(f"{path}: no variable 'market_attribute'")
    root = mat["market_attribute"]
    out: dict[int, dict[str, str]] = {}
    for split in ("train", "test"):
        if hasattr(root, split):
            out.update(_mat_split_attributes(getattr(root, split), path, split))
    return out


def read_market_attributes(root: str | Path) -> dict[int, dict[str, str]]:
    """``{identity: attrs}`` from ``root/attributes.json`` (ours) or the real ``market_attribute.mat``; {} if none."""
    root = Path(root)
    ours = root / "attributes.json"
    if ours.is_file():
        data = load_json(ours)
        if not isinstance(data, dict) or not isinstance(data.get("identities"), dict):
            raise ValueError(f"{ours}: expected {{\"identities\": {{\"0001\": {{...}}}}}}")
        out = {}
        for key, attrs in data["identities"].items():
            try:
                attributes_to_indices(attrs)
            except ValueError as e:
                raise ValueError(f"{ours}: identity {key}: {e}") from e
            out[int(key)] = dict(attrs)
        return out
    for mat in (root / "market_attribute.mat", root / "Market-1501_Attribute" / "market_attribute.mat",
                root.parent / "Market-1501_Attribute" / "market_attribute.mat"):
        if mat.is_file():
            return read_market_attribute_mat(mat)
    return {}


def read_market(root: str | Path, split: str, keep_distractors: bool = True,
                skipped: Optional[dict[str, int]] = None) -> list[MarketItem]:
    """Items of one split sorted by file name, with identity attributes attached where known.

    ``skipped`` (optional dict) receives the counts of "junk" (-1) and "unparsed" files (and "distractor"
    when ``keep_distractors=False``).
    """
    folder = Path(root) / _split_dir(split)
    if not folder.is_dir():
        raise FileNotFoundError(f"Market-1501 folder not found: {folder}")
    counts = skipped if skipped is not None else {}
    for key in ("junk", "unparsed", "distractor"):
        counts.setdefault(key, 0)
    attributes = read_market_attributes(root)
    items = []
    for path in sorted(folder.iterdir()):
        match = _NAME.match(path.name)
        if match is None:
            counts["unparsed"] += 1
            continue
        identity, camera, sequence, frame, k = (int(g) for g in match.groups())
        if identity == -1:
            counts["junk"] += 1
            continue
        if identity == 0 and not keep_distractors:
            counts["distractor"] += 1
            continue
        items.append(MarketItem(path=path, identity=identity, camera=camera, frame=frame, sequence=sequence,
                                k=k, attributes=dict(attributes.get(identity, {}))))
    return items
