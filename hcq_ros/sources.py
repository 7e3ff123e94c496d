"""Frame sources for ``hcq-ros run`` and ``hcq-ros replay``: video file, image folder, camera, rosbag2.

Every source yields :class:`SourceFrame` records in order; a frame that cannot be read or decoded is still
yielded, with ``error`` set to the reason and ``rgb`` None, so that the caller emits one output per input frame
and goes on. Problems with the source itself (missing path, a video OpenCV cannot open, a bag without image
topics) raise at ``open_source`` / construction time, before any frame is read.

    source = open_source("walk.mp4")            # or "frames/", "camera:0", "recording.mcap", a bag folder
    for f in source.frames():
        f.stamp_ns, f.frame_id, f.rgb            # uint8 [H, W, 3] RGB, or None with f.error = "why"

Stamps (``stamp_ns``, what the tracker sees): a video's frame index / its fps (``--fps`` when the file has
none), an image folder's index / ``fps``, a camera's wall clock, a bag's header stamp (its log time when the
header stamp is 0, which many simple publishers leave unset).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import cv2
import numpy as np

from hcq_ros.ros.image_conversion import DEFAULT_MAX_PIXELS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
BAG_SUFFIXES = (".mcap", ".db3")
CAMERA_PREFIX = "camera:"


@dataclass
class SourceFrame:
    """One input frame. Exactly one of ``rgb`` / ``error`` is set.

    stamp_ns: the frame's time (see the module docstring); frame_id: camera frame name.
    rgb: uint8 [H, W, 3] RGB. error: why the frame could not be used.
    image_size: (w, h) when known (also for many undecodable frames: the message's declared size), else (0, 0).
    msg: the original ROS image message (bag sources; None elsewhere or when the CDR itself was broken).
    header: the original std_msgs/Header (bag sources) or None.
    log_ns: when the frame was logged (bag log time; = stamp_ns for other sources).
    index: 0-based position in the source.
    """
    stamp_ns: int
    frame_id: str
    rgb: Optional[np.ndarray]
    error: Optional[str]
    image_size: tuple[int, int] = (0, 0)
    msg: Any = None
    header: Any = None
    log_ns: int = 0
    index: int = 0


class FrameSource(ABC):
    """Base: ``frames()`` iterates SourceFrames; ``describe`` / ``total`` (None if unknown) / ``fps`` (None if
    unknown) / ``live`` (frames arrive in real time) / ``input_topic`` + ``input_type`` (how the input images are
    recorded in an output bag)."""

    describe = "source"
    total: Optional[int] = None
    fps: Optional[float] = None
    live = False
    input_topic = "/camera/image_raw"
    input_type = "sensor_msgs/msg/Image"

    @abstractmethod
    def frames(self) -> Iterator[SourceFrame]:
        """The frames, in order; a frame that cannot be read is a SourceFrame with ``error`` set."""


def _period_ns(fps: float) -> int:
    if not fps or fps <= 0 or not np.isfinite(fps):
        raise ValueError(f"fps must be a positive number, got {fps}")
    return int(round(1e9 / fps))


class VideoSource(FrameSource):
    """A video file read with cv2.VideoCapture. fps: used when the file does not state one (default 30)."""

    def __init__(self, path: str | Path, frame_id: str = "camera", fps: Optional[float] = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"video file not found: {self.path}")
        capture = cv2.VideoCapture(str(self.path))
        try:
            if not capture.isOpened():
                raise ValueError(f"{self.path}: OpenCV cannot open this file as a video")
            stated = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        finally:
            capture.release()
        self.fps = stated if stated > 0 and np.isfinite(stated) else float(fps or 30.0)
        self.total = count if count > 0 else None
        self.frame_id = frame_id
        self.describe = f"video {self.path} ({self.fps:g} fps)"

    def frames(self) -> Iterator[SourceFrame]:
        capture = cv2.VideoCapture(str(self.path))
        period = _period_ns(self.fps)
        index = 0
        try:
            while True:
                ok, bgr = capture.read()
                if not ok or bgr is None:  # end of file (OpenCV does not tell a damaged tail apart)
                    return
                stamp = index * period
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                yield SourceFrame(stamp, self.frame_id, rgb, None, (rgb.shape[1], rgb.shape[0]), log_ns=stamp,
                                  index=index)
                index += 1
        finally:
            capture.release()


class FolderSource(FrameSource):
    """Image files of a folder in sorted name order (not recursive); unreadable files are error frames."""

    def __init__(self, path: str | Path, frame_id: str = "camera", fps: float = 10.0) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.path}")
        self.files = sorted(p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"{self.path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        self.fps = float(fps)
        _period_ns(self.fps)
        self.total = len(self.files)
        self.frame_id = frame_id
        self.describe = f"image folder {self.path} ({self.total} files, {self.fps:g} fps)"

    def frames(self) -> Iterator[SourceFrame]:
        period = _period_ns(self.fps)
        for index, file in enumerate(self.files):
            stamp = index * period
            bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if bgr is None or bgr.size == 0:
                yield SourceFrame(stamp, self.frame_id, None, f"{file.name}: cannot decode image file",
                                  log_ns=stamp, index=index)
                continue
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            yield SourceFrame(stamp, self.frame_id, rgb, None, (rgb.shape[1], rgb.shape[0]), log_ns=stamp,
                              index=index)


class CameraSource(FrameSource):
    """A camera (V4L2 / OpenCV device index). Stamps are the wall clock at capture; ``max_frames`` stops it
    (None = until the camera fails ``max_failures`` reads in a row or the caller stops iterating)."""

    live = True

    def __init__(self, index: int, frame_id: str = "camera", max_frames: Optional[int] = None,
                 max_failures: int = 30) -> None:
        self.index = int(index)
        self.frame_id = frame_id
        self.max_frames = max_frames
        self.max_failures = max_failures
        self.total = max_frames
        self._capture = cv2.VideoCapture(self.index)
        if not self._capture.isOpened():
            self._capture.release()
            raise ValueError(f"camera:{self.index}: OpenCV cannot open camera device {self.index}")
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if fps > 0 else None
        self.describe = f"camera {self.index}"

    def frames(self) -> Iterator[SourceFrame]:
        index, failures, last = 0, 0, 0
        try:
            while self.max_frames is None or index < self.max_frames:
                ok, bgr = self._capture.read()
                stamp = max(time.time_ns(), last + 1)  # strictly increasing for the tracker
                last = stamp
                if not ok or bgr is None:
                    failures += 1
                    if failures >= self.max_failures:
                        return
                    yield SourceFrame(stamp, self.frame_id, None, "camera read failed", log_ns=stamp, index=index)
                else:
                    failures = 0
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    yield SourceFrame(stamp, self.frame_id, rgb, None, (rgb.shape[1], rgb.shape[0]), log_ns=stamp,
                                      index=index)
                index += 1
        finally:
            self._capture.release()


class BagSource(FrameSource):
    """Image / CompressedImage messages of a rosbag2 (sqlite3 or MCAP). topic: which one (default: the only
    image topic; a bag with several image topics needs ``topic``). max_pixels: larger images are error frames
    (checked from the message's declared size, before any pixel is touched)."""

    def __init__(self, path: str | Path, topic: Optional[str] = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        from hcq_ros.ros.bag import IMAGE_TYPES, BagError, open_reader

        self.path = Path(path)
        reader = open_reader(self.path)  # FileNotFoundError / BagError with the path
        try:
            connections = list(reader.connections)
        finally:
            reader.close()
        listing = ", ".join(f"{c.topic} ({c.msgtype})" for c in connections) or "none"
        images = {c.topic: c for c in connections if c.msgtype in IMAGE_TYPES}
        if topic is None:
            if not images:
                raise BagError(f"bag {self.path} has no sensor_msgs/Image or CompressedImage topic; "
                               f"topics: {listing}")
            if len(images) > 1:
                raise BagError(f"bag {self.path} has several image topics {sorted(images)}: choose one with --topic")
            topic = next(iter(images))
        elif topic not in images:
            known = {c.topic for c in connections}
            why = "has no topic" if topic not in known else "has no image topic"
            raise BagError(f"bag {self.path} {why} {topic!r}; topics: {listing}")
        self.input_topic = topic
        self.input_type = images[topic].msgtype
        self.total = sum(c.msgcount for c in connections if c.topic == topic)
        self.max_pixels = int(max_pixels)
        self.describe = f"bag {self.path} {topic} ({self.input_type}, {self.total} messages)"

    def frames(self) -> Iterator[SourceFrame]:
        from hcq_ros.ros.bag import header_stamp_ns, iter_image_messages

        records = iter_image_messages(self.path, self.input_topic, max_pixels=self.max_pixels)
        for index, record in enumerate(records):
            msg = record.msg
            header = getattr(msg, "header", None)
            stamp = header_stamp_ns(header) if header is not None else 0
            frame_id = str(header.frame_id) if header is not None else ""
            size = _declared_size(msg, record.rgb)
            error = None if record.error is None else str(record.error)
            yield SourceFrame(stamp if stamp > 0 else record.stamp_ns, frame_id, record.rgb, error, size,
                              msg=msg, header=header, log_ns=record.stamp_ns, index=index)


def _declared_size(msg: Any, rgb: Optional[np.ndarray]) -> tuple[int, int]:
    """(w, h) of the decoded image, else what an Image message declares (0, 0 when unknown)."""
    if rgb is not None:
        return int(rgb.shape[1]), int(rgb.shape[0])
    try:
        return max(0, int(msg.width)), max(0, int(msg.height))
    except (AttributeError, TypeError, ValueError):
        return 0, 0


def is_bag_path(path: Path) -> bool:
    """A bare .mcap/.db3 file or a folder holding a rosbag2 (metadata.yaml or a .mcap/.db3 file)."""
    if path.is_file():
        return path.suffix.lower() in BAG_SUFFIXES
    if path.is_dir():
        return (path / "metadata.yaml").is_file() or any(
            p.suffix.lower() in BAG_SUFFIXES for p in path.iterdir() if p.is_file())
    return False


def open_source(spec: str | Path, *, topic: Optional[str] = None, frame_id: str = "camera",
                fps: Optional[float] = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                max_frames: Optional[int] = None) -> FrameSource:
    """The source named by ``spec``: ``camera:N``, a rosbag2 (folder or .mcap/.db3 file), an image folder, or a
    video file. fps: image folders (default 10) and videos without a stated rate (default 30).
    FileNotFoundError for a missing path, ValueError (BagError for bags) for one that cannot be used."""
    text = str(spec)
    if text.startswith(CAMERA_PREFIX):
        number = text[len(CAMERA_PREFIX):]
        if not number.isdigit():
            raise ValueError(f"camera source must be camera:N with a device number N, got {text!r}")
        return CameraSource(int(number), frame_id=frame_id, max_frames=max_frames)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"source not found: {path} (give a video file, an image folder, a rosbag2 or "
                                f"camera:N)")
    if is_bag_path(path):
        return BagSource(path, topic=topic, max_pixels=max_pixels)
    if topic is not None:
        raise ValueError(f"--topic only applies to bag sources; {path} is not a rosbag2")
    if path.is_dir():
        return FolderSource(path, frame_id=frame_id, fps=fps or 10.0)
    return VideoSource(path, frame_id=frame_id, fps=fps)
