"""PersonFrame -> ROS messages (DESIGN.md §3, §4, §10), one code path for both message libraries.

Off ROS (replay, demo, MCAP) the builders below make rosbags typestore objects; inside the node they make rclpy
objects; :class:`~hcq_ros.ros.message_factory.MessageFactory` is the only place that knows the difference.

>>> factory = MessageFactory.rosbags()
>>> msgs = frame_to_messages(frame, image_rgb, factory.header(frame.stamp_ns, frame.frame_id), factory)
>>> msgs["persons"]            # hcq_ros/msg/PersonArray
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from hcq_ros.data.schema import COCO_SKELETON, KEYPOINT_NAMES
from hcq_ros.result import Person, PersonFrame
from hcq_ros.ros.image_conversion import rgb_to_image_msg
from hcq_ros.ros.message_factory import MessageFactory  # noqa: F401 (the builders' callers import it here)
from hcq_ros.ros.visualization import (KEYPOINT_THRESHOLD, clipped_grid, draw_frame, grid_crop, person_label,
                                       track_color)

PERSON_ARRAY = "hcq_ros/msg/PersonArray"
TOPIC_TYPES = {  # topic suffix under the node namespace -> message type
    "persons": PERSON_ARRAY,
    "detections": "vision_msgs/msg/Detection2DArray",
    "markers": "visualization_msgs/msg/MarkerArray",
    "image_annotated": "sensor_msgs/msg/Image",
    "diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
}
REP155_PREFIX = "/humans/bodies"
REP155_TYPES = {"tracked": "hri_msgs/msg/IdsList", "roi": "hri_msgs/msg/NormalizedRegionOfInterest2D",
                "skeleton2d": "hri_msgs/msg/Skeleton2D"}



def topic_type(topic: str) -> str:
    """Message type of a key of :func:`frame_to_messages` (relative suffix or REP-155 absolute topic)."""
    if topic in TOPIC_TYPES:
        return TOPIC_TYPES[topic]
    if topic.startswith(REP155_PREFIX + "/") and topic.rsplit("/", 1)[1] in REP155_TYPES:
        return REP155_TYPES[topic.rsplit("/", 1)[1]]
    raise ValueError(f"unknown output topic {topic!r}; known: {sorted(TOPIC_TYPES)} and {REP155_PREFIX}/...")


# ------------------------------------------------------------------------------------------------ builders

def track_text(track_id: int) -> str:
    """Track id as message text: "" while tentative (0), same id space as REP-155 body ids."""
    return str(int(track_id)) if track_id > 0 else ""


def _header(header: Any, frame: PersonFrame, factory: MessageFactory) -> Any:
    return header if header is not None else factory.header(frame.stamp_ns, frame.frame_id)


def _clipped_box(person: Person, width: int, height: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in person.box)
    x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    return x0, y0, max(x0, x1), max(y0, y1)


def _keypoint(row: np.ndarray) -> tuple[float, float, float]:
    """(x, y, score) as published: score in [0, 1]; a non-predicted joint is (0, 0, 0)."""
    x, y, score = (float(v) for v in row)
    if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(score)) or score <= 0:
        return 0.0, 0.0, 0.0
    return x, y, min(score, 1.0)


def person_to_msg(person: Person, frame: PersonFrame, header: Any, factory: MessageFactory,
                  include_masks: bool = True, include_parts: bool = True, include_embedding: bool = True) -> Any:
    """hcq_ros/msg/Person. roi = Person.box_grid() clipped to the image; mask (0/255) and parts (labels) are the
    roi-sized crops of the box-grid maps (empty images when absent or not included)."""
    width, height = frame.image_size
    x0, y0, x1, y1, _, _ = clipped_grid(person, width, height)
    roi = factory.make("sensor_msgs/msg/RegionOfInterest", x_offset=x0, y_offset=y0, width=x1 - x0,
                       height=y1 - y0, do_rectify=False)
    keypoints = [factory.make("hcq_ros/msg/Keypoint2D", **dict(zip("x y score".split(), _keypoint(row))))
                 for row in person.keypoints]
    mask = grid_crop(person.mask, person, width, height, "mask") if include_masks else None
    parts = grid_crop(person.parts, person, width, height, "parts") if include_parts else None
    attributes = [factory.make("hcq_ros/msg/Attribute", name=str(name), value=str(value), score=float(score))
                  for name, (value, score) in person.attributes.items()]
    embedding = person.embedding if include_embedding else np.zeros(0, np.float32)
    return factory.make(
        "hcq_ros/msg/Person", id=track_text(person.track_id), score=float(person.score), roi=roi,
        keypoints=keypoints,
        mask=factory.mono8(None if mask is None else mask.astype(np.uint8) * 255, header),
        parts=factory.mono8(parts, header), attributes=attributes,
        embedding=np.asarray(embedding, np.float32))


def frame_to_person_array(frame: PersonFrame, header: Any, factory: MessageFactory, include_masks: bool = True,
                          include_parts: bool = True, include_embedding: bool = True) -> Any:
    """hcq_ros/msg/PersonArray; header copied from the input image (built from the frame when None)."""
    header = _header(header, frame, factory)
    persons = [person_to_msg(p, frame, header, factory, include_masks, include_parts, include_embedding)
               for p in frame.persons]
    return factory.make(PERSON_ARRAY, header=header, persons=persons)


def frame_to_detection_array(frame: PersonFrame, header: Any, factory: MessageFactory) -> Any:
    """vision_msgs/Detection2DArray (4.x): box centre/size in pixels (clipped to the image), id = track id text,
    one hypothesis class_id "person" with the detection score."""
    header = _header(header, frame, factory)
    width, height = frame.image_size
    detections = []
    for p in frame.persons:
        x0, y0, x1, y1 = _clipped_box(p, width, height)
        centre = factory.make("vision_msgs/msg/Pose2D", theta=0.0, position=factory.make(
            "vision_msgs/msg/Point2D", x=(x0 + x1) / 2, y=(y0 + y1) / 2))
        bbox = factory.make("vision_msgs/msg/BoundingBox2D", center=centre, size_x=x1 - x0, size_y=y1 - y0)
        hypothesis = factory.make("vision_msgs/msg/ObjectHypothesisWithPose", hypothesis=factory.make(
            "vision_msgs/msg/ObjectHypothesis", class_id="person", score=float(p.score)))
        detections.append(factory.make("vision_msgs/msg/Detection2D", header=header, results=[hypothesis],
                                       bbox=bbox, id=track_text(p.track_id)))
    return factory.make("vision_msgs/msg/Detection2DArray", header=header, detections=detections)


def frame_to_markers(frame: PersonFrame, header: Any, factory: MessageFactory, pixel_scale: float = 0.001,
                     lifetime_s: float = 0.5, line_width_px: float = 2.0, text_height_px: float = 12.0,
                     keypoint_threshold: float = KEYPOINT_THRESHOLD) -> Any:
    """visualization_msgs/MarkerArray: DELETEALL first (stale markers vanish), then per person a LINE_LIST
    skeleton (ns "skeleton") and a TEXT_VIEW_FACING label "#id score" + top attributes (ns "labels"), both with
    marker id = the person's index and ``lifetime_s`` (so markers disappear when the node stops publishing).

    Convention: markers are drawn in the image plane of header.frame_id (the camera optical frame: x right,
    y down, z forward). Pixel (u, v) becomes the point (u * pixel_scale, v * pixel_scale, 0): the image's
    top-left corner is at the frame origin and one pixel is ``pixel_scale`` metres (default 1 mm, a 640 x 480
    image spans 0.64 x 0.48 m). Looking from behind the camera along +z, RViz shows the skeletons exactly as the
    image does. These are 2D results placed on a plane, not metric 3D positions.
    """
    if pixel_scale <= 0 or lifetime_s < 0:
        raise ValueError(f"pixel_scale must be > 0 and lifetime_s >= 0, got {pixel_scale}, {lifetime_s}")
    header = _header(header, frame, factory)
    marker = "visualization_msgs/msg/Marker"
    markers = [factory.make(marker, header=header, action=factory.constant(marker, "DELETEALL"))]

    def point(u: float, v: float) -> Any:
        return factory.make("geometry_msgs/msg/Point", x=u * pixel_scale, y=v * pixel_scale, z=0.0)

    def pose(u: float, v: float) -> Any:
        return factory.make("geometry_msgs/msg/Pose", position=point(u, v),
                            orientation=factory.make("geometry_msgs/msg/Quaternion", w=1.0))

    for index, p in enumerate(frame.persons):
        red, green, blue = (c / 255.0 for c in track_color(p.track_id))
        color = factory.make("std_msgs/msg/ColorRGBA", r=red, g=green, b=blue, a=1.0)
        kp = [_keypoint(row) for row in p.keypoints]
        ok = [score >= keypoint_threshold and score > 0 for _, _, score in kp]
        points = [point(*kp[j - 1][:2]) for a, b in COCO_SKELETON if ok[a - 1] and ok[b - 1] for j in (a, b)]
        if points:  # an empty LINE_LIST makes RViz complain
            markers.append(factory.make(
                marker, header=header, ns="skeleton", id=index, type=factory.constant(marker, "LINE_LIST"),
                action=factory.constant(marker, "ADD"), pose=pose(0.0, 0.0), color=color, points=points,
                scale=factory.make("geometry_msgs/msg/Vector3", x=line_width_px * pixel_scale),
                lifetime=factory.duration(lifetime_s)))
        x0, y0, x1, _ = (float(v) for v in p.box)
        markers.append(factory.make(
            marker, header=header, ns="labels", id=index, type=factory.constant(marker, "TEXT_VIEW_FACING"),
            action=factory.constant(marker, "ADD"), pose=pose((x0 + x1) / 2, y0 - text_height_px), color=color,
            scale=factory.make("geometry_msgs/msg/Vector3", z=text_height_px * pixel_scale),
            text="\n".join(person_label(p)), lifetime=factory.duration(lifetime_s)))
    return factory.make("visualization_msgs/msg/MarkerArray", markers=markers)


def _diagnostic_value(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.3f}"
    return str(value)


def frame_to_diagnostics(frame: PersonFrame, header: Any, factory: MessageFactory,
                         stats: Optional[Mapping[str, Any]] = None, name: str = "hcq_perception",
                         hardware_id: str = "") -> Any:
    """diagnostic_msgs/DiagnosticArray with one status; every key carries its unit.

    Values: ``persons`` (count), then ``stats`` as given by the caller - by convention ``latency_ms`` (image
    stamp to publish), ``fps`` (processed frames per second), ``dropped_frames`` (count since start) - then one
    ``<stage>_ms`` per entry of frame.timings_ms. Level WARN with the reason when the frame was dropped, else OK.
    hardware_id defaults to the camera frame_id.
    """
    header = _header(header, frame, factory)
    status_type = "diagnostic_msgs/msg/DiagnosticStatus"
    pairs: list[tuple[str, Any]] = [("persons", len(frame.persons))]
    pairs += [(str(key), value) for key, value in (stats or {}).items()]
    pairs += [(stage if stage.endswith("_ms") else f"{stage}_ms", ms) for stage, ms in frame.timings_ms.items()]
    if frame.dropped is not None:
        level, message = factory.constant(status_type, "WARN"), f"frame dropped: {frame.dropped}"
    else:
        level, message = factory.constant(status_type, "OK"), f"{len(frame.persons)} persons"
    values = [factory.make("diagnostic_msgs/msg/KeyValue", key=key, value=_diagnostic_value(value))
              for key, value in pairs]
    status = factory.make(status_type, level=level, name=name, message=message,
                          hardware_id=hardware_id or frame.frame_id, values=values)
    return factory.make("diagnostic_msgs/msg/DiagnosticArray", header=header, status=[status])


def skeleton2d_sources(factory: MessageFactory) -> list[int]:
    """For each hri_msgs/Skeleton2D index (read from the message's constants: NOSE=0, NECK=1, ...), the COCO
    keypoint index that fills it; -1 for NECK, which COCO lacks (it is the shoulder midpoint)."""
    slots = {name: int(factory.constant(REP155_TYPES["skeleton2d"], name.upper()))
             for name in ("neck", *KEYPOINT_NAMES)}
    if sorted(slots.values()) != list(range(len(slots))):
        raise ValueError(f"hri_msgs/Skeleton2D constants are not the 18 indices 0..17: {slots}")
    sources = [0] * len(slots)
    for name, slot in slots.items():
        sources[slot] = -1 if name == "neck" else KEYPOINT_NAMES.index(name)
    return sources


def frame_to_rep155(frame: PersonFrame, header: Any, factory: MessageFactory) -> dict[str, Any]:
    """REP-155 body topics for the confirmed tracks (tentative ones have no id yet):
    ``/humans/bodies/tracked`` IdsList; per id ``.../<id>/roi`` NormalizedRegionOfInterest2D (box / image size,
    c = score) and ``.../<id>/skeleton2d`` Skeleton2D (18 OpenPose-order points normalised by image size;
    neck = shoulder midpoint with c = the lower shoulder score; missing joints (0, 0, 0))."""
    header = _header(header, frame, factory)
    width, height = frame.image_size
    if width <= 0 or height <= 0:
        raise ValueError(f"frame.image_size must be positive to normalise REP-155 coordinates, got {frame.image_size}")
    confirmed = [p for p in frame.persons if p.track_id > 0]
    out = {f"{REP155_PREFIX}/tracked": factory.make(REP155_TYPES["tracked"], header=header,
                                                    ids=[track_text(p.track_id) for p in confirmed])}
    sources = skeleton2d_sources(factory)
    left, right = KEYPOINT_NAMES.index("left_shoulder"), KEYPOINT_NAMES.index("right_shoulder")
    for p in confirmed:
        base = f"{REP155_PREFIX}/{track_text(p.track_id)}"
        x0, y0, x1, y1 = _clipped_box(p, width, height)
        out[f"{base}/roi"] = factory.make(REP155_TYPES["roi"], header=header, xmin=x0 / width, ymin=y0 / height,
                                          xmax=x1 / width, ymax=y1 / height, c=float(p.score))
        kp = [_keypoint(row) for row in p.keypoints]
        (lx, ly, lc), (rx, ry, rc) = kp[left], kp[right]
        neck = ((lx + rx) / 2, (ly + ry) / 2, min(lc, rc)) if lc > 0 and rc > 0 else (0.0, 0.0, 0.0)
        points = []
        for source in sources:
            x, y, c = neck if source < 0 else kp[source]
            points.append(factory.make("hri_msgs/msg/NormalizedPointOfInterest2D", x=x / width, y=y / height, c=c))
        out[f"{base}/skeleton2d"] = factory.make(REP155_TYPES["skeleton2d"], header=header, skeleton=points)
    return out


@dataclass
class MessageOptions:
    """What :func:`frame_to_messages` publishes and how (the node's and the replay's parameters)."""
    persons: bool = True
    detections: bool = True
    markers: bool = True
    image_annotated: bool = True
    diagnostics: bool = True
    rep155: bool = False
    include_masks: bool = True
    include_parts: bool = True
    include_embedding: bool = True
    draw_masks: bool = True
    draw_parts: bool = False
    draw_keypoints: bool = True
    draw_labels: bool = True
    annotated_encoding: str = "rgb8"   # rgb8 | bgr8
    marker_pixel_scale: float = 0.001  # metres per pixel in the image plane (see frame_to_markers)
    marker_lifetime_s: float = 0.5

    def __post_init__(self):
        if self.annotated_encoding not in ("rgb8", "bgr8"):
            raise ValueError(f"annotated_encoding must be 'rgb8' or 'bgr8', got {self.annotated_encoding!r}")
        if self.marker_pixel_scale <= 0 or self.marker_lifetime_s < 0:
            raise ValueError(f"marker_pixel_scale must be > 0 and marker_lifetime_s >= 0, got "
                             f"{self.marker_pixel_scale}, {self.marker_lifetime_s}")


def frame_to_messages(frame: PersonFrame, image_rgb: Optional[np.ndarray], header: Any, factory: MessageFactory,
                      options: Optional[MessageOptions] = None,
                      stats: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """All outputs of one frame: {topic: message}. Keys are the suffixes of TOPIC_TYPES (the node publishes
    them under its namespace; "diagnostics" goes to /diagnostics) and, with options.rep155, absolute REP-155
    topics. Every message carries ``header`` (the input image's; built from the frame when None).

    image_rgb: uint8 [H, W, 3] input image for "image_annotated" (skipped when None, unless the frame was
    dropped: the reason is then drawn on a blank canvas). A dropped frame has no perception result, so it only
    yields "image_annotated" and "diagnostics" (WARN); stats: see frame_to_diagnostics.
    """
    options = options or MessageOptions()
    header = _header(header, frame, factory)
    out: dict[str, Any] = {}
    processed = frame.dropped is None
    if processed and options.persons:
        out["persons"] = frame_to_person_array(frame, header, factory, options.include_masks,
                                               options.include_parts, options.include_embedding)
    if processed and options.detections:
        out["detections"] = frame_to_detection_array(frame, header, factory)
    if processed and options.markers:
        out["markers"] = frame_to_markers(frame, header, factory, pixel_scale=options.marker_pixel_scale,
                                          lifetime_s=options.marker_lifetime_s)
    drawable = image_rgb is not None or (not processed and min(frame.image_size) > 0)
    if options.image_annotated and drawable:
        drawn = draw_frame(image_rgb, frame, show_masks=options.draw_masks, show_parts=options.draw_parts,
                           show_keypoints=options.draw_keypoints, show_labels=options.draw_labels)
        out["image_annotated"] = rgb_to_image_msg(drawn, header, options.annotated_encoding,
                                                  factory.type("sensor_msgs/msg/Image"))
    if options.diagnostics:
        out["diagnostics"] = frame_to_diagnostics(frame, header, factory, stats)
    if processed and options.rep155:
        out.update(frame_to_rep155(frame, header, factory))
    return out
