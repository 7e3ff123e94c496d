"""Offline replay: frames (a rosbag2, a video, a folder, a camera) -> Perceptor -> a rosbag2 with every output.

The same loop serves ``hcq-ros replay`` (bag in, bag out), ``hcq-ros run`` (any source) and ``hcq-ros demo``:

    source frames --(stamp checks)--> Perceptor.process --> FrameRecorder: input image + output topics -> bag
                                                                           annotated frame -> video (optional)

Topics written (``namespace`` default ``/hcq``): the input images as they came (bag sources keep their topic and
type; other sources write ``sensor_msgs/Image`` rgb8 on ``/camera/image_raw``), ``/hcq/persons``
(hcq_ros/PersonArray), ``/hcq/detections``, ``/hcq/markers``, ``/hcq/image_annotated``, ``/diagnostics`` and,
with ``MessageOptions(rep155=True)``, the REP-155 ``/humans/bodies/...`` topics. Every output carries the input
image's header and is logged at the input's log time.

Exactly one PersonArray per input frame: a frame that could not be decoded or processed gets an empty one (with
the input's header) and a WARN diagnostic naming the reason. Stamps: the tracker needs increasing stamps, so a
frame whose stamp equals the previous one is dropped ("duplicate stamp"), and a stamp going back in time (a
looped bag) resets the tracker (counted). On the CPU backends the PersonArrays are deterministic.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np

from hcq_ros.result import PersonFrame
from hcq_ros.ros.messages import MessageFactory, MessageOptions, frame_to_messages, frame_to_person_array, topic_type

log = logging.getLogger(__name__)

OUTPUT_NAMESPACE = "/hcq"
DIAGNOSTICS_TOPIC = "/diagnostics"
# (text in a drop reason, short category for the summary); first match wins.
_REASON_CATEGORIES = (
    ("duplicate stamp", "duplicate stamp"),
    ("do not deserialise", "corrupted message"),
    ("unsupported image encoding", "unsupported encoding"),
    ("depth image", "depth image"),
    ("zero-size", "zero-size image"),
    ("zero size", "zero-size image"),
    ("exceeds max_pixels", "image too large"),
    ("too large", "image too large"),
    ("truncated", "truncated image"),
    ("step ", "malformed image"),
    ("even width", "malformed image"),
    ("decod", "undecodable image"),
    ("camera read failed", "camera read failed"),
    ("processing error", "processing error"),
)


def reason_category(reason: str) -> str:
    """Short category of a drop reason for the summary ("unsupported encoding", "truncated image", ...)."""
    text = reason.lower()
    for needle, category in _REASON_CATEGORIES:
        if needle in text:
            return category
    return "other"


def output_topic(key: str, namespace: str = OUTPUT_NAMESPACE) -> str:
    """Bag topic of a :func:`frame_to_messages` key: ``/diagnostics``, REP-155 keys as they are, others under
    ``namespace``."""
    if key == "diagnostics":
        return DIAGNOSTICS_TOPIC
    if key.startswith("/"):
        return key
    return f"{namespace.rstrip('/')}/{key}"


class VideoRecorder:
    """Annotated frames -> an MP4 (cv2.VideoWriter, mp4v). The size is fixed by the first frame; later frames
    of another size are resized to it."""

    def __init__(self, path: str | Path, fps: float) -> None:
        if not fps or fps <= 0:
            raise ValueError(f"video fps must be > 0, got {fps}")
        self.path = Path(path)
        self.fps = float(fps)
        self.size: Optional[tuple[int, int]] = None
        self.frames = 0
        self._writer = None

    def write(self, rgb: np.ndarray) -> None:
        """rgb: uint8 [H, W, 3]."""
        import cv2

        if self._writer is None:
            self.size = (int(rgb.shape[1]), int(rgb.shape[0]))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size)
            if not self._writer.isOpened():
                self._writer = None
                raise ValueError(f"cannot open {self.path} for writing an mp4v video")
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class FrameRecorder:
    """Writes one frame's input image and outputs to a BagWriter (already open) and/or a VideoRecorder.

    input_topic / input_type: where input images go (None: input images are not recorded).
    """

    def __init__(self, bag=None, video: Optional[VideoRecorder] = None, options: Optional[MessageOptions] = None,
                 namespace: str = OUTPUT_NAMESPACE, input_topic: Optional[str] = "/camera/image_raw",
                 input_type: str = "sensor_msgs/msg/Image", factory: Optional[MessageFactory] = None) -> None:
        self.bag = bag
        self.video = video
        self.options = options or MessageOptions()
        self.namespace = namespace
        self.input_topic = input_topic
        self.input_type = input_type
        self.factory = factory or MessageFactory.rosbags(getattr(bag, "typestore", None))
        self.inputs_not_recorded = 0
        if bag is not None and input_topic:
            bag.add_topic(input_topic, input_type)

    def header_for(self, frame) -> Any:
        """The input's own header (bag sources) or one built from the frame's stamp and frame_id."""
        return frame.header if frame.header is not None else self.factory.header(frame.stamp_ns, frame.frame_id)

    def record(self, source_frame, result: PersonFrame, stats: Optional[dict] = None) -> dict[str, Any]:
        """Write everything for one frame; returns {key: message} of the outputs (see frame_to_messages)."""
        header = self.header_for(source_frame)
        messages = frame_to_messages(result, source_frame.rgb, header, self.factory, self.options, stats)
        if self.options.persons and "persons" not in messages:  # dropped frame: still one (empty) PersonArray
            messages["persons"] = frame_to_person_array(result, header, self.factory)
        if self.bag is not None:
            log_ns = max(0, int(source_frame.log_ns))
            self._record_input(source_frame, header, log_ns)
            for key, msg in messages.items():
                topic = output_topic(key, self.namespace)
                self.bag.add_topic(topic, topic_type(key))  # no-op once registered (REP-155 ids appear late)
                self.bag.write(topic, log_ns, msg)
        if self.video is not None:
            self.video.write(self._annotated(result, source_frame.rgb, messages.get("image_annotated")))
        return messages

    def _record_input(self, source_frame, header: Any, log_ns: int) -> None:
        if not self.input_topic:
            return
        if source_frame.msg is not None:
            self.bag.write(self.input_topic, log_ns, source_frame.msg)
        elif source_frame.rgb is not None:
            from hcq_ros.ros.image_conversion import rgb_to_image_msg
            self.bag.write(self.input_topic, log_ns, rgb_to_image_msg(
                source_frame.rgb, header, "rgb8", self.factory.type("sensor_msgs/msg/Image")))
        else:  # broken CDR or an unreadable file: nothing to copy
            self.inputs_not_recorded += 1

    def _annotated(self, result: PersonFrame, rgb: Optional[np.ndarray], msg: Any) -> np.ndarray:
        """The annotated frame as RGB: from the image_annotated message when there is one, else drawn here
        (on a blank canvas of the video's size for frames without a usable image)."""
        from hcq_ros.ros.visualization import draw_frame

        if msg is not None and msg.encoding == "rgb8":
            return np.asarray(msg.data, np.uint8).reshape(int(msg.height), int(msg.width), 3)
        if rgb is not None:
            return draw_frame(rgb, result)
        size = self.video.size or (max(1, result.image_size[0]), max(1, result.image_size[1]))
        if size[0] * size[1] > 4096 * 4096:
            size = (640, 480)
        blank = PersonFrame(result.stamp_ns, result.frame_id, size, dropped=result.dropped or "no image")
        return draw_frame(None, blank)


@dataclass
class RunSummary:
    """What a replay / run did. persons: person instances published; tracks: distinct confirmed track ids;
    dropped: {reason category: frames}; skipped: frames left out by newest-only mode; fps: frames handled per
    second of wall time; stage_ms: mean milliseconds per pipeline stage over processed frames; latency_ms:
    arrival -> recorded percentiles (newest-only mode); topics: {topic: messages written}."""
    source: str
    output: Optional[str] = None
    video: Optional[str] = None
    frames: int = 0
    processed: int = 0
    persons: int = 0
    tracks: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    drop_examples: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    tracker_resets: int = 0
    inputs_not_recorded: int = 0
    wall_s: float = 0.0
    fps: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    topics: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        lines = [f"{self.frames} frames from {self.source}: {self.processed} processed, "
                 f"{sum(self.dropped.values())} dropped, {self.persons} person detections, {self.tracks} tracks, "
                 f"{self.fps:.1f} frames/s ({self.wall_s:.1f} s)"]
        for category, count in sorted(self.dropped.items()):
            lines.append(f"  dropped ({category}): {count}  e.g. {self.drop_examples.get(category, '')[:120]}")
        if self.skipped:
            lines.append(f"  skipped by newest-only mode: {self.skipped}")
        if self.tracker_resets:
            lines.append(f"  tracker resets (stamps went back in time): {self.tracker_resets}")
        if self.stage_ms:
            lines.append("  mean ms/frame: " + ", ".join(f"{k} {v:.1f}" for k, v in self.stage_ms.items()))
        if self.latency_ms:
            lines.append("  latency ms: " + ", ".join(f"{k} {v:.1f}" for k, v in self.latency_ms.items()))
        if self.output:
            lines.append(f"  bag   -> {self.output}  ({sum(self.topics.values())} messages on "
                         f"{len(self.topics)} topics)")
        if self.video:
            lines.append(f"  video -> {self.video}")
        return "\n".join(lines)


class _Tally:
    """Running counts for a RunSummary (one thread at a time)."""

    def __init__(self) -> None:
        self.summary_fields: dict[str, Any] = {"frames": 0, "processed": 0, "persons": 0, "tracker_resets": 0}
        self.track_ids: set[int] = set()
        self.dropped: dict[str, int] = {}
        self.examples: dict[str, str] = {}
        self.stage_sum: dict[str, float] = {}
        self.last_stamp: Optional[int] = None

    def add(self, result: PersonFrame) -> None:
        s = self.summary_fields
        s["frames"] += 1
        if result.dropped is not None:
            category = reason_category(result.dropped)
            self.dropped[category] = self.dropped.get(category, 0) + 1
            self.examples.setdefault(category, result.dropped)
            return
        s["processed"] += 1
        s["persons"] += len(result.persons)
        self.track_ids.update(p.track_id for p in result.persons if p.track_id > 0)
        for stage, ms in result.timings_ms.items():
            self.stage_sum[stage] = self.stage_sum.get(stage, 0.0) + ms


def detect_frame(perceptor, frame):
    """First half of one SourceFrame (any thread): the detector's output, or None for a frame that failed to
    decode (``describe_frame`` turns it into a dropped PersonFrame)."""
    return None if frame.error is not None else perceptor.detect(frame.rgb, frame.stamp_ns, frame.frame_id)


def describe_frame(perceptor, frame, detections, tally: _Tally, max_pixels: int) -> PersonFrame:
    """Second half, in frame order: the stamp rules of the module docstring, then ``Perceptor.describe``."""
    if frame.error is not None:
        w, h = frame.image_size
        size = (w, h) if 0 < w * h <= max_pixels else (0, 0)  # never draw a canvas of a garbage size
        return PersonFrame(frame.stamp_ns, frame.frame_id, size, dropped=frame.error)
    if tally.last_stamp is not None and frame.stamp_ns == tally.last_stamp:
        size = (int(frame.rgb.shape[1]), int(frame.rgb.shape[0]))
        return PersonFrame(frame.stamp_ns, frame.frame_id, size,
                           dropped=f"duplicate stamp {frame.stamp_ns} ns (same as the previous frame)")
    if tally.last_stamp is not None and frame.stamp_ns < tally.last_stamp:
        log.warning("stamps went back in time (%d < %d ns): resetting the tracker", frame.stamp_ns, tally.last_stamp)
        perceptor.reset()
        tally.summary_fields["tracker_resets"] += 1
    tally.last_stamp = frame.stamp_ns
    return perceptor.describe(detections)


def process_frames(frames: Iterable, perceptor, recorder: FrameRecorder, *, source_name: str = "frames",
                   total: Optional[int] = None, progress: bool = True, newest_only: bool = False,
                   pace_fps: Optional[float] = None,
                   on_frame: Optional[Callable[[Any, PersonFrame], None]] = None) -> RunSummary:
    """Run every SourceFrame through ``perceptor`` and ``recorder``; returns the summary.

    newest_only: a producer (this thread) hands frames to a FrameWorker thread that processes only the newest
    one (older ones are skipped and counted); pace_fps: the producer releases frames at this rate (a live
    camera; None = as fast as they are read). on_frame(source_frame, result) runs after each recorded frame.
    """
    from tqdm import tqdm

    tally = _Tally()
    max_pixels = perceptor.config.max_image_pixels
    latencies: list[float] = []
    bar = tqdm(total=total, desc="replay", unit="frame", disable=not progress, leave=False)
    start = time.perf_counter()

    def first(item):
        frame, arrived = item
        return frame, arrived, detect_frame(perceptor, frame)

    def second(staged) -> None:
        frame, arrived, detections = staged
        result = describe_frame(perceptor, frame, detections, tally, max_pixels)
        elapsed = max(time.perf_counter() - start, 1e-9)
        stats = {"fps": (tally.summary_fields["processed"] + 1) / elapsed,
                 "dropped_frames": sum(tally.dropped.values()) + (result.dropped is not None)}
        recorder.record(frame, result, stats)
        tally.add(result)
        latencies.append((time.perf_counter() - arrived) * 1000.0)
        if on_frame is not None:
            on_frame(frame, result)
        bar.update(1)
        bar.set_postfix(persons=tally.summary_fields["persons"], tracks=len(tally.track_ids), refresh=False)

    pipelined = bool(getattr(perceptor.config, "pipelined", False))
    skipped = 0
    try:
        if newest_only:
            skipped = _run_newest_only(frames, first, second, pipelined, pace_fps, bar)
        else:   # pipelined: the detector one frame ahead on a second thread; every frame still comes out, in order
            from hcq_ros.pipeline_stages import run_stages

            for _ in run_stages(((frame, time.perf_counter()) for frame in frames), first, second,
                                pipelined=pipelined):
                pass
    except KeyboardInterrupt:  # Ctrl-C ends a camera run: keep what was recorded and summarise it
        log.warning("interrupted: stopping after %d frames", tally.summary_fields["frames"])
    finally:
        bar.close()
    wall = time.perf_counter() - start
    s = tally.summary_fields
    summary = RunSummary(source=source_name, frames=s["frames"] + skipped, processed=s["processed"],
                         persons=s["persons"], tracks=len(tally.track_ids), dropped=dict(sorted(tally.dropped.items())),
                         drop_examples=tally.examples, skipped=skipped, tracker_resets=s["tracker_resets"],
                         inputs_not_recorded=recorder.inputs_not_recorded, wall_s=round(wall, 3),
                         fps=round(s["frames"] / wall, 2) if wall > 0 else 0.0,
                         stage_ms={k: round(v / max(1, s["processed"]), 2) for k, v in tally.stage_sum.items()})
    if newest_only and latencies:
        summary.latency_ms = {"p50": round(float(np.percentile(latencies, 50)), 2),
                              "p99": round(float(np.percentile(latencies, 99)), 2),
                              "max": round(float(np.max(latencies)), 2)}
    if recorder.bag is not None:
        summary.topics = dict(recorder.bag.counts)
    return summary


def _run_newest_only(frames: Iterable, first: Callable, second: Callable, pipelined: bool,
                     pace_fps: Optional[float], bar) -> int:
    """Producer loop for newest-only mode; returns how many frames the worker skipped. pipelined: the worker's
    two-stage form (``first`` on one thread, ``second`` on another); else one thread runs both."""
    from hcq_ros.ros.frame_slot import FrameWorker

    errors: list[BaseException] = []
    if not pipelined:
        worker = FrameWorker(lambda item: second(first(item)), on_error=errors.append, name="hcq_replay_worker")
    else:
        worker = FrameWorker(first, on_error=errors.append, name="hcq_replay_worker", then=second)
    worker.start()
    period = 1.0 / pace_fps if pace_fps else 0.0
    next_t = time.perf_counter()
    try:
        for frame in frames:
            if period:
                delay = next_t - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                next_t += period
            if worker.submit((frame, time.perf_counter())):
                bar.update(1)  # the replaced frame is done with (skipped)
            if errors:
                raise errors[0]
        # let the last pending frame finish: every received frame is then processed, failed or skipped
        deadline = time.perf_counter() + 600.0
        while time.perf_counter() < deadline:
            snap = worker.snapshot()
            if snap.processed + snap.errors + snap.dropped >= snap.received:
                break
            time.sleep(0.005)
    finally:
        worker.stop()
    if errors:
        raise errors[0]
    return worker.snapshot().dropped


def replay_bag(in_path: str | Path, out_path: str | Path, perceptor, *, topic: Optional[str] = None,
               storage: str = "mcap", options: Optional[MessageOptions] = None,
               namespace: str = OUTPUT_NAMESPACE, video_path: Optional[str | Path] = None, video_fps: float = 15.0,
               progress: bool = True) -> RunSummary:
    """rosbag2 ``in_path`` (images on ``topic``, default its only image topic) -> new rosbag2 ``out_path`` with
    the input images and every output topic. FileNotFoundError / BagError (a ValueError) for a missing,
    corrupted or image-less bag; FileExistsError when ``out_path`` exists."""
    from hcq_ros.sources import BagSource

    source = BagSource(in_path, topic=topic, max_pixels=perceptor.config.max_image_pixels)
    return record_source(source, out_path, perceptor, storage=storage, options=options, namespace=namespace,
                         video_path=video_path, video_fps=video_fps, progress=progress)


def record_source(source, out_path: Optional[str | Path], perceptor, *, storage: str = "mcap",
                  options: Optional[MessageOptions] = None, namespace: str = OUTPUT_NAMESPACE,
                  video_path: Optional[str | Path] = None, video_fps: Optional[float] = None,
                  record_inputs: bool = True, progress: bool = True, newest_only: bool = False,
                  pace_fps: Optional[float] = None,
                  on_frame: Optional[Callable[[Any, PersonFrame], None]] = None) -> RunSummary:
    """Any FrameSource (``hcq_ros.sources``) -> bag at ``out_path`` (None: no bag) + optional annotated video."""
    from hcq_ros.ros.bag import BagWriter

    if out_path is None and video_path is None:
        raise ValueError("nothing to write: give an output bag and/or a video path")
    if out_path is not None and Path(out_path).exists():
        raise FileExistsError(f"{out_path} exists; rosbag2 bags are never overwritten, choose a new path")
    video = VideoRecorder(video_path, video_fps or source.fps or 15.0) if video_path is not None else None
    bag = BagWriter(out_path, storage=storage) if out_path is not None else None
    try:
        if bag is not None:
            bag.open()
        recorder = FrameRecorder(bag, video, options, namespace,
                                 input_topic=source.input_topic if record_inputs else None,
                                 input_type=source.input_type)
        summary = process_frames(source.frames(), perceptor, recorder, source_name=source.describe,
                                 total=source.total, progress=progress, newest_only=newest_only,
                                 pace_fps=pace_fps, on_frame=on_frame)
    finally:
        if bag is not None:
            bag.close()  # what was written before an error stays readable
        if video is not None:
            video.close()
    summary.output = None if out_path is None else str(out_path)
    summary.video = None if video_path is None else str(video_path)
    return summary
