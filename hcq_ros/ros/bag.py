"""rosbag2 (MCAP or sqlite3) writing and reading with rosbags, no ROS installation needed.

Every connection is registered with its full ``ros2msg`` definition (the type plus all nested types as
``MSG:`` sections) and its RIHS01 type hash, so the custom hcq_ros types are embedded in the bag: MCAP
stores them as schema records (readable by any MCAP reader), sqlite3 in its ``message_definitions`` table.

Version: rosbags writes rosbag2 metadata version 8 or 9. 8 (default) serialises QoS profiles as integers,
the form older rosbag2 releases parse; 9 writes them as enum names (newer rosbag2 only). A rosbag2 older
than the metadata (e.g. Humble's) may refuse metadata.yaml: regenerate it there with
``ros2 bag reindex <bag> -s mcap`` (the MCAP file itself is self-describing).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, StoragePlugin, Writer, WriterError
from rosbags.typesys import get_types_from_msg
from rosbags.typesys.store import Typestore

from hcq_ros.ros.image_conversion import DEFAULT_MAX_PIXELS, ImageDecodeError, msg_to_rgb, rgb_to_image_msg
from hcq_ros.ros.message_factory import normalize_msgtype
from hcq_ros.ros.typestore import build_typestore, get_typestore

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
_INFINITE = QosTime(sec=0, nsec=0)  # rosbag2 writes "no deadline/lifespan" as zeros
# What `ros2 bag record` stores for an ordinary reliable publisher.
DEFAULT_QOS = Qos(history=QosHistory.KEEP_LAST, depth=10, reliability=QosReliability.RELIABLE,
                  durability=QosDurability.VOLATILE, deadline=_INFINITE, lifespan=_INFINITE,
                  liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=_INFINITE,
                  avoid_ros_namespace_conventions=False)


class BagError(ValueError):
    """A bag that cannot be used: unreadable/corrupted, or without the topics asked for."""


def make_header(stamp_ns: int, frame_id: str, typestore: Typestore | None = None) -> Any:
    """std_msgs/Header (rosbags object) for a stamp in nanoseconds."""
    store = typestore or get_typestore()
    stamp_ns = int(stamp_ns)
    time = store.types["builtin_interfaces/msg/Time"](sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
    return store.types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)


def header_stamp_ns(header: Any) -> int:
    """Header (rosbags or rclpy) -> stamp in nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class BagWriter:
    """Context manager writing one rosbag2 directory; never overwrites.

    >>> with BagWriter("out/run1", storage="mcap") as bag:
    ...     bag.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
    ...     bag.write("/camera/image_raw", stamp_ns, image_msg)
    """

    def __init__(self, path: str | Path, storage: str = "mcap", typestore: Typestore | None = None,
                 version: int = 8) -> None:
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {sorted(STORAGES)}, got {storage!r}")
        if version not in (8, 9):
            raise ValueError(f"rosbag2 metadata version must be 8 or 9, got {version}")
        self.path = Path(path)
        self.storage = storage
        self.typestore = typestore or get_typestore()
        self.version = version
        self._writer: Writer | None = None
        self._connections: dict[str, Any] = {}  # topic -> rosbags Connection
        self.counts: dict[str, int] = {}

    def open(self) -> "BagWriter":
        if self._writer is not None:
            raise RuntimeError(f"bag {self.path} is already open")
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists; rosbag2 bags are never overwritten, choose a new path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = Writer(self.path, version=self.version, storage_plugin=STORAGES[self.storage])
        writer.open()
        self._writer = writer
        return self

    def close(self) -> None:
        """Write the summary/index and metadata.yaml. Safe to call twice."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def __enter__(self) -> "BagWriter":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # still finish the file so what was written before the error stays readable
            try:
                self.close()
            except Exception:  # noqa: BLE001 - the original exception is the one to report
                pass

    @property
    def topics(self) -> dict[str, str]:
        """{topic: msgtype} registered so far."""
        return {topic: conn.msgtype for topic, conn in self._connections.items()}

    def add_topic(self, name: str, msgtype: str, qos: Qos | None = None) -> None:
        """Register a topic. msgtype must be in the typestore; re-adding the same (name, type) is a no-op.

        qos: the offered QoS recorded in the bag (rosbags.interfaces.Qos); default DEFAULT_QOS.
        """
        if self._writer is None:
            raise RuntimeError(f"bag {self.path} is not open (use it as a context manager)")
        msgtype = normalize_msgtype(msgtype)
        if name in self._connections:
            if self._connections[name].msgtype != msgtype:
                raise ValueError(f"topic {name!r} already registered as {self._connections[name].msgtype}, "
                                 f"not {msgtype}")
            return
        if msgtype not in self.typestore.fielddefs:
            raise ValueError(f"message type {msgtype!r} for topic {name!r} is not in the typestore")
        # Passing the typestore makes rosbags embed generate_msgdef() (the full definition) + hash_rihs01().
        try:
            self._connections[name] = self._writer.add_connection(
                name, msgtype, typestore=self.typestore, offered_qos_profiles=[qos or DEFAULT_QOS])
        except WriterError as exc:
            raise ValueError(f"cannot add topic {name!r} ({msgtype}) to {self.path}: {exc}") from exc
        self.counts[name] = 0

    def write(self, topic: str, stamp_ns: int, msg: Any) -> None:
        """Write one message at log time stamp_ns (int nanoseconds). msg: a rosbags message object of the
        topic's type, or already-serialised CDR bytes (copied as is, e.g. when replaying input frames)."""
        if self._writer is None:
            raise RuntimeError(f"bag {self.path} is not open (use it as a context manager)")
        if topic not in self._connections:
            raise ValueError(f"topic {topic!r} not registered; call add_topic first (have {sorted(self._connections)})")
        stamp_ns = int(stamp_ns)
        if stamp_ns < 0:
            raise ValueError(f"stamp_ns must be >= 0, got {stamp_ns}")
        conn = self._connections[topic]
        if isinstance(msg, (bytes, bytearray, memoryview)):
            data = bytes(msg)
        else:
            have = getattr(msg, "__msgtype__", None)
            if have is not None and have != conn.msgtype:
                raise ValueError(f"topic {topic!r} carries {conn.msgtype}, got a {have} message")
            data = self.typestore.serialize_cdr(msg, conn.msgtype)
        self._writer.write(conn, stamp_ns, data)
        self.counts[topic] += 1


