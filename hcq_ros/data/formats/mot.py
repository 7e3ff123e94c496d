"""MOTChallenge sequences (MOT16/17/20 layout): ``MotWriter`` and ``read_mot_sequence``.

Layout of one sequence (real MOT17/MOT20 ``train/<seq>`` folders, and what ``MotWriter`` writes)::

    MOT17-02-FRCNN/
      seqinfo.ini        [Sequence] name, imDir, frameRate, seqLength, imWidth, imHeight, imExt
      img1/000001.jpg ...            1-based frame numbers, 6 digits
      gt/gt.txt          frame,id,bb_left,bb_top,bb_width,bb_height,conf,class,visibility

``conf`` in gt is MOT's "consider" flag (0 = ignore this box), ``class`` 1 = pedestrian (MOT20 and MOT17
also label vehicles, static persons, distractors, reflections ...), ``visibility`` the visible fraction.
The reader keeps rows with conf 1 and class 1 (``pedestrians_only=False`` keeps every class) and counts the
rest in ``sequence.dropped``. A 10-column gt (MOT15: conf then world x, y, z) has no class/visibility
columns: every row is a pedestrian with visibility 1; 6-8 columns are accepted the same way. Test
sequences without ``gt/`` read with an empty ``gt``. Boxes are kept exactly as in the file (MOT boxes are
full-body and may extend past the image border; the devkit's 1-based convention is not shifted, a
1-pixel ambiguity that IoU-based metrics ignore).

``MotWriter`` writes the boxes it is given (our *visible* boxes, ``PersonAnnotation.box``) with conf 1,
class 1 and, unless passed explicitly, visibility = the fraction of labelled keypoints that are visible
(1.0 when none is labelled) as a stand-in for MOT's amodal visible fraction.
"""
from __future__ import annotations

import configparser
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from hcq_ros.data.schema import NUM_KEYPOINTS, PersonAnnotation

from . import read_image, write_image

GT_DTYPE = np.dtype([("frame", "i4"), ("id", "i4"), ("x", "f4"), ("y", "f4"), ("w", "f4"), ("h", "f4"),
                     ("conf", "f4"), ("cls", "i4"), ("vis", "f4")])
PEDESTRIAN = 1


def _keypoint_visibility(person: PersonAnnotation) -> float:
    labelled = person.keypoints[:, 2] > 0
    return float((person.keypoints[labelled, 2] == 2).mean()) if labelled.any() else 1.0


class MotWriter:
    """Writes one MOTChallenge sequence folder; ``close()`` writes ``gt/gt.txt`` and ``seqinfo.ini``."""

    def __init__(self, seq_dir: Path, name: str, fps: float, width: int, height: int, jpeg_quality: int = 95):
        self.seq_dir = Path(seq_dir)
        self.name = name
        self.fps = fps
        self.width, self.height = int(width), int(height)
        self.jpeg_quality = jpeg_quality
        self.rows: list[tuple] = []
        self.frames: set[int] = set()

    def add(self, frame: int, image: Optional[np.ndarray], persons: list[PersonAnnotation],
            visibility: Optional[Sequence[float]] = None) -> None:
        """Record ``frame`` (1-based): writes ``img1/{frame:06d}.jpg`` when ``image`` (uint8 [H, W, 3] RGB) is given."""
        if frame < 1:
            raise ValueError(f"MOT frames are 1-based, got frame {frame}")
        if frame in self.frames:
            raise ValueError(f"frame {frame} added twice")
        if visibility is not None and len(visibility) != len(persons):
            raise ValueError(f"frame {frame}: {len(visibility)} visibilities for {len(persons)} persons")
        self.frames.add(frame)
        if image is not None:
            if image.shape[:2] != (self.height, self.width):
                raise ValueError(f"frame {frame}: image is {image.shape[1]}x{image.shape[0]}, "
                                 f"sequence is {self.width}x{self.height}")
            write_image(self.seq_dir / "img1" / f"{frame:06d}.jpg", image, self.jpeg_quality)
        for k, person in enumerate(persons):
            if person.track_id < 0:
                raise ValueError(f"frame {frame}: person {k} has no track id (track_id={person.track_id})")
            x0, y0, x1, y1 = (float(v) for v in person.box)
            vis = float(visibility[k]) if visibility is not None else _keypoint_visibility(person)
            self.rows.append((frame, int(person.track_id), x0, y0, x1 - x0, y1 - y0, 1, PEDESTRIAN, vis))

    def close(self) -> Path:
        """Write the annotation files; returns the sequence folder."""
        gt = self.seq_dir / "gt" / "gt.txt"
        gt.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{f},{i},{x:.6g},{y:.6g},{w:.6g},{h:.6g},{c},{cls},{v:.4g}\n"
                 for f, i, x, y, w, h, c, cls, v in sorted(self.rows, key=lambda r: (r[0], r[1]))]
        gt.write_text("".join(lines), encoding="utf-8")
        info = configparser.ConfigParser()
        info.optionxform = str  # keep MOT's camelCase keys
        info["Sequence"] = {"name": self.name, "imDir": "img1", "frameRate": f"{self.fps:g}",
                            "seqLength": str(max(self.frames, default=0)), "imWidth": str(self.width),
                            "imHeight": str(self.height), "imExt": ".jpg"}
        with open(self.seq_dir / "seqinfo.ini", "w", encoding="utf-8") as f:
            info.write(f, space_around_delimiters=False)
        return self.seq_dir

    def __enter__(self) -> "MotWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class MotSequence:
    """One sequence: metadata, frame paths and the filtered ground truth (``gt``: structured ``GT_DTYPE`` [N])."""
    name: str
    fps: float
    width: int
    height: int
    length: int
    image_dir: Path
    image_ext: str
    gt: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return self.width, self.height

    @property
    def frames(self) -> list[Path]:
        """Image paths of frames 1..length."""
        return [self.frame_path(f) for f in range(1, self.length + 1)]

    def frame_path(self, frame: int) -> Path:
        return self.image_dir / f"{frame:06d}{self.image_ext}"

    def read_frame(self, frame: int) -> np.ndarray:
        """``uint8 [H, W, 3]`` RGB of a 1-based frame."""
        return read_image(self.frame_path(frame))

    @property
    def track_ids(self) -> np.ndarray:
        return np.unique(self.gt["id"])

    def frame_annotations(self, frame: int) -> list[PersonAnnotation]:
        """Boxes (xyxy) of ``frame`` as PersonAnnotations with ``track_id``; no masks, keypoints all 0."""
        lo, hi = np.searchsorted(self.gt["frame"], [frame, frame + 1])
        return [PersonAnnotation(box=[r["x"], r["y"], r["x"] + r["w"], r["y"] + r["h"]], mask=None,
                                 keypoints=np.zeros((NUM_KEYPOINTS, 3), np.float32), track_id=int(r["id"]))
                for r in self.gt[lo:hi]]


