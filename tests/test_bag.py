"""rosbag2 writing/reading: MCAP and sqlite3, embedded definitions, corrupted bags and messages."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_types_from_msg
from rosbags.typesys import get_typestore as rosbags_typestore

from hcq_ros.ros.bag import (BagError, BagWriter, header_stamp_ns, iter_image_messages, list_topics, make_header,
                             read_messages, write_image_sequence)
from hcq_ros.ros.image_conversion import ImageDecodeError, rgb_to_compressed_msg, rgb_to_image_msg
from hcq_ros.ros.typestore import get_typestore, message_definition
from test_msgs import assert_msg_equal, make_person_array

T0 = 1_700_000_000_000_000_000


def frames(n: int = 3, h: int = 16, w: int = 20):
    rng = np.random.default_rng(1)
    return [(T0 + i * 33_000_000, rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for i in range(n)]


def write_mixed_bag(path: Path, storage: str):
    """3 Image frames on /camera/image_raw + 1 PersonArray on /hcq/persons."""
    store = get_typestore()
    persons = make_person_array(store)
    with BagWriter(path, storage=storage) as bag:
        bag.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
        bag.add_topic("/hcq/persons", "hcq_ros/msg/PersonArray")
        bag.add_topic("/hcq/persons", "hcq_ros/msg/PersonArray")  # same again: no-op
        for stamp, rgb in frames():
            bag.write("/camera/image_raw", stamp, rgb_to_image_msg(rgb, make_header(stamp, "cam")))
        bag.write("/hcq/persons", T0 + 5, persons)
        assert bag.counts == {"/camera/image_raw": 3, "/hcq/persons": 1}
    return persons


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_with_rosbags_reader(tmp_path, storage):
    path = tmp_path / "bag"
    persons = write_mixed_bag(path, storage)
    assert list_topics(path) == {"/camera/image_raw": "sensor_msgs/msg/Image",
                                 "/hcq/persons": "hcq_ros/msg/PersonArray"}
    store = get_typestore()
    with Reader(path) as reader:  # rosbags' own reader, straight on the files
        conns = {c.topic: c for c in reader.connections}
        msgdef, rihs01 = message_definition("hcq_ros/msg/PersonArray")
        assert conns["/hcq/persons"].msgdef.data == msgdef  # full definition embedded
        assert conns["/hcq/persons"].digest == rihs01
        assert conns["/camera/image_raw"].msgcount == 3
        got = [(c.topic, t, store.deserialize_cdr(raw, c.msgtype)) for c, t, raw in reader.messages()]
    assert [(topic, stamp) for topic, stamp, _ in got][:2] == [("/camera/image_raw", T0),
                                                               ("/hcq/persons", T0 + 5)]
    (_, _, decoded), = [x for x in got if x[0] == "/hcq/persons"]
    assert_msg_equal(persons, decoded)
    images = [msg for topic, _, msg in got if topic == "/camera/image_raw"]
    assert header_stamp_ns(images[2].header) == T0 + 66_000_000 and images[2].header.frame_id == "cam"
    assert [t for t, _, _ in read_messages(path, topics=["/hcq/persons"])] == ["/hcq/persons"]


def test_mcap_schema_is_embedded_for_any_reader(tmp_path):
    """The plain `mcap` package sees ros2msg schemas; decoding with nothing but the schema text works."""
    path = tmp_path / "bag"
    persons = write_mixed_bag(path, "mcap")
    with open(path / "bag.mcap", "rb") as stream:
        reader = make_reader(stream)
        summary = reader.get_summary()
        schemas = {s.name: s for s in summary.schemas.values()}
        assert schemas["hcq_ros/msg/PersonArray"].encoding == "ros2msg"
        assert summary.statistics.message_count == 4
        records = [(schema, channel, message) for schema, channel, message in reader.iter_messages()]
    (schema, channel, message), = [r for r in records if r[1].topic == "/hcq/persons"]
    assert channel.message_encoding == "cdr" and message.log_time == T0 + 5
    bare = rosbags_typestore(Stores.EMPTY)  # knows no types at all
    bare.register(get_types_from_msg(schema.data.decode(), schema.name))
    decoded = bare.deserialize_cdr(message.data, "hcq_ros/msg/PersonArray")
    assert [p.id for p in decoded.persons] == [p.id for p in persons.persons]
    np.testing.assert_array_equal(decoded.persons[1].embedding, persons.persons[1].embedding)
    scores = [k.score for k in persons.persons[0].keypoints]
    assert [k.score for k in decoded.persons[0].keypoints] == pytest.approx(scores)


def test_sqlite3_stores_definitions(tmp_path):
    path = tmp_path / "bag"
    write_mixed_bag(path, "sqlite3")
    with sqlite3.connect(path / "bag.db3") as db:
        rows = dict(db.execute("SELECT topic_type, encoded_message_definition FROM message_definitions"))
    assert "MSG: hcq_ros/Keypoint2D" in rows["hcq_ros/msg/PersonArray"]


def test_image_sequence_and_iter_image_messages(tmp_path):
    data = frames(4)
    assert write_image_sequence(tmp_path / "seq", data, topic="/cam/image", frame_id="cam0") == 4
    records = list(iter_image_messages(tmp_path / "seq"))
    assert [r.stamp_ns for r in records] == [t for t, _ in data]
    for record, (_, rgb) in zip(records, data):
        assert record.error is None and record.topic == "/cam/image" and record.msg.header.frame_id == "cam0"
        np.testing.assert_array_equal(record.rgb, rgb)
    assert len(list(iter_image_messages(tmp_path / "seq", topic="/cam/image"))) == 4


def test_corrupt_messages_yield_errors_and_iteration_goes_on(tmp_path):
    store = get_typestore()
    data = frames(4)
    path = tmp_path / "bag"
    with BagWriter(path, storage="mcap") as bag:
        bag.add_topic("/cam/compressed", "sensor_msgs/msg/CompressedImage")
        for i, (stamp, rgb) in enumerate(data):
            msg = rgb_to_compressed_msg(rgb, make_header(stamp, "cam"), "png")
            if i == 1:
                msg.data = np.frombuffer(b"\x89PNG garbage, not an image" * 3, np.uint8)
            if i == 2:  # not even valid CDR
                bag.write("/cam/compressed", stamp, b"\x00\x01\x00\x00\xff\xff")
                continue
            bag.write("/cam/compressed", stamp, msg)
    records = list(iter_image_messages(path))
    assert len(records) == 4
    assert records[0].error is None and records[3].error is None
    np.testing.assert_array_equal(records[3].rgb, data[3][1])
    assert isinstance(records[1].error, ImageDecodeError) and records[1].rgb is None
    assert "/cam/compressed" in str(records[1].error) and "not a decodable" in str(records[1].error)
    assert records[1].msg is not None
    assert records[2].msg is None and "deserialise" in str(records[2].error)


def test_bag_without_image_topics_lists_its_topics(tmp_path):
    path = tmp_path / "bag"
    with BagWriter(path) as bag:
        bag.add_topic("/hcq/persons", "hcq_ros/msg/PersonArray")
        bag.write("/hcq/persons", T0, make_person_array(get_typestore(), 1))
    with pytest.raises(BagError, match=r"no sensor_msgs/Image or CompressedImage topic.*/hcq/persons"):
        iter_image_messages(path)  # raised before iteration starts
    write_image_sequence(tmp_path / "img", frames(1))
    with pytest.raises(BagError, match=r"no topic '/nope'.*/camera/image_raw"):
        iter_image_messages(tmp_path / "img", topic="/nope")
    with pytest.raises(BagError, match="not an image type"):
        iter_image_messages(path, topic="/hcq/persons")


def test_unreadable_bags_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        iter_image_messages(tmp_path / "missing")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(BagError, match="not a rosbag2 bag"):
        iter_image_messages(tmp_path / "empty_dir")
    (tmp_path / "junk.mcap").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(BagError, match="corrupted"):
        list_topics(tmp_path / "junk.mcap")
    for storage, name in (("mcap", "bag.mcap"), ("sqlite3", "bag.db3")):
        path = tmp_path / storage / "bag"
        write_image_sequence(path, frames(3), storage=storage)
        (path / name).write_bytes((path / name).read_bytes()[:1500])  # cut off
        with pytest.raises(BagError, match="corrupted|cannot read"):
            list(iter_image_messages(path))


def test_damaged_chunk_is_detected_not_silently_short(tmp_path):
    """rosbags writes no chunk CRC: damaged records just vanish unless the counts are checked."""
    path = tmp_path / "bag"
    write_image_sequence(path, frames(3))
    raw = bytearray((path / "bag.mcap").read_bytes())
    raw[200:700] = bytes(500)  # zero the schema/channel/first-message records inside the chunk
    (path / "bag.mcap").write_bytes(bytes(raw))
    with pytest.raises(BagError, match="lists 3 messages on /camera/image_raw but only"):
        list(iter_image_messages(path))


def test_writer_errors(tmp_path):
    path = tmp_path / "bag"
    with pytest.raises(ValueError, match="storage must be one of"):
        BagWriter(path, storage="rosbag1")
    store = get_typestore()
    with BagWriter(path) as bag:
        with pytest.raises(ValueError, match="call add_topic first"):
            bag.write("/x", T0, b"")
        bag.add_topic("/img", "sensor_msgs/Image")  # short form accepted
        with pytest.raises(ValueError, match="already registered as sensor_msgs/msg/Image"):
            bag.add_topic("/img", "hcq_ros/msg/PersonArray")
        with pytest.raises(ValueError, match="not in the typestore"):
            bag.add_topic("/y", "made_up_msgs/msg/Thing")
        with pytest.raises(ValueError, match="carries sensor_msgs/msg/Image, got a hcq_ros/msg/PersonArray"):
            bag.write("/img", T0, make_person_array(store, 1))
        with pytest.raises(ValueError, match="stamp_ns must be >= 0"):
            bag.write("/img", -1, b"")
    with pytest.raises(FileExistsError, match="never overwritten"):
        BagWriter(path).open()


def test_bag_is_finished_when_the_block_raises(tmp_path):
    path = tmp_path / "bag"
    with pytest.raises(RuntimeError, match="camera died"):
        with BagWriter(path, storage="mcap") as bag:
            bag.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
            stamp, rgb = frames(1)[0]
            bag.write("/camera/image_raw", stamp, rgb_to_image_msg(rgb, make_header(stamp, "cam")))
            raise RuntimeError("camera died")
    assert len(list(iter_image_messages(path))) == 1  # what was written before the error is readable


def test_version_9_metadata(tmp_path):
    store = get_typestore()
    with BagWriter(tmp_path / "v9", version=9, typestore=store) as bag:
        bag.add_topic("/img", "sensor_msgs/msg/Image")
        stamp, rgb = frames(1)[0]
        bag.write("/img", stamp, rgb_to_image_msg(rgb, make_header(stamp, "cam", store)))
    assert "version: 9" in (tmp_path / "v9" / "metadata.yaml").read_text()
    assert len(list(iter_image_messages(tmp_path / "v9"))) == 1
    with pytest.raises(ValueError, match="version must be 8 or 9"):
        BagWriter(tmp_path / "v5", version=5)


def test_read_messages_decodes_types_we_do_not_know_from_the_bag(tmp_path):
    """A bag recorded with a type absent from our typestore is still readable: its definition is embedded."""
    from hcq_ros.ros.typestore import build_typestore
    writer_store = build_typestore()
    writer_store.register(get_types_from_msg("string label\nfloat64[] values\nstd_msgs/Header header\n",
                                             "my_msgs/msg/Thing"))
    thing = writer_store.types["my_msgs/msg/Thing"](label="hello", values=np.array([1.5, -2.0]),
                                                    header=make_header(T0, "base", writer_store))
    with BagWriter(tmp_path / "bag", typestore=writer_store) as bag:
        bag.add_topic("/thing", "my_msgs/msg/Thing")
        bag.write("/thing", T0, thing)
    assert "my_msgs/msg/Thing" not in get_typestore().fielddefs
    (topic, stamp, msg), = read_messages(tmp_path / "bag")
    assert (topic, stamp, msg.label, msg.header.frame_id) == ("/thing", T0, "hello", "base")
    np.testing.assert_array_equal(msg.values, [1.5, -2.0])
    assert "my_msgs/msg/Thing" not in get_typestore().fielddefs  # the shared store was not extended
    with pytest.raises(BagError, match=r"no topic\(s\) \['/other'\]"):
        list(read_messages(tmp_path / "bag", topics=["/other"]))
