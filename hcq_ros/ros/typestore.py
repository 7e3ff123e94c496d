"""A rosbags typestore that knows every message type hcq_ros writes, without a ROS installation.

The four hcq_ros message types are parsed at runtime from the same ``msg/*.msg`` files that
``rosidl_generate_interfaces`` builds inside a colcon workspace (single source of truth). Standard types we
publish that the rosbags stores do not ship (vision_msgs, hri_msgs) are registered from the definitions below,
written after the ROS 2 Humble releases of those packages (vision_msgs 4.x, hri_msgs 2.x). Only field names,
types and order matter for CDR and for the RIHS01 type hash, so they must match the released packages exactly.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg
from rosbags.typesys import get_typestore as _rosbags_typestore
from rosbags.typesys.base import Nodetype
from rosbags.typesys.store import Typestore

PACKAGE = "hcq_ros"
HCQ_MSG_NAMES = ("Keypoint2D", "Attribute", "Person", "PersonArray")
HCQ_MSG_TYPES = tuple(f"{PACKAGE}/msg/{name}" for name in HCQ_MSG_NAMES)
# Environment override for the msg directory (e.g. a relocated install).
MSG_DIR_ENV = "HCQ_ROS_MSG_DIR"

# vision_msgs 4.x (Humble/Jazzy): Detection2D carries `string id` (the track id) and the box centre is a
# Pose2D made of a Point2D; older 3.x tutorials show different layouts.
# hri_msgs 2.x (REP-155): coordinates normalised to [0, 1] by image width/height; `c` is a confidence.
# Skeleton2D uses the 18-point OpenPose COCO order (index constants below).
EXTRA_MSG_DEFINITIONS: dict[str, str] = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta  # radians, counter-clockwise\n",
    "vision_msgs/msg/BoundingBox2D": (
        "vision_msgs/Pose2D center  # box centre, pixels\nfloat64 size_x\nfloat64 size_y\n"),
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": (
        "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n"),
    "vision_msgs/msg/Detection2D": (
        "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
        "vision_msgs/BoundingBox2D bbox\nstring id\n"),
    "vision_msgs/msg/Detection2DArray": "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n",
    "hri_msgs/msg/IdsList": "std_msgs/Header header\nstring[] ids\n",
    "hri_msgs/msg/NormalizedPointOfInterest2D": "float32 x\nfloat32 y\nfloat32 c\n",
    "hri_msgs/msg/NormalizedRegionOfInterest2D": (
        "std_msgs/Header header\nfloat32 xmin\nfloat32 ymin\nfloat32 xmax\nfloat32 ymax\nfloat32 c\n"),
    "hri_msgs/msg/Skeleton2D": (
        "uint8 NOSE=0\nuint8 NECK=1\nuint8 RIGHT_SHOULDER=2\nuint8 RIGHT_ELBOW=3\nuint8 RIGHT_WRIST=4\n"
        "uint8 LEFT_SHOULDER=5\nuint8 LEFT_ELBOW=6\nuint8 LEFT_WRIST=7\nuint8 RIGHT_HIP=8\nuint8 RIGHT_KNEE=9\n"
        "uint8 RIGHT_ANKLE=10\nuint8 LEFT_HIP=11\nuint8 LEFT_KNEE=12\nuint8 LEFT_ANKLE=13\nuint8 LEFT_EYE=14\n"
        "uint8 RIGHT_EYE=15\nuint8 LEFT_EAR=16\nuint8 RIGHT_EAR=17\n"
        "std_msgs/Header header\nhri_msgs/NormalizedPointOfInterest2D[] skeleton  # 18 points, order above\n"),
}

# Standard types hcq_ros publishes; get_typestore() guarantees all of them are present.
PUBLISHED_STANDARD_TYPES = (
    "sensor_msgs/msg/Image",
    "sensor_msgs/msg/CompressedImage",
    "vision_msgs/msg/Detection2DArray",
    "visualization_msgs/msg/MarkerArray",
    "diagnostic_msgs/msg/DiagnosticArray",
    "hri_msgs/msg/IdsList",
    "hri_msgs/msg/NormalizedRegionOfInterest2D",
    "hri_msgs/msg/Skeleton2D",
)


def msg_dir_candidates() -> list[Path]:
    """Directories that may hold hcq_ros' ``*.msg`` files, in search order.

    1. ``$HCQ_ROS_MSG_DIR``; 2. the directory next to the ``hcq_ros`` package: ``<repo>/msg`` in the source
    tree and in editable installs;
    3. ``<prefix>/share/hcq_ros/msg`` for the prefix this module is installed under
    (``<prefix>/lib/pythonX.Y/site-packages/hcq_ros/ros/typestore.py``: colcon install or pip);
    4. ``sys.prefix`` / ``sys.base_prefix`` / user base ``share/hcq_ros/msg`` (setup.py data_files);
    5. every ``$AMENT_PREFIX_PATH`` entry's ``share/hcq_ros/msg`` (a sourced ROS 2 workspace).
    """
    here = Path(__file__).resolve()
    out: list[Path] = []
    if os.environ.get(MSG_DIR_ENV):
        out.append(Path(os.environ[MSG_DIR_ENV]))
    out.append(here.parents[2] / "msg")
    share = Path("share") / PACKAGE / "msg"
    if len(here.parents) > 5:
        out.append(here.parents[5] / share)
    import site  # late: only needed here
    for prefix in (sys.prefix, sys.base_prefix, site.getuserbase()):
        out.append(Path(prefix) / share)
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            out.append(Path(prefix) / share)
    unique: list[Path] = []
    for path in out:
        if path not in unique:
            unique.append(path)
    return unique


def find_msg_dir() -> Path:
    """The first candidate directory that holds all four hcq_ros ``.msg`` files.

    Raises FileNotFoundError naming every place it looked.
    """
    candidates = msg_dir_candidates()
    for directory in candidates:
        if all((directory / f"{name}.msg").is_file() for name in HCQ_MSG_NAMES):
            return directory
    looked = "\n  ".join(str(p) for p in candidates)
    raise FileNotFoundError(
        f"hcq_ros message definitions ({', '.join(n + '.msg' for n in HCQ_MSG_NAMES)}) not found; looked in:\n"
        f"  {looked}\nSet ${MSG_DIR_ENV} to the directory holding them, or reinstall hcq_ros.")


def _split_msgtype(msgtype: str) -> tuple[str, str]:
    """'pkg/msg/Name' or 'pkg/Name' -> ('pkg', 'Name')."""
    parts = msgtype.split("/")
    if len(parts) == 3 and parts[1] == "msg":
        return parts[0], parts[2]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise ValueError(f"message type {msgtype!r} is not of the form 'package/msg/Name'")


def msg_text(msgtype: str, msg_dir: Path | None = None) -> str:
    """The ``.msg`` source text of an hcq_ros type or of one of the bundled standard types (comments kept).

    msgtype: 'hcq_ros/msg/Person' (or 'hcq_ros/Person'). For the full self-contained definition with all
    dependencies, as embedded in bags, use :func:`message_definition`.
    """
    package, name = _split_msgtype(msgtype)
    full = f"{package}/msg/{name}"
    if package == PACKAGE:
        if name not in HCQ_MSG_NAMES:
            raise ValueError(f"unknown hcq_ros message {msgtype!r}; known: {list(HCQ_MSG_TYPES)}")
        return ((msg_dir or find_msg_dir()) / f"{name}.msg").read_text(encoding="utf-8")
    if full in EXTRA_MSG_DEFINITIONS:
        return EXTRA_MSG_DEFINITIONS[full]
    raise ValueError(f"no .msg text kept for {msgtype!r}; standard types come from the rosbags store")


def _pick_store() -> Stores:
    """ROS 2 Humble (the target distro) or, if this rosbags lacks it, the newest ROS 2 store it ships."""
    if hasattr(Stores, "ROS2_HUMBLE"):
        return Stores.ROS2_HUMBLE
    ros2 = [s for s in Stores if s.name.startswith("ROS2_")]
    if not ros2:
        raise RuntimeError("installed rosbags has no ROS 2 typestore")
    return ros2[-1]  # Stores lists distros in release order


def build_typestore(msg_dir: Path | None = None) -> Typestore:
    """A new typestore: the ROS 2 store + hcq_ros/msg types + the standard types the store lacks."""
    store = _rosbags_typestore(_pick_store())
    msg_dir = msg_dir or find_msg_dir()
    types: dict = {}
    for msgtype, text in EXTRA_MSG_DEFINITIONS.items():
        if msgtype not in store.fielddefs:
            types.update(get_types_from_msg(text, msgtype))
    for name in HCQ_MSG_NAMES:
        text = (msg_dir / f"{name}.msg").read_text(encoding="utf-8")
        try:
            types.update(get_types_from_msg(text, f"{PACKAGE}/msg/{name}"))
        except Exception as exc:  # rosbags raises its own parse errors; name the file
            raise ValueError(f"cannot parse {msg_dir / (name + '.msg')}: {exc}") from exc
    store.register(types)
    # rosbags' parser accepts a misspelt type as a reference to a message of that name: catch it here.
    for msgtype in types:
        for field, ref in _referenced_types(store.fielddefs[msgtype][1]):
            if ref not in store.fielddefs:
                where = msg_dir / f"{msgtype.rsplit('/', 1)[1]}.msg" if msgtype in HCQ_MSG_TYPES else msgtype
                raise ValueError(f"{where}: field {field!r} refers to unknown message type {ref!r}")
    missing = [t for t in (*PUBLISHED_STANDARD_TYPES, *HCQ_MSG_TYPES) if t not in store.fielddefs]
    if missing:
        raise RuntimeError(f"typestore is missing {missing} after registration")
    return store


def _referenced_types(fields: list) -> list[tuple[str, str]]:
    """(field name, message type) for every field of a rosbags field list that is a message or an array of them."""
    out = []
    for name, (nodetype, args) in fields:
        if nodetype == Nodetype.NAME:
            out.append((name, args))
        elif nodetype in (Nodetype.ARRAY, Nodetype.SEQUENCE) and args[0][0] == Nodetype.NAME:
            out.append((name, args[0][1]))
    return out


@functools.lru_cache(maxsize=1)
def get_typestore() -> Typestore:
    """The shared typestore (built once per process; do not register conflicting types into it)."""
    return build_typestore()


def message_definition(msgtype: str, typestore: Typestore | None = None) -> tuple[str, str]:
    """(msgdef, rihs01) for a type as rosbag2 stores it: ``ros2msg`` text with every dependency appended
    as ``MSG: pkg/Name`` sections (so any reader decodes it without our .msg files), and the RIHS01 hash.
    """
    store = typestore or get_typestore()
    if msgtype not in store.fielddefs:
        raise ValueError(f"message type {msgtype!r} is not in the typestore")
    msgdef, _ = store.generate_msgdef(msgtype, ros_version=2)
    return msgdef, store.hash_rihs01(msgtype)