def _read_seqinfo(path: Path) -> configparser.SectionProxy:
    if not path.is_file():
        raise FileNotFoundError(f"MOT seqinfo.ini not found: {path}")
    info = configparser.ConfigParser()
    try:
        info.read(path, encoding="utf-8")
    except configparser.Error as e:
        raise ValueError(f"{path}: invalid seqinfo.ini: {e}") from e
    if "Sequence" not in info:
        raise ValueError(f"{path}: no [Sequence] section")
    section = info["Sequence"]
    missing = [k for k in ("name", "frameRate", "seqLength", "imWidth", "imHeight") if k not in section]
    if missing:
        raise ValueError(f"{path}: [Sequence] lacks {missing}")
    return section


def read_mot_gt(path: Path) -> np.ndarray:
    """All rows of a gt.txt as ``GT_DTYPE`` [N] (class/visibility 1 where the file has no such columns)."""
    if not path.is_file() or path.stat().st_size == 0:
        return np.zeros(0, GT_DTYPE)
    try:
        table = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"{path}: malformed MOT gt: {e}") from e
    n_cols = table.shape[1]
    if n_cols < 6:
        raise ValueError(f"{path}: MOT gt rows need at least 6 columns (frame,id,x,y,w,h), got {n_cols}")
    gt = np.zeros(len(table), GT_DTYPE)
    for k, name in enumerate(("frame", "id", "x", "y", "w", "h")):
        gt[name] = table[:, k]
    gt["conf"] = table[:, 6] if n_cols > 6 else 1.0
    has_class = n_cols >= 9 and n_cols != 10  # 10 columns = MOT15 (conf + world xyz)
    gt["cls"] = table[:, 7] if has_class else PEDESTRIAN
    gt["vis"] = table[:, 8] if has_class else 1.0
    return gt


def read_mot_sequence(seq_dir: str | Path, pedestrians_only: bool = True, min_visibility: float = 0.0) -> MotSequence:
    """Read ``seq_dir`` (see the module docstring); rows are sorted by (frame, id)."""
    seq_dir = Path(seq_dir)
    info = _read_seqinfo(seq_dir / "seqinfo.ini")
    try:
        fps, length = float(info["frameRate"]), int(info["seqLength"])
        width, height = int(info["imWidth"]), int(info["imHeight"])
    except ValueError as e:
        raise ValueError(f"{seq_dir / 'seqinfo.ini'}: non-numeric field: {e}") from e
    gt = read_mot_gt(seq_dir / "gt" / "gt.txt")
    dropped = {"ignored": int((gt["conf"] == 0).sum())}
    keep = gt["conf"] != 0
    if pedestrians_only:
        dropped["non_pedestrian"] = int((keep & (gt["cls"] != PEDESTRIAN)).sum())
        keep &= gt["cls"] == PEDESTRIAN
    if min_visibility > 0:
        dropped["low_visibility"] = int((keep & (gt["vis"] < min_visibility)).sum())
        keep &= gt["vis"] >= min_visibility
    gt = gt[keep]
    gt = gt[np.lexsort((gt["id"], gt["frame"]))]
    return MotSequence(name=info["name"], fps=fps, width=width, height=height, length=length,
                       image_dir=seq_dir / info.get("imDir", "img1"), image_ext=info.get("imExt", ".jpg"),
                       gt=gt, dropped=dropped)
