"""Readers and writers for the real dataset formats, shared by SynthHumans exports and the real datasets.

| module   | format                         | write                | read                          |
|----------|--------------------------------|----------------------|-------------------------------|
| coco     | COCO person keypoints (+masks) | ``CocoWriter``       | ``CocoPersonDataset``         |
| mot      | MOTChallenge (MOT17/MOT20)     | ``MotWriter``        | ``read_mot_sequence``         |
| market   | Market-1501 (+ attributes)     | ``MarketWriter``     | ``read_market``               |
| lip      | LIP parsing + pose             | ``LipWriter``        | ``LipDataset``                |
| mpii     | MPII (HRNet-style json)        | ``MpiiWriter``       | ``MpiiDataset``               |

Each module docstring gives the folder layout it expects. The small file helpers below are the one place
where files cross into memory: they convert BGR<->RGB and turn every failure into an error naming the path.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image


def load_json(path: str | Path) -> Any:
    """Parsed JSON; FileNotFoundError / ValueError naming the path and the parser's complaint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from e


def save_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))


def read_image(path: str | Path) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB (grey and 4-channel files are converted, as real COCO has grey JPEGs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: cannot decode image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_image(path: str | Path, image_rgb: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write ``uint8 [H, W, 3]`` RGB as JPEG (quality ``jpeg_quality``) or PNG, chosen by the extension."""
    path = Path(path)
    image_rgb = np.asarray(image_rgb)
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"{path}: image must be uint8 [H, W, 3], got {image_rgb.dtype} {list(image_rgb.shape)}")
    ext = path.suffix.lower()
    if ext in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    elif ext == ".png":
        params = []
    else:
        raise ValueError(f"{path}: image extension must be .jpg/.jpeg/.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"{path}: cv2.imwrite failed")


def read_label_png(path: str | Path) -> np.ndarray:
    """``uint8 [H, W]`` label map from a grey ('L') or palette ('P') PNG (PIL keeps palette indices)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label PNG not found: {path}")
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"{path}: label PNG must be single-channel (mode L or P), got mode {im.mode}")
            labels = np.array(im)
    except (OSError, SyntaxError) as e:  # PIL raises these for truncated/corrupt files
        raise ValueError(f"{path}: unreadable PNG: {e}") from e
    if labels.max(initial=0) > 255:
        raise ValueError(f"{path}: label values exceed 255")
    return labels.astype(np.uint8)


def write_label_png(path: str | Path, labels: np.ndarray) -> None:
    """Write ``uint8 [H, W]`` labels as a single-channel PNG."""
    path = Path(path)
    labels = np.asarray(labels)
    if labels.dtype != np.uint8 or labels.ndim != 2:
        raise ValueError(f"{path}: label map must be uint8 [H, W], got {labels.dtype} {list(labels.shape)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), labels):
        raise OSError(f"{path}: cv2.imwrite failed")


def mask_to_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight ``float32 [4]`` xyxy box around the True pixels of ``bool [H, W]``, None when empty."""
    ys = np.flatnonzero(mask.any(axis=1))
    if ys.size == 0:
        return None
    xs = np.flatnonzero(mask.any(axis=0))
    return np.array([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=np.float32)


# Re-exports (after the helpers above, which the submodules import from here).
from .coco import CocoPersonDataset, CocoWriter  # noqa: E402
from .lip import LIP_PARTS, LipDataset, LipWriter  # noqa: E402
from .market import MarketItem, MarketWriter, read_market, read_market_attributes  # noqa: E402
from .mot import MotSequence, MotWriter, read_mot_sequence  # noqa: E402
from .mpii import MPII_JOINTS, MpiiDataset, MpiiWriter, coco_to_mpii, mpii_to_coco  # noqa: E402

__all__ = [
    "load_json", "save_json", "read_image", "write_image", "read_label_png", "write_label_png", "mask_to_box",
    "CocoPersonDataset", "CocoWriter", "MotSequence", "MotWriter", "read_mot_sequence",
    "MarketItem", "MarketWriter", "read_market", "read_market_attributes",
    "LIP_PARTS", "LipDataset", "LipWriter", "MPII_JOINTS", "MpiiDataset", "MpiiWriter", "coco_to_mpii",
    "mpii_to_coco",
]