def write_image_sequence(path: str | Path, frames: Iterable[tuple[int, np.ndarray]],
                         topic: str = "/camera/image_raw", frame_id: str = "camera",
                         storage: str = "mcap", encoding: str = "rgb8") -> int:
    """Write (stamp_ns, rgb uint8 [H, W, 3]) frames as sensor_msgs/Image; returns the number written."""
    store = get_typestore()
    image_type = store.types["sensor_msgs/msg/Image"]
    count = 0
    with BagWriter(path, storage=storage, typestore=store) as bag:
        bag.add_topic(topic, "sensor_msgs/msg/Image")
        for stamp_ns, rgb in frames:
            msg = rgb_to_image_msg(rgb, make_header(stamp_ns, frame_id, store), encoding, image_type)
            bag.write(topic, stamp_ns, msg)
            count += 1
    return count


# ------------------------------------------------------------------------------------------------ reading

def open_reader(path: str | Path) -> Reader:
    """An opened rosbags Reader for a rosbag2 directory or a bare .mcap / .db3 file.

    FileNotFoundError if nothing is there; BagError (naming the path and the cause) if it is not readable.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag {path} does not exist")
    try:
        reader = Reader(path)
        reader.open()
    except FileNotFoundError as exc:
        raise BagError(f"{path} is not a rosbag2 bag: {exc}") from exc
    except Exception as exc:  # rosbags raises ReaderError, sqlite3/struct/yaml errors for damaged files
        raise BagError(f"cannot read bag {path} (corrupted or not a rosbag2 bag): {type(exc).__name__}: {exc}") from exc
    return reader


def list_topics(path: str | Path) -> dict[str, str]:
    """{topic: msgtype} of a bag."""
    reader = open_reader(path)
    try:
        return {conn.topic: conn.msgtype for conn in reader.connections}
    finally:
        reader.close()


def _typestore_for(connections: list[Any], typestore: Typestore | None) -> Typestore:
    """Our typestore, or a private copy extended with definitions embedded in the bag for unknown types."""
    store = typestore or get_typestore()
    unknown = [c for c in connections if c.msgtype not in store.fielddefs and c.msgdef.data]
    if not unknown:
        return store
    store = build_typestore()  # never extend the shared store with a bag's (possibly conflicting) types
    try:
        types: dict = {}
        for conn in unknown:
            types.update(get_types_from_msg(conn.msgdef.data, conn.msgtype))
        store.register(types)
    except Exception as exc:  # rosbags parse/conflict errors
        names = sorted({c.msgtype for c in unknown})
        raise BagError(f"cannot use the message definitions embedded in the bag for {names}: {exc}") from exc
    return store


def read_messages(path: str | Path, topics: Iterable[str] | None = None,
                  typestore: Typestore | None = None) -> Iterator[tuple[str, int, Any]]:
    """Yield (topic, log stamp_ns, deserialised message) for every message (of ``topics`` if given).

    Types unknown to our typestore are decoded from the definitions embedded in the bag. A message that does
    not deserialise raises BagError naming the topic and stamp.
    """
    reader = open_reader(path)
    try:
        wanted = set(topics) if topics is not None else None
        have = {c.topic for c in reader.connections}
        if wanted is not None and (missing := wanted - have):
            raise BagError(f"bag {path} has no topic(s) {sorted(missing)}; topics: {sorted(have)}")
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        store = _typestore_for(conns, typestore)
        for conn, stamp, raw in _guarded(reader, conns, path):
            try:
                msg = store.deserialize_cdr(raw, conn.msgtype)
            except Exception as exc:
                raise BagError(f"bag {path}: {conn.topic} message at {stamp} ns does not deserialise as "
                               f"{conn.msgtype}: {exc}") from exc
            yield conn.topic, stamp, msg
    finally:
        reader.close()


def _guarded(reader: Reader, conns: list[Any], path: Path | str) -> Iterator[tuple[Any, int, bytes]]:
    """reader.messages(conns), with storage failures half-way through turned into a BagError naming the bag,
    and a final check that every message the bag's index/metadata lists was actually read (rosbags writes no
    chunk CRCs, so a damaged chunk would otherwise just yield fewer messages)."""
    messages = reader.messages(connections=conns)
    counts = {conn.id: 0 for conn in conns}
    while True:
        try:
            conn, stamp, raw = next(messages)
        except StopIteration:
            break
        except Exception as exc:
            raise BagError(f"bag {path} is corrupted (failed while reading messages): "
                           f"{type(exc).__name__}: {exc}") from exc
        counts[conn.id] = counts.get(conn.id, 0) + 1
        yield conn, stamp, raw
    for conn in conns:
        if counts[conn.id] < conn.msgcount:
            raise BagError(f"bag {path} is corrupted: it lists {conn.msgcount} messages on {conn.topic} but only "
                           f"{counts[conn.id]} could be read")


class ImageRecord(NamedTuple):
    """One image message from a bag. Exactly one of ``rgb`` / ``error`` is set.

    msg: the deserialised Image/CompressedImage (None if the CDR itself was broken).
    rgb: uint8 [H, W, 3] RGB. error: ImageDecodeError saying why this message could not be used.
    """
    topic: str
    stamp_ns: int
    msg: Any
    rgb: np.ndarray | None
    error: ImageDecodeError | None


def iter_image_messages(path: str | Path, topic: str | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                        allow_depth: bool = False) -> Iterator[ImageRecord]:
    """Decoded frames of the Image / CompressedImage topics of a bag (of ``topic`` only if given), in log order.

    A message that cannot be decoded yields a record with ``error`` set and iteration goes on. The bag is opened
    and checked before this returns: FileNotFoundError / BagError for a missing or unreadable bag, BagError for
    a bag without image topics or without ``topic`` (both list the topics the bag has).
    """
    reader = open_reader(path)
    try:
        available = {c.topic: c.msgtype for c in reader.connections}
        listing = ", ".join(f"{t} ({m})" for t, m in sorted(available.items())) or "none"
        if topic is not None:
            if topic not in available:
                raise BagError(f"bag {path} has no topic {topic!r}; topics: {listing}")
            if available[topic] not in IMAGE_TYPES:
                raise BagError(f"topic {topic!r} in {path} is {available[topic]}, not an image type {IMAGE_TYPES}")
        conns = [c for c in reader.connections
                 if c.msgtype in IMAGE_TYPES and (topic is None or c.topic == topic)]
        if not conns:
            raise BagError(f"bag {path} has no sensor_msgs/Image or CompressedImage topic; topics: {listing}")
    except BaseException:
        reader.close()
        raise
    return _image_records(reader, conns, path, max_pixels, allow_depth)


def _image_records(reader: Reader, conns: list[Any], path: Path | str, max_pixels: int,
                   allow_depth: bool) -> Iterator[ImageRecord]:
    store = get_typestore()
    try:
        for conn, stamp, raw in _guarded(reader, conns, path):
            try:
                msg = store.deserialize_cdr(raw, conn.msgtype)
            except Exception as exc:  # a broken message, not a broken bag
                error = ImageDecodeError(f"{conn.topic} at {stamp} ns: {len(raw)} bytes do not deserialise as "
                                         f"{conn.msgtype}: {type(exc).__name__}: {exc}")
                yield ImageRecord(conn.topic, stamp, None, None, error)
                continue
            try:
                rgb = msg_to_rgb(msg, max_pixels=max_pixels, allow_depth=allow_depth)
            except ImageDecodeError as exc:
                yield ImageRecord(conn.topic, stamp, msg, None, ImageDecodeError(f"{conn.topic} at {stamp} ns: {exc}"))
                continue
            yield ImageRecord(conn.topic, stamp, msg, rgb, None)
    finally:
        reader.close()
