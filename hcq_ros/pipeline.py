"""Perceptor: one camera frame -> PersonFrame (DESIGN.md §1).

    letterbox + normalise -> HCQNet backend -> postprocessor (scores, boxes, keypoints, masks)
    -> crops of every box (one batch) -> PersonNet backend (embedding, attributes, parts)
    -> tracker (Kalman + IoU + ReID) -> PersonFrame with per-stage timings

ROS-agnostic; the node, the replay and ``hcq-ros run`` all call ``Perceptor.process``. A frame that cannot be
processed (bad image, a backend error) comes back as a PersonFrame with ``dropped`` set to the reason: the caller
keeps running and still emits one output per input frame.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional

import numpy as np

from hcq_ros.data.schema import ATTRIBUTE_NAMES, ATTRIBUTES
from hcq_ros.result import Person, PersonFrame, box_grid

log = logging.getLogger(__name__)

# Options that may change while running (ROS parameter callbacks); everything else needs a restart.
RUNTIME_OPTIONS = ("score_threshold", "mask_threshold", "nms_iou", "max_people", "tracked_only", "enable_person_net",
                   "enable_masks", "enable_parts", "enable_attributes", "enable_reid", "pose_source")
POSE_SOURCES = ("detector", "crop")


@dataclass
class PerceptorConfig:
    """backend: auto | tensorrt | onnxruntime | torch. detector_model / person_model: any file of the model's
    family (``<stem>.pt``, ``.onnx``, ``.trt.onnx``); the backend picks its sibling. input_size: (W, H) of the
    detector input (the exported size). max_image_pixels: larger frames are rejected (dropped) with a reason.
    tracked_only: output only the people of confirmed tracks (track_id > 0; ByteTrack's output); the tracker still
    sees every detection above score_threshold, and a new person appears after ``tracker.min_hits`` frames.
    pipelined: streams (replay, run, the node, ``process_stream``) run ``detect`` of the next frame on a second
    thread while this one is described (``hcq_ros.pipeline_stages``): same outputs, higher frame rate.
    pose_source: where each person's 17 joints come from: ``detector`` (HCQNet's one-pass pose) or ``crop``
    (PersonNet's heatmap pose on the person crop, mapped back to the image; the detector's joints where PersonNet
    is off or its export has no pose outputs).
    nms_iou: a detection overlapping a higher-scored one by IoU > this is a duplicate and dropped before tracking
    (``HCQPostProcess``; 1.0 keeps the detector's raw set).
    The defaults here are generic; the product's settings (thresholds calibrated for the shipped detector) are
    launch/params.yaml: ``PerceptorConfig.from_dict(hcq_ros.ros.node_params.load_perceptor_settings())``."""
    backend: str = "auto"
    detector_model: str = "engines/hcq_small.onnx"
    person_model: str = "engines/person_small.onnx"
    engine_cache_dir: Optional[str] = None
    input_size: tuple[int, int] = (320, 320)
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    nms_iou: float = 1.0
    max_people: int = 20
    tracked_only: bool = False
    enable_person_net: bool = True
    enable_masks: bool = True
    enable_parts: bool = True
    enable_attributes: bool = True
    enable_reid: bool = True
    pose_source: str = "detector"
    threads: int = 0
    pipelined: bool = False
    max_image_pixels: int = 4096 * 4096
    tracker: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "PerceptorConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown perceptor settings {unknown}; known: {sorted(known)}")
        data = dict(data)
        if "input_size" in data:
            data["input_size"] = tuple(int(v) for v in data["input_size"])
        config = cls(**data)
        config.validate()
        return config

    def validate(self) -> None:
        if not 0.0 <= self.score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in [0, 1), got {self.score_threshold}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.max_people < 1:
            raise ValueError(f"max_people must be >= 1, got {self.max_people}")
        if self.pose_source not in POSE_SOURCES:
            raise ValueError(f"pose_source must be one of {POSE_SOURCES}, got {self.pose_source!r}")
        w, h = self.input_size
        if w % 32 or h % 32 or w <= 0 or h <= 0:
            raise ValueError(f"input_size must be positive multiples of 32, got {self.input_size}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Detections:
    """The detector half of one frame (``Perceptor.detect``), handed to ``Perceptor.describe``.

    image: the input uint8 [H, W, 3] RGB (the crops come from it); image_size: (w, h); boxes: float32 [N, 4]
    xyxy pixels; scores: [N]; keypoints: [N, 17, 3] (x, y, conf) pixels; masks: bool [N, H, W] at image size;
    timings_ms: preprocess / detector / postprocess; dropped: the reason the frame was rejected, else None."""
    stamp_ns: int
    frame_id: str
    image_size: tuple[int, int]
    image: Optional[np.ndarray]
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    keypoints: np.ndarray = field(default_factory=lambda: np.zeros((0, 17, 3), np.float32))
    masks: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), bool))
    timings_ms: dict[str, float] = field(default_factory=dict)
    dropped: Optional[str] = None


class Perceptor:
    """Loads the backends and the tracker once; ``process`` one frame at a time (one caller), or ``detect`` and
    ``describe`` from two threads, one caller each (``hcq_ros.pipeline_stages``)."""

    def __init__(self, config: PerceptorConfig, detector=None, person_net=None):
        """``detector``/``person_net``: already-loaded backends (tests, benchmarks); else opened from the config."""
        from hcq_ros.models.postprocess import HCQPostProcess
        from hcq_ros.tracking.tracker import Tracker, TrackerConfig

        config.validate()
        self.config = config
        self.reasons: dict[str, str] = {}
        self.detector = detector or self._open("detector", config.detector_model)
        self.person_net = person_net
        if self.person_net is None and config.enable_person_net:
            self.person_net = self._open("person_net", config.person_model)
        self.postprocess = HCQPostProcess(score_threshold=config.score_threshold, max_people=config.max_people,
                                          mask_threshold=config.mask_threshold, nms_iou=config.nms_iou)
        self.tracker = Tracker(TrackerConfig.from_dict(config.tracker))
        if all(getattr(b, "name", "") != "torch" for b in (self.detector, self.person_net) if b is not None):
            # The postprocessor's torch ops are small; torch's own thread pool would only fight the runtime's
            # threads for the cores (measured with `hcq-ros bench`: 438 -> 13 ms postprocess at 5 people).
            import torch
            torch.set_num_threads(1)
        self.crop_size = self._crop_size()
        self._check_detector_size()

    def _open(self, role: str, path: str):
        from hcq_ros.runtime.backend import open_backend

        # Each backend names its options differently; ``auto`` drops the ones the chosen kind does not take,
        # a named kind gets only its own (an unknown keyword would be a TypeError there).
        options = {}
        kind = self.config.backend
        if self.config.threads:
            if kind in ("auto", "onnxruntime"):
                options["intra_op_threads"] = self.config.threads
            if kind in ("auto", "torch"):
                options["threads"] = self.config.threads
        if self.config.engine_cache_dir and kind in ("auto", "tensorrt"):
            options["cache_dir"] = self.config.engine_cache_dir
        backend, reason = open_backend(kind, path, **options)
        self.reasons[role] = reason
        log.info("%s backend: %s", role, reason)
        return backend

    def _crop_size(self) -> tuple[int, int]:
        """(W, H) PersonNet expects: the backend's static input shape (exports), else the export metadata's
        input_size, else the PyTorch model's deployed ``crop_size`` (the torch backend has dynamic H, W)."""
        if self.person_net is None:
            return (64, 128)
        shape = self.person_net.input_shapes.get("crops") or ()
        if len(shape) == 4 and shape[2] is not None and shape[3] is not None:
            return int(shape[3]), int(shape[2])
        size = (getattr(self.person_net, "metadata", None) or {}).get("input_size")
        if size:
            return int(size[0]), int(size[1])
        model = getattr(getattr(self.person_net, "module", None), "model", None)
        crop_hw = getattr(getattr(model, "config", None), "crop_size", None)
        if crop_hw:
            return int(crop_hw[1]), int(crop_hw[0])
        raise ValueError(f"cannot tell the PersonNet crop size from {self.person_net!r}: dynamic input shape "
                         f"{shape} and no input_size in its metadata")

    def _check_detector_size(self) -> None:
        """An export with a static input size must match ``input_size``: otherwise every frame would fail."""
        shape = tuple(self.detector.input_shapes.get("images") or ())
        if len(shape) == 4 and shape[2] is not None and shape[3] is not None:
            if (int(shape[3]), int(shape[2])) != tuple(self.config.input_size):
                raise ValueError(f"detector {self.detector!r} takes {shape[3]}x{shape[2]} images but input_size is "
                                 f"{self.config.input_size[0]}x{self.config.input_size[1]}: set input_size to the "
                                 f"exported size (or export at {self.config.input_size})")

    def set_runtime_options(self, **options) -> None:
        """Change thresholds / enabled tasks while running; other settings raise ValueError (need a restart)."""
        bad = sorted(set(options) - set(RUNTIME_OPTIONS))
        if bad:
            raise ValueError(f"cannot change {bad} at runtime (restart needed); changeable: {list(RUNTIME_OPTIONS)}")
        new = replace(self.config, **options)
        new.validate()
        if new.enable_person_net and self.person_net is None:
            self.person_net = self._open("person_net", new.person_model)
            self.crop_size = self._crop_size()
        self.config = new
        self.postprocess.score_threshold = new.score_threshold
        self.postprocess.mask_threshold = new.mask_threshold
        self.postprocess.max_people = new.max_people
        self.postprocess.nms_iou = new.nms_iou

    def reset(self) -> None:
        """Forget all tracks (a looped bag or a camera restart sends time backwards)."""
        self.tracker.reset()

    def close(self) -> None:
        for backend in (self.detector, self.person_net):
            if backend is not None:
                backend.close()

    # ------------------------------------------------------------------------------------------------ frame
    def process(self, image_rgb: np.ndarray, stamp_ns: int = 0, frame_id: str = "") -> PersonFrame:
        """uint8 [H, W, 3] RGB -> PersonFrame. Never raises for a bad frame: it is returned dropped, with a reason.
        The same as ``describe(detect(...))``; ``hcq_ros.pipeline_stages`` runs the two halves on two threads."""
        return self.describe(self.detect(image_rgb, stamp_ns, frame_id))

    def detect(self, image_rgb: np.ndarray, stamp_ns: int = 0, frame_id: str = "") -> "Detections":
        """First half: letterbox, detector, postprocess. Touches only the detector and the postprocessor, so it
        may run on another thread than ``describe`` (one caller per half). Never raises: a bad frame comes back
        with ``dropped`` set."""
        size = _image_size(image_rgb)
        problem = self.check_image(image_rgb)
        if problem:
            return Detections(stamp_ns, frame_id, size, image_rgb, dropped=problem)
        try:
            return self._detect(image_rgb, stamp_ns, frame_id)
        except Exception as exc:  # one broken frame must not stop a robot's perception
            log.exception("frame %s dropped", stamp_ns)
            return Detections(stamp_ns, frame_id, size, image_rgb,
                              dropped=f"processing error: {type(exc).__name__}: {exc}")

    def describe(self, det: "Detections") -> PersonFrame:
        """Second half: crops, PersonNet, tracker, assembly -> PersonFrame. Call it in frame order (the tracker
        is sequential). A dropped ``det`` passes through as a dropped PersonFrame (the tracker does not see it)."""
        reason = det.dropped
        if reason is None:
            try:
                return self._describe(det)
            except Exception as exc:  # as in detect: the frame is dropped with the reason, the caller keeps going
                log.exception("frame %s dropped", det.stamp_ns)
                reason = f"processing error: {type(exc).__name__}: {exc}"
        return PersonFrame(det.stamp_ns, det.frame_id, det.image_size, timings_ms=dict(det.timings_ms),
                           dropped=reason)

    def check_image(self, image) -> Optional[str]:
        """None if ``image`` can be processed, else the reason it cannot."""
        if not isinstance(image, np.ndarray):
            return f"image is not a numpy array ({type(image).__name__})"
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            return f"image must be uint8 [H, W, 3] RGB, got {image.dtype} {list(image.shape)}"
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            return f"image has zero size ({w}x{h})"
        if h * w > self.config.max_image_pixels:
            return f"image too large ({w}x{h} > {self.config.max_image_pixels} pixels)"
        return None

    def _detect(self, image: np.ndarray, stamp_ns: int, frame_id: str) -> "Detections":
        import torch

        from hcq_ros.data.torch_dataset import image_to_tensor
        from hcq_ros.data.transforms import letterbox

        c = self.config
        timings: dict[str, float] = {}
        t = time.perf_counter()
        h, w = image.shape[:2]
        boxed, scale, pad = letterbox(image, c.input_size)
        x = image_to_tensor(boxed).numpy()[None]
        t = _lap(timings, "preprocess", t)
        raw = self.detector.infer({"images": x})
        t = _lap(timings, "detector", t)
        outputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in raw.items()}
        det = self.postprocess(outputs, [(h, w)], letterbox=[(scale, pad[0], pad[1])],
                               input_size=(c.input_size[1], c.input_size[0]))[0]
        found = Detections(stamp_ns, frame_id, (w, h), image, det["boxes"].numpy(), det["scores"].numpy(),
                           det["keypoints"].numpy(), det["masks"].numpy(), timings)
        _lap(timings, "postprocess", t)
        return found

    def _describe(self, det: "Detections") -> PersonFrame:
        c = self.config
        timings = dict(det.timings_ms)
        boxes, scores = det.boxes, det.scores
        person_out = self._run_person_net(det.image, boxes, timings) if len(boxes) and self.person_net is not None \
            and c.enable_person_net else None
        t = time.perf_counter()
        embeddings = person_out["embedding"] if person_out is not None and "embedding" in person_out \
            and c.enable_reid else None
        tracks = self.tracker.update(boxes, scores, embeddings, stamp_ns=det.stamp_ns)
        t = _lap(timings, "tracker", t)

        keypoints = self._keypoints(det.keypoints, person_out)
        persons = []
        for i in range(len(boxes)):
            if c.tracked_only and tracks[i].track_id <= 0:
                continue   # a detection no confirmed track owns: a newcomer, or a one-frame false positive
            persons.append(self._person(i, boxes[i], scores[i], keypoints[i], det.masks[i], tracks[i].track_id,
                                        person_out))
        _lap(timings, "assemble", t)
        return PersonFrame(det.stamp_ns, det.frame_id, det.image_size, persons, timings)

    def _keypoints(self, detector_keypoints: np.ndarray, person_out) -> np.ndarray:
        """[N, 17, 3] image (x, y, conf) from the source ``config.pose_source`` names (see PerceptorConfig)."""
        if self.config.pose_source != "crop" or person_out is None or "keypoints" not in person_out:
            return detector_keypoints
        from hcq_ros.data.crops import keypoints_to_image

        out = np.empty_like(detector_keypoints)
        out[..., :2] = keypoints_to_image(person_out["keypoints"], person_out["_affines"], self.crop_size)
        out[..., 2] = person_out["keypoint_conf"]
        return out

    def _run_person_net(self, image: np.ndarray, boxes: np.ndarray, timings: dict) -> dict:
        from hcq_ros.data.crops import crop_persons
        from hcq_ros.data.torch_dataset import normalize_images

        t = time.perf_counter()
        crops, affines = crop_persons(image, boxes, crop_size=self.crop_size)
        x = normalize_images(crops)
        t = _lap(timings, "crops", t)
        out = self.person_net.infer({"crops": x})
        out["_affines"] = affines
        _lap(timings, "person_net", t)
        return out

    def _person(self, i: int, box, score, keypoints, full_mask, track_id: int, person_out) -> Person:
        from hcq_ros.data.crops import paste_to_box

        c = self.config
        x0, y0, bw, bh = box_grid(box)
        mask = _grid_crop(full_mask, x0, y0, bw, bh) if c.enable_masks else None
        parts = attributes = None
        embedding = np.zeros(0, np.float32)
        if person_out is not None:
            if c.enable_parts and ("part_labels" in person_out or "part_logits" in person_out):
                # Labels on the crop grid, pasted nearest: pasting the [h, w, 15] float logits and taking the
                # argmax at box size costs ~10x more (about 5 ms for a 150x350 px person on this CPU). Exports
                # carry the argmax (part_labels); numpy's over the channel axis is the fallback for older ones.
                labels = (person_out["part_labels"][i] if "part_labels" in person_out
                          else person_out["part_logits"][i].argmax(0)).astype(np.uint8)   # [h, w]
                parts = paste_to_box(labels, person_out["_affines"][i], box)
                if mask is not None:
                    parts[~mask] = 0   # one person's parts live inside that person's mask
            if c.enable_attributes and "attr_" + ATTRIBUTE_NAMES[0] in person_out:
                attributes = {}
                for name in ATTRIBUTE_NAMES:
                    p = _softmax(person_out["attr_" + name][i])
                    attributes[name] = (ATTRIBUTES[name][int(p.argmax())], float(p.max()))
            if c.enable_reid and "embedding" in person_out:
                embedding = person_out["embedding"][i].astype(np.float32)
        return Person(track_id=int(track_id), score=float(score), box=box, keypoints=keypoints, mask=mask,
                      parts=parts, attributes=attributes or {}, embedding=embedding)

    def process_stream(self, frames):
        """Iterate PersonFrames for an iterable of (stamp_ns, frame_id, image), one per frame, in order; with
        ``config.pipelined`` the detector runs one frame ahead on a second thread. Live sources that should skip
        frames instead: ``hcq_ros.ros.frame_slot.FrameWorker`` (the node's newest-frame slot)."""
        from hcq_ros.pipeline_stages import run_stages

        yield from run_stages(frames, lambda f: self.detect(f[2], f[0], f[1]), self.describe,
                              pipelined=self.config.pipelined)


def _lap(timings: dict, stage: str, t0: float) -> float:
    now = time.perf_counter()
    timings[stage] = round((now - t0) * 1000.0, 3)
    return now


def _image_size(image) -> tuple[int, int]:
    shape = getattr(image, "shape", ())
    return (int(shape[1]), int(shape[0])) if len(shape) >= 2 else (0, 0)


def _grid_crop(full: np.ndarray, x0: int, y0: int, bw: int, bh: int) -> np.ndarray:
    """The [bh, bw] window of a full-image map at (x0, y0); parts outside the image are False/0."""
    out = np.zeros((bh, bw), dtype=full.dtype)
    h, w = full.shape[:2]
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(w, x0 + bw), min(h, y0 + bh)
    if xb > xa and yb > ya:
        out[ya - y0:yb - y0, xa - x0:xb - x0] = full[ya:yb, xa:xb]
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def default_model_paths(engines_dir: str | Path = "engines") -> tuple[Path, Path]:
    """The shipped detector and PersonNet (any file of each family)."""
    d = Path(engines_dir)
    return d / "hcq_small.onnx", d / "person_small.onnx"
