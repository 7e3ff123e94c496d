"""How ROS messages are constructed, off ROS (rosbags typestore dataclasses) and on ROS (rclpy classes).

Only :class:`MessageFactory` knows the difference (the builders in :mod:`hcq_ros.ros.messages` call ``make``):

- rosbags classes are dataclasses: every field must be passed to the constructor, primitive arrays are numpy
  arrays (``uint8[] data``, ``float32[] embedding``), ``byte`` fields are ints. Missing fields are filled from
  the typestore's field definitions (zeros, "", empty arrays, nested defaults).
- rclpy classes construct empty and take attributes; numeric sequences must be ``array.array`` (or lists of
  Python scalars), ``byte`` fields are ``bytes``, numpy scalars are refused. The factory converts values using
  the class's ``get_fields_and_field_types()``.
"""
from __future__ import annotations

import array
import importlib
from typing import Any, Callable, Mapping, Optional

import numpy as np

from hcq_ros.ros.image_conversion import array_to_image_msg

# rosbags field-definition node kinds (rosbags.typesys.base.Nodetype, an IntEnum; kept as ints so this module
# imports without rosbags on a ROS machine).
_BASE, _NAME, _ARRAY, _SEQUENCE = 1, 2, 3, 4
_NUMPY_DTYPES = {"bool": np.bool_, "byte": np.uint8, "char": np.uint8, "int8": np.int8, "uint8": np.uint8,
                 "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32,
                 "int64": np.int64, "uint64": np.uint64, "float32": np.float32, "float64": np.float64}
# rosidl primitive names (rclpy's get_fields_and_field_types) -> array.array typecode of their sequences.
_RCLPY_TYPECODES = {"float": "f", "double": "d", "int8": "b", "uint8": "B", "int16": "h", "uint16": "H",
                    "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q"}
# Non-zero defaults that rosidl gives and rosbags (which ignores .msg defaults) does not.
_ROSIDL_DEFAULTS = {"geometry_msgs/msg/Quaternion": {"w": 1.0}}

def normalize_msgtype(msgtype: str) -> str:
    """'pkg/Name' or 'pkg/msg/Name' -> 'pkg/msg/Name'."""
    parts = msgtype.strip().split("/")
    if len(parts) == 2 and all(parts):
        return f"{parts[0]}/msg/{parts[1]}"
    if len(parts) == 3 and parts[1] == "msg" and parts[0] and parts[2]:
        return msgtype.strip()
    raise ValueError(f"message type {msgtype!r} is not of the form 'package/msg/Name'")


def _import_rclpy_class(msgtype: str) -> Any:
    package, _, name = msgtype.split("/")
    try:
        module = importlib.import_module(f"{package}.msg")
    except ImportError as exc:
        raise ImportError(f"cannot import {package}.msg for {msgtype}: install ros-<distro>-{package.replace('_', '-')}"
                          f" (hcq_ros: build it with colcon) and source the workspace ({exc})") from exc
    try:
        return getattr(module, name)
    except AttributeError:
        raise ImportError(f"{package}.msg has no message {name!r} (wrong package version?)") from None


