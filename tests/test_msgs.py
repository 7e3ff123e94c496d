"""msg/*.msg files, the rosbags typestore built from them, and CDR round trips of PersonArray."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from rosbags.typesys import Stores, get_types_from_msg
from rosbags.typesys import get_typestore as rosbags_typestore

from hcq_ros.data.schema import NUM_KEYPOINTS
from hcq_ros.ros import typestore as ts_module
from hcq_ros.ros.typestore import (HCQ_MSG_TYPES, PUBLISHED_STANDARD_TYPES, build_typestore, find_msg_dir,
                                   get_typestore, message_definition, msg_text)

REPO = Path(__file__).resolve().parents[1]

# DESIGN.md section 4, field by field.
EXPECTED_FIELDS = {
    "Keypoint2D": [("float32", "x"), ("float32", "y"), ("float32", "score")],
    "Attribute": [("string", "name"), ("string", "value"), ("float32", "score")],
    "Person": [("string", "id"), ("float32", "score"), ("sensor_msgs/RegionOfInterest", "roi"),
               ("Keypoint2D[17]", "keypoints"), ("sensor_msgs/Image", "mask"), ("sensor_msgs/Image", "parts"),
               ("Attribute[]", "attributes"), ("float32[]", "embedding")],
    "PersonArray": [("std_msgs/Header", "header"), ("Person[]", "persons")],
}

# RIHS01 hashes of the released packages (from their rosidl-generated type descriptions). Equal hashes mean
# our definitions match field for field, so bags we write are read by real ROS 2 nodes and vice versa.
KNOWN_RIHS01 = {
    "sensor_msgs/msg/Image": "RIHS01_d31d41a9a4c4bc8eae9be757b0beed306564f7526c88ea6a4588fb9582527d47",
    "vision_msgs/msg/Detection2DArray":
        "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968",
    "vision_msgs/msg/Point2D": "RIHS01_eab0e83f44ab4de92ceaf76dd7d0e7638f2bdd1d16ffbe16c7a136c48e407247",
    "vision_msgs/msg/Pose2D": "RIHS01_b0b5d1d7b4c20dd4fcde3ed1d4b289a919290572007d67a97043814db25d3648",
    "vision_msgs/msg/BoundingBox2D": "RIHS01_008eacbb0cf8f26e83795547bed013eec3675485ef386ec056d80eaaf1c1ce2f",
    "vision_msgs/msg/Detection2D": "RIHS01_0d12b69df5c593b3455b7346fac8205437a7d4bcb09b9e0e0b2dde787ded38ea",
}


def parse_msg_fields(text: str) -> list[tuple[str, str]]:
    """(type, name) of every field line of a .msg text; comments and constants skipped."""
    fields = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or "=" in line:
            continue
        typ, name = line.split()
        fields.append((typ, name))
    return fields


@pytest.mark.parametrize("name", sorted(EXPECTED_FIELDS))
def test_msg_files_have_exactly_the_design_fields(name):
    text = (REPO / "msg" / f"{name}.msg").read_text()
    assert parse_msg_fields(text) == EXPECTED_FIELDS[name]
    assert "#" in text, "msg files document units and conventions in comments"


def test_find_msg_dir_is_the_source_tree_and_msg_text_reads_it():
    assert find_msg_dir() == REPO / "msg"
    assert msg_text("hcq_ros/msg/Person") == (REPO / "msg" / "Person.msg").read_text()
    assert msg_text("hcq_ros/Keypoint2D").startswith("#")
    assert "string class_id" in msg_text("vision_msgs/msg/ObjectHypothesis")
    with pytest.raises(ValueError, match="unknown hcq_ros message"):
        msg_text("hcq_ros/msg/Nope")
    with pytest.raises(ValueError, match="package/msg/Name"):
        msg_text("Person")


def test_missing_msg_dir_error_names_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(ts_module, "msg_dir_candidates", lambda: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(FileNotFoundError) as info:
        find_msg_dir()
    assert str(tmp_path / "a") in str(info.value) and str(tmp_path / "b") in str(info.value)
    assert "HCQ_ROS_MSG_DIR" in str(info.value)


def test_env_override_is_searched_first(tmp_path, monkeypatch):
    monkeypatch.setenv("HCQ_ROS_MSG_DIR", str(tmp_path))
    assert ts_module.msg_dir_candidates()[0] == tmp_path
    assert find_msg_dir() == REPO / "msg"  # tmp_path has no .msg files: falls through to the source tree


@pytest.mark.parametrize("broken, problem", [
    ("string name\nfoo\n", "cannot parse"),                       # syntax error
    ("Keypont2D[17] keypoints\n", "unknown message type"),        # misspelt type, parses as a reference
])
def test_broken_msg_file_is_named(tmp_path, broken, problem):
    for name in EXPECTED_FIELDS:
        (tmp_path / f"{name}.msg").write_text((REPO / "msg" / f"{name}.msg").read_text())
    (tmp_path / "Attribute.msg").write_text(broken)
    with pytest.raises(ValueError, match=problem) as info:
        build_typestore(tmp_path)
    assert "Attribute.msg" in str(info.value)


def test_typestore_has_our_types_and_every_published_standard_type():
    store = get_typestore()
    assert store is get_typestore()  # built once
    for msgtype in (*HCQ_MSG_TYPES, *PUBLISHED_STANDARD_TYPES):
        assert msgtype in store.fielddefs, msgtype
    # vision_msgs and hri_msgs are not shipped by rosbags: we must have registered them ourselves.
    assert "vision_msgs/msg/Detection2DArray" not in rosbags_typestore(Stores.ROS2_HUMBLE).fielddefs
    person = dict(store.fielddefs["hcq_ros/msg/Person"][1])
    assert person["keypoints"][1][1] == NUM_KEYPOINTS  # fixed-size array
    constants = {name: value for name, _, value in store.fielddefs["hri_msgs/msg/Skeleton2D"][0]}
    assert constants["NECK"] == 1 and constants["RIGHT_EAR"] == 17


@pytest.mark.parametrize("msgtype", sorted(KNOWN_RIHS01))
def test_standard_definitions_match_released_packages(msgtype):
    assert message_definition(msgtype)[1] == KNOWN_RIHS01[msgtype]


def make_person_array(store, n_persons: int = 2):
    """A PersonArray exercising every field: images, 17 keypoints, attributes, embedding."""
    types = store.types
    rng = np.random.default_rng(0)
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=12, nanosec=345),
                                          frame_id="camera_optical")
    persons = []
    for i in range(n_persons):
        h, w = 20 + i, 10 + 2 * i
        mask = (rng.random((h, w)) > 0.5).astype(np.uint8) * 255
        parts = rng.integers(0, 15, (h, w), dtype=np.uint8)
        image = types["sensor_msgs/msg/Image"]
        keypoints = [types["hcq_ros/msg/Keypoint2D"](x=float(k), y=float(2 * k + i), score=0.5 + k / 40)
                     for k in range(NUM_KEYPOINTS)]
        embedding = rng.normal(size=64).astype(np.float32)
        persons.append(types["hcq_ros/msg/Person"](
            id=str(i + 1) if i else "",
            score=0.9 - i / 10,
            roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=5 * i, y_offset=7, height=h, width=w,
                                                          do_rectify=False),
            keypoints=keypoints,
            mask=image(header=header, height=h, width=w, encoding="mono8", is_bigendian=0, step=w,
                       data=mask.reshape(-1)),
            parts=image(header=header, height=h, width=w, encoding="mono8", is_bigendian=0, step=w,
                        data=parts.reshape(-1)),
            attributes=[types["hcq_ros/msg/Attribute"](name="upper_color", value="red", score=0.75),
                        types["hcq_ros/msg/Attribute"](name="hat", value="no", score=0.5)],
            embedding=embedding / np.linalg.norm(embedding),
        ))
    return types["hcq_ros/msg/PersonArray"](header=header, persons=persons)


def assert_msg_equal(a, b, path="msg"):
    """Field-by-field equality of two rosbags messages (numpy arrays compared by value)."""
    if dataclasses.is_dataclass(a):
        assert type(a).__name__ == type(b).__name__, path
        for field in dataclasses.fields(a):
            assert_msg_equal(getattr(a, field.name), getattr(b, field.name), f"{path}.{field.name}")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, np.asarray(b), err_msg=path)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_msg_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert np.float32(a) == np.float32(b), path  # float32 fields
    else:
        assert a == b, path


def test_person_array_cdr_round_trip():
    store = get_typestore()
    msg = make_person_array(store)
    raw = store.serialize_cdr(msg, "hcq_ros/msg/PersonArray")
    back = store.deserialize_cdr(raw, "hcq_ros/msg/PersonArray")
    assert_msg_equal(msg, back)
    assert len(back.persons) == 2 and len(back.persons[1].keypoints) == NUM_KEYPOINTS
    assert back.persons[0].id == "" and back.persons[1].id == "2"
    assert back.persons[1].mask.data.size == back.persons[1].roi.width * back.persons[1].roi.height
    assert back.persons[0].embedding.dtype == np.float32 and back.persons[0].embedding.shape == (64,)


def test_message_definition_is_self_contained():
    """A store that knows nothing but the embedded definition text decodes our bytes: what bag readers do."""
    store = get_typestore()
    msgdef, rihs01 = message_definition("hcq_ros/msg/PersonArray")
    assert re.fullmatch(r"RIHS01_[0-9a-f]{64}", rihs01)
    for section in ("MSG: hcq_ros/Person", "MSG: hcq_ros/Keypoint2D", "MSG: hcq_ros/Attribute",
                    "MSG: sensor_msgs/Image", "MSG: std_msgs/Header", "MSG: builtin_interfaces/Time"):
        assert section in msgdef
    bare = rosbags_typestore(Stores.EMPTY)
    bare.register(get_types_from_msg(msgdef, "hcq_ros/msg/PersonArray"))
    msg = make_person_array(store)
    decoded = bare.deserialize_cdr(store.serialize_cdr(msg, "hcq_ros/msg/PersonArray"), "hcq_ros/msg/PersonArray")
    assert [p.id for p in decoded.persons] == ["", "2"]
    np.testing.assert_array_equal(decoded.persons[1].parts.data, msg.persons[1].parts.data)
    assert bare.hash_rihs01("hcq_ros/msg/PersonArray") == rihs01


def test_package_xml_lists_the_dependencies():
    root = ElementTree.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "hcq_ros"
    deps = {(el.tag, el.text) for el in root}
    for tool in ("ament_cmake", "ament_cmake_python"):
        assert ("buildtool_depend", tool) in deps
    assert ("build_depend", "rosidl_default_generators") in deps
    assert ("exec_depend", "rosidl_default_runtime") in deps
    assert ("member_of_group", "rosidl_interface_packages") in deps
    runtime = {text for tag, text in deps if tag in ("depend", "exec_depend")}
    for dep in ("std_msgs", "sensor_msgs", "vision_msgs", "visualization_msgs", "diagnostic_msgs", "rclpy",
                "lifecycle_msgs", "cv_bridge", "launch_ros", "rviz2", "python3-numpy", "python3-opencv",
                "python3-yaml", "python3-scipy"):
        assert dep in runtime, dep
    assert ("exec_depend", "rviz2") in deps
    assert root.find("export/build_type").text == "ament_cmake"


def test_cmakelists_generates_the_msg_files_that_exist():
    text = (REPO / "CMakeLists.txt").read_text()
    listed = re.findall(r'"(msg/\w+\.msg)"', text)
    assert sorted(listed) == sorted(f"msg/{name}.msg" for name in EXPECTED_FIELDS)
    assert all((REPO / path).is_file() for path in listed)
    assert sorted(p.name for p in (REPO / "msg").glob("*.msg")) == sorted(f"{n}.msg" for n in EXPECTED_FIELDS)
    assert re.search(r"rosidl_generate_interfaces\(\$\{PROJECT_NAME\}", text)
    assert re.search(r"DEPENDENCIES\s+std_msgs\s+sensor_msgs", text)
    assert "install(PROGRAMS" in text and "lib/${PROJECT_NAME}" in text
    assert not (REPO / "hcq_ros" / "msg").exists(), "hcq_ros/msg/ would clash with the generated interfaces"