class MessageFactory:
    """Message classes and construction for one message library ("rosbags" or "rclpy").

    Use :meth:`rosbags` (off ROS) or :meth:`rclpy` (in a sourced ROS 2 environment). ``make(type, **fields)``
    builds a message of either library from the same arguments.
    """

    def __init__(self, flavour: str, resolve: Callable[[str], Any], typestore: Any = None) -> None:
        if flavour not in ("rosbags", "rclpy"):
            raise ValueError(f"flavour must be 'rosbags' or 'rclpy', got {flavour!r}")
        if flavour == "rosbags" and typestore is None:
            raise ValueError("the rosbags flavour needs the typestore (field definitions for defaults)")
        self.flavour = flavour
        self.typestore = typestore
        self._resolve = resolve
        self._classes: dict[str, tuple[str, Any]] = {}
        self._fields: dict[str, tuple[tuple, frozenset, dict]] = {}   # msgtype -> (fielddefs, names, defaults)

    @classmethod
    def rosbags(cls, typestore: Any = None) -> "MessageFactory":
        """rosbags typestore classes (default: hcq_ros.ros.typestore.get_typestore())."""
        if typestore is None:
            from hcq_ros.ros.typestore import get_typestore
            typestore = get_typestore()

        def resolve(msgtype: str) -> Any:
            if msgtype not in typestore.types:
                raise ValueError(f"message type {msgtype!r} is not in the rosbags typestore")
            return typestore.types[msgtype]
        return cls("rosbags", resolve, typestore)

    @classmethod
    def rclpy(cls) -> "MessageFactory":
        """Generated rclpy classes (hcq_ros.msg, sensor_msgs.msg, ...). ImportError off ROS."""
        try:
            importlib.import_module("rclpy")
        except ImportError as exc:
            raise ImportError("MessageFactory.rclpy() needs rclpy: source a ROS 2 environment (e.g. "
                              "/opt/ros/humble/setup.bash and the workspace with hcq_ros); off ROS use "
                              f"MessageFactory.rosbags() ({exc})") from exc
        return cls("rclpy", _import_rclpy_class)

    def type(self, msgtype: str) -> Any:
        """The message class of 'pkg/msg/Name' or 'pkg/Name' (cached)."""
        return self._lookup(msgtype)[1]

    def _lookup(self, msgtype: str) -> tuple[str, Any]:
        """(normalised name, class), cached under the name as given (make() is called ~1000 times a frame)."""
        hit = self._classes.get(msgtype)
        if hit is None:
            full = normalize_msgtype(msgtype)
            hit = self._classes[msgtype] = (full, self._resolve(full))
        return hit

    def constant(self, msgtype: str, name: str) -> Any:
        """A constant of a message type, e.g. constant('visualization_msgs/msg/Marker', 'DELETEALL')."""
        try:
            return getattr(self.type(msgtype), name)
        except AttributeError:
            raise ValueError(f"{msgtype} has no constant {name!r}") from None

    def make(self, msgtype: str, **fields: Any) -> Any:
        """A message of ``msgtype`` with ``fields`` set and every other field at its default."""
        msgtype, cls = self._lookup(msgtype)
        if self.flavour == "rosbags":
            return cls(**self._rosbags_fields(msgtype, fields))
        msg = cls()
        slots = cls.get_fields_and_field_types()
        for name, value in fields.items():
            if name not in slots:
                raise ValueError(f"{msgtype} has no field {name!r}; fields: {list(slots)}")
            setattr(msg, name, _rclpy_value(value, slots[name]))
        return msg

    def _rosbags_fields(self, msgtype: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        cached = self._fields.get(msgtype)
        if cached is None:   # per type once: a frame with 5 people makes ~250 messages
            fielddefs = tuple(self.typestore.fielddefs[msgtype][1])
            cached = self._fields[msgtype] = (fielddefs, frozenset(n for n, _ in fielddefs),
                                              _ROSIDL_DEFAULTS.get(msgtype, {}))
        fielddefs, names, defaults = cached
        if not names.issuperset(fields):
            raise ValueError(f"{msgtype} has no field(s) {sorted(set(fields) - names)}; "
                             f"fields: {[n for n, _ in fielddefs]}")
        out = {}
        for name, desc in fielddefs:
            if name in fields:
                out[name] = _rosbags_value(fields[name], desc, f"{msgtype}.{name}")
            else:
                out[name] = defaults[name] if name in defaults else self._default(desc)
        return out

    def _default(self, desc: tuple) -> Any:
        kind, args = desc
        if kind == _BASE:
            return {"string": "", "bool": False, "float32": 0.0, "float64": 0.0}.get(args[0], 0)
        if kind == _NAME:
            return self.make(args)
        (sub_kind, sub_args), count = args
        numeric = sub_kind == _BASE and sub_args[0] != "string"
        if kind == _ARRAY:
            if numeric:
                return np.zeros(count, _NUMPY_DTYPES[sub_args[0]])
            return [self._default((sub_kind, sub_args)) for _ in range(count)]
        return np.zeros(0, _NUMPY_DTYPES[sub_args[0]]) if numeric else []

    # ----------------------------------------------------------------------------------- common messages
    def time(self, stamp_ns: int) -> Any:
        stamp_ns = int(stamp_ns)
        return self.make("builtin_interfaces/msg/Time", sec=stamp_ns // 1_000_000_000,
                         nanosec=stamp_ns % 1_000_000_000)

    def duration(self, seconds: float) -> Any:
        total_ns = int(round(seconds * 1e9))
        return self.make("builtin_interfaces/msg/Duration", sec=total_ns // 1_000_000_000,
                         nanosec=total_ns % 1_000_000_000)

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        return self.make("std_msgs/msg/Header", stamp=self.time(stamp_ns), frame_id=str(frame_id))

    def mono8(self, pixels: Optional[np.ndarray], header: Any) -> Any:
        """sensor_msgs/Image mono8 of uint8 [h, w]; an empty image (0 x 0) when pixels is None or empty."""
        if pixels is None or pixels.size == 0:
            return self.make("sensor_msgs/msg/Image", header=header, encoding="mono8")
        return array_to_image_msg(np.ascontiguousarray(pixels, np.uint8), header, "mono8",
                                  self.type("sensor_msgs/msg/Image"))


def _rosbags_value(value: Any, desc: tuple, where: str) -> Any:
    kind, args = desc
    if isinstance(value, np.generic):
        value = value.item()
    if kind == _BASE:
        if args[0] in ("byte", "char", "uint8") and isinstance(value, (bytes, bytearray)):
            return value[0]  # rclpy-style byte constant
        return value
    if kind in (_ARRAY, _SEQUENCE) and args[0][0] == _BASE and args[0][1][0] != "string":
        dtype = _NUMPY_DTYPES[args[0][1][0]]
        if isinstance(value, (bytes, bytearray, memoryview)):
            out = np.frombuffer(value, np.uint8).astype(dtype)
        else:
            out = np.asarray(value, dtype=dtype).reshape(-1)
        if kind == _ARRAY and out.size != args[1]:
            raise ValueError(f"{where} needs exactly {args[1]} values, got {out.size}")
        return out
    if kind == _ARRAY and len(value) != args[1]:
        raise ValueError(f"{where} needs exactly {args[1]} elements, got {len(value)}")
    return value


def _rclpy_value(value: Any, slot_type: str) -> Any:
    if isinstance(value, np.generic):
        value = value.item()  # rclpy asserts isinstance(value, float/int)
    if slot_type == "octet" and isinstance(value, int):
        return bytes([value])
    if slot_type.startswith("sequence<"):
        inner = slot_type[len("sequence<"):-1].split(",")[0].strip()
        if inner in _RCLPY_TYPECODES and isinstance(value, (np.ndarray, bytes, bytearray, memoryview)):
            code = _RCLPY_TYPECODES[inner]
            out = array.array(code)
            if isinstance(value, np.ndarray):
                out.frombytes(np.ascontiguousarray(value.reshape(-1), dtype=np.dtype(code)).tobytes())
            else:
                out.frombytes(bytes(value))
            return out
        if not isinstance(value, (array.array, str)):
            return list(value)
    return value
