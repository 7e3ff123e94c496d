"""`hcq-ros replay`: rosbag2 in -> rosbag2 out with every perception topic; one PersonArray per input frame even
for broken frames (dropped with a WARN diagnostic naming the reason); embedded definitions readable with the
plain `mcap` reader; byte-identical PersonArrays on a second run; clear errors for unusable bags. Tiny random
models on the torch backend, 64x64 frames."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import yaml
from mcap.reader import make_reader
from rosbags.typesys import Stores, get_types_from_msg
from rosbags.typesys import get_typestore as rosbags_typestore

from hcq_ros.cli import main
from hcq_ros.evaluation.soak import TINY_SETTINGS, frame_pool, tiny_models
from hcq_ros.ros.bag import BagWriter, header_stamp_ns, read_messages, write_image_sequence
from hcq_ros.ros.image_conversion import rgb_to_compressed_msg, rgb_to_image_msg
from hcq_ros.ros.replay import reason_category
from hcq_ros.ros.typestore import get_typestore
from test_image_conversion import yuv422_bytes

T0 = 1_700_000_000_000_000_000
STEP = 100_000_000
# (case, expected drop category or None for a processed frame), in bag order
CASES = [("rgb8", None), ("yuv422", None), ("16UC1", "depth image"), ("truncated", "truncated image"),
         ("unknown encoding", "unsupported encoding"), ("zero size", "zero-size image"),
         ("huge", "image too large"), ("broken cdr", "corrupted message"), ("bgr8", None),
         ("duplicate stamp", "duplicate stamp"), ("rgb8 again", None)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(folder, model arguments for the CLI, input bag with every case of CASES, the input frames)."""
    root = tmp_path_factory.mktemp("replay")
    det, person = tiny_models(root / "models")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"tracker": TINY_SETTINGS["tracker"]}))
    model_args = ["--backend", "torch", "--detector", str(det), "--person", str(person), "--params", str(params),
                  "--input-size", "64", "64", "--score-threshold", "0", "--max-people", "3", "--threads", "1",
                  "--no-progress"]
    frames = frame_pool(4, 64, 64)
    store = get_typestore()
    image = store.types["sensor_msgs/msg/Image"]
    header = store.types["std_msgs/msg/Header"]
    time = store.types["builtin_interfaces/msg/Time"]

    def raw(k: int, encoding: str, h: int, w: int, step: int, data: bytes, stamp: int | None = None):
        stamp = T0 + k * STEP if stamp is None else stamp
        hdr = header(stamp=time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id="cam")
        return image(header=hdr, height=h, width=w, encoding=encoding, is_bigendian=0, step=step,
                     data=np.frombuffer(data, np.uint8).copy())

    path = root / "input"
    with BagWriter(path, storage="mcap") as bag:
        bag.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
        for k, (case, _) in enumerate(CASES):
            rgb = frames[k % len(frames)]
            if case.startswith("rgb8"):
                msg = rgb_to_image_msg(rgb, raw(k, "rgb8", 1, 1, 3, b"abc").header)
            elif case == "bgr8":
                msg = rgb_to_image_msg(rgb, raw(k, "rgb8", 1, 1, 3, b"abc").header, "bgr8")
            elif case == "yuv422":
                msg = raw(k, "yuv422", 64, 64, 128, yuv422_bytes(rgb, "uyvy").tobytes())
            elif case == "16UC1":
                msg = raw(k, "16UC1", 64, 64, 128, np.full((64, 64), 1500, np.uint16).tobytes())
            elif case == "truncated":
                msg = raw(k, "rgb8", 64, 64, 192, rgb.tobytes()[: 192 * 20])
            elif case == "unknown encoding":
                msg = raw(k, "weird8", 64, 64, 192, rgb.tobytes())
            elif case == "zero size":
                msg = raw(k, "rgb8", 0, 0, 0, b"")
            elif case == "huge":
                msg = raw(k, "rgb8", 100_000, 100_000, 300_000, rgb.tobytes())
            elif case == "broken cdr":
                bag.write("/camera/image_raw", T0 + k * STEP, b"\x00\x01\x00\x00\xff\xff\xff")
                continue
            else:  # duplicate stamp: a good frame with the previous frame's header stamp
                msg = rgb_to_image_msg(rgb, raw(k, "rgb8", 1, 1, 3, b"abc", stamp=T0 + (k - 1) * STEP).header)
            bag.write("/camera/image_raw", T0 + k * STEP, msg)
    return root, model_args, path


def replay(setup, out_name: str, *extra: str) -> tuple[int, dict]:
    root, model_args, path = setup
    summary = root / f"{out_name}.json"
    rc = main(["replay", str(path), str(root / out_name), *model_args, "--json", str(summary), *extra])
    return rc, json.loads(summary.read_text()) if summary.is_file() else {}


def test_one_person_array_per_frame_and_drops_with_reasons(setup):
    rc, summary = replay(setup, "out_a")
    assert rc == 0
    expected_drops = {}
    for _, category in CASES:
        if category:
            expected_drops[category] = expected_drops.get(category, 0) + 1
    assert summary["frames"] == len(CASES) and summary["dropped"] == expected_drops
    assert summary["processed"] == sum(1 for _, c in CASES if c is None)
    assert summary["persons"] == 3 * summary["processed"] and summary["tracks"] >= 3
    assert summary["inputs_not_recorded"] == 1  # the broken CDR message cannot be copied
    messages = list(read_messages(setup[0] / "out_a"))
    by_topic: dict[str, list] = {}
    for topic, stamp, msg in messages:
        by_topic.setdefault(topic, []).append((stamp, msg))
    assert set(by_topic) == {"/camera/image_raw", "/hcq/persons", "/hcq/detections", "/hcq/markers",
                             "/hcq/image_annotated", "/diagnostics"}
    persons = by_topic["/hcq/persons"]
    assert len(persons) == len(CASES) and len(by_topic["/diagnostics"]) == len(CASES)
    assert len(by_topic["/camera/image_raw"]) == len(CASES) - 1
    # headers are the inputs' (the duplicate keeps its repeated stamp; the broken CDR falls back to log time)
    header_stamps = [T0 + (k - 1 if case == "duplicate stamp" else k) * STEP for k, (case, _) in enumerate(CASES)]
    assert [header_stamp_ns(m.header) for _, m in persons] == header_stamps
    assert [stamp for stamp, _ in persons] == [T0 + k * STEP for k in range(len(CASES))]  # input log times
    for (case, category), (_, array), (_, diag) in zip(CASES, persons, by_topic["/diagnostics"]):
        status = diag.status[0]
        if category is None:
            assert len(array.persons) == 3 and status.level == 0, case
            assert all(p.id != "" for p in array.persons)  # min_hits=1: confirmed
        else:
            assert len(array.persons) == 0 and status.level == 1, case  # WARN
            assert reason_category(status.message) == category and status.message.startswith("frame dropped")
    processed_dets = [m for _, m in by_topic["/hcq/detections"]]
    assert len(processed_dets) == summary["processed"]


def test_output_definitions_decode_with_the_plain_mcap_reader(setup):
    out = setup[0] / "out_a"
    if not out.exists():
        assert replay(setup, "out_a")[0] == 0
    (mcap_file,) = out.glob("*.mcap")
    with open(mcap_file, "rb") as stream:
        reader = make_reader(stream)
        schemas = {s.name: s for s in reader.get_summary().schemas.values()}
        records = [(schema, channel, message) for schema, channel, message in reader.iter_messages()
                   if channel.topic == "/hcq/persons"]
    assert schemas["hcq_ros/msg/PersonArray"].encoding == "ros2msg"
    schema = schemas["hcq_ros/msg/PersonArray"]
    bare = rosbags_typestore(Stores.EMPTY)  # knows nothing but what the file carries
    bare.register(get_types_from_msg(schema.data.decode(), schema.name))
    decoded = bare.deserialize_cdr(records[0][2].data, "hcq_ros/msg/PersonArray")
    assert len(decoded.persons) == 3 and len(decoded.persons[0].keypoints) == 17
    assert decoded.persons[0].embedding.shape == (32,) and decoded.persons[0].mask.encoding == "mono8"


def test_person_arrays_are_byte_identical_on_a_second_run(setup):
    def person_bytes(name: str) -> list[bytes]:
        assert replay(setup, name)[0] == 0
        (mcap_file,) = (setup[0] / name).glob("*.mcap")
        with open(mcap_file, "rb") as stream:
            return [m.data for _, c, m in make_reader(stream).iter_messages() if c.topic == "/hcq/persons"]

    first, second = person_bytes("det_1"), person_bytes("det_2")
    assert len(first) == len(CASES) and first == second


def test_pipelined_replay_writes_the_same_person_arrays(setup):
    """The detector one frame ahead on a second thread: the same bytes, drops and summary as one thread."""
    def run(name: str, *extra: str) -> tuple[list[bytes], dict]:
        rc, summary = replay(setup, name, *extra)
        assert rc == 0
        (mcap_file,) = (setup[0] / name).glob("*.mcap")
        with open(mcap_file, "rb") as stream:
            return [m.data for _, c, m in make_reader(stream).iter_messages() if c.topic == "/hcq/persons"], summary

    (seq, seq_summary), (pipe, pipe_summary) = run("seq_1", "--no-pipelined"), run("pipe_1", "--pipelined")
    assert len(pipe) == len(CASES) and pipe == seq
    for key in ("frames", "processed", "persons", "tracks", "dropped", "tracker_resets"):
        assert pipe_summary[key] == seq_summary[key], key


def test_sqlite3_output_compressed_input_and_rep155(setup, tmp_path):
    root, model_args, _ = setup
    frames = frame_pool(3, 64, 64)
    path = tmp_path / "compressed"
    with BagWriter(path, storage="sqlite3") as bag:
        bag.add_topic("/cam/compressed", "sensor_msgs/msg/CompressedImage")
        bag.add_topic("/cam/info", "std_msgs/msg/String")
        for k, rgb in enumerate(frames):
            msg = rgb_to_compressed_msg(rgb, get_typestore().types["std_msgs/msg/Header"](
                stamp=get_typestore().types["builtin_interfaces/msg/Time"](sec=k + 1, nanosec=0), frame_id="c"))
            if k == 1:  # cut off mid-stream: a truncated JPEG is dropped, the next frame still processed
                msg.data = msg.data[: len(msg.data) // 2]
            bag.write("/cam/compressed", T0 + k * STEP, msg)
    out = tmp_path / "out"
    rc = main(["replay", str(path), str(out), "--storage", "sqlite3", "--rep155", "--json",
               str(tmp_path / "s.json"), *model_args])
    assert rc == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["dropped"] == {"truncated image": 1} and summary["processed"] == 2
    assert list(out.glob("*.db3"))
    topics = {t for t, _, _ in read_messages(out)}
    assert {"/cam/compressed", "/hcq/persons", "/humans/bodies/tracked"} <= topics
    assert any(t.startswith("/humans/bodies/") and t.endswith("/skeleton2d") for t in topics)


def test_unusable_inputs_fail_clearly(setup, tmp_path, capsys):
    root, model_args, path = setup
    cases = {
        "does not exist": tmp_path / "missing",
        "no sensor_msgs/Image or CompressedImage topic": tmp_path / "no_images",
        "corrupted": tmp_path / "junk.mcap",
    }
    with BagWriter(cases["no sensor_msgs/Image or CompressedImage topic"]) as bag:
        bag.add_topic("/chatter", "std_msgs/msg/String")
    cases["corrupted"].write_bytes(np.random.default_rng(0).bytes(3000))
    for message, bag_path in cases.items():
        rc = main(["replay", str(bag_path), str(tmp_path / "out"), *model_args])
        assert rc == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    write_image_sequence(tmp_path / "ok", [(T0, np.zeros((8, 8, 3), np.uint8))])
    (tmp_path / "taken").mkdir()
    assert main(["replay", str(tmp_path / "ok"), str(tmp_path / "taken"), *model_args]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "ok"), str(tmp_path / "o2"), "--topic", "/nope", *model_args]) == 2
    assert "no topic '/nope'" in capsys.readouterr().err
    bad_models = [a if a != "torch" else "onnxruntime" for a in model_args]  # no .onnx beside the .pt
    assert main(["replay", str(tmp_path / "ok"), str(tmp_path / "o3"), *bad_models]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_corrupted_bag_half_way_keeps_what_was_written(setup, tmp_path, capsys):
    root, model_args, _ = setup
    path = tmp_path / "cut"
    write_image_sequence(path, [(T0 + k * STEP, f) for k, f in enumerate(frame_pool(4, 64, 64))])
    (mcap_file,) = path.glob("*.mcap")
    raw = bytearray(mcap_file.read_bytes())
    at = raw.find(struct.pack("<Q", T0 + 2 * STEP))  # log_time of the third message record
    raw[at - 15:at + 8] = bytes(23)  # its opcode, length, channel, sequence and log time zeroed
    mcap_file.write_bytes(bytes(raw))
    rc = main(["replay", str(path), str(tmp_path / "out"), *model_args])
    assert rc == 2 and "lists 4 messages on /camera/image_raw but only 2" in capsys.readouterr().err
    # the output bag is finished and holds the two frames before the damage
    assert [t for t, _, _ in read_messages(tmp_path / "out", topics=["/hcq/persons"])] == ["/hcq/persons"] * 2


def test_run_from_a_folder_and_a_video(setup, tmp_path, capsys):
    """`hcq-ros run`: the replay's topics from any source, plus an annotated video; newest-only mode."""
    import cv2

    _, model_args, _ = setup
    frames = frame_pool(4, 64, 64)
    folder = tmp_path / "frames"
    folder.mkdir()
    for k, rgb in enumerate(frames):
        cv2.imwrite(str(folder / f"{k:04d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (folder / "0002b.png").write_bytes(b"broken")
    out, video = tmp_path / "run_out", tmp_path / "run.mp4"
    rc = main(["run", "--source", str(folder), "--out", str(out), "--video", str(video), "--fps", "5",
               "--json", str(tmp_path / "run.json"), *model_args])
    assert rc == 0
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["frames"] == 5 and summary["processed"] == 4 and summary["dropped"] == {"undecodable image": 1}
    persons = [(stamp, m) for _, stamp, m in read_messages(out, topics=["/hcq/persons"])]
    assert [stamp for stamp, _ in persons] == [k * 200_000_000 for k in range(5)]
    assert [m.header.frame_id for _, m in persons] == ["camera"] * 5
    assert summary["topics"]["/camera/image_raw"] == 4 and summary["inputs_not_recorded"] == 1
    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    capture.release()

    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 40.0, (64, 64))
    for k in range(12):
        writer.write(cv2.cvtColor(frames[k % 4], cv2.COLOR_RGB2BGR))
    writer.release()
    rc = main(["run", "--source", str(clip), "--out", str(tmp_path / "live"), "--newest-only",
               "--json", str(tmp_path / "live.json"), *model_args])
    assert rc == 0
    live = json.loads((tmp_path / "live.json").read_text())
    assert live["frames"] == 12 and live["processed"] + live["skipped"] == 12 and live["processed"] >= 1
    assert live["latency_ms"]["p50"] <= live["latency_ms"]["p99"]
    n_persons = len(list(read_messages(tmp_path / "live", topics=["/hcq/persons"])))
    assert n_persons == live["processed"]  # newest-only: only processed frames are recorded
    capsys.readouterr()
    assert main(["run", "--source", str(tmp_path / "nothing.mp4"), "--out", str(tmp_path / "x"), *model_args]) == 2
    assert "source not found" in capsys.readouterr().err
    assert main(["run", "--source", str(clip), *model_args]) == 2
    assert "--out" in capsys.readouterr().err


def test_stamps_going_back_reset_the_tracker(setup, tmp_path):
    """A looped recording: header stamps jump back; the tracker restarts and ids are not reused."""
    _, model_args, _ = setup
    frames = frame_pool(2, 64, 64)
    header = get_typestore().types["std_msgs/msg/Header"]
    time = get_typestore().types["builtin_interfaces/msg/Time"]
    path = tmp_path / "loop"
    with BagWriter(path) as bag:
        bag.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
        for k in range(4):
            stamp = T0 + (k % 2) * STEP  # T0, T0 + STEP, T0, T0 + STEP
            msg = rgb_to_image_msg(frames[k % 2], header(stamp=time(sec=stamp // 10**9, nanosec=stamp % 10**9),
                                                         frame_id="cam"))
            bag.write("/camera/image_raw", T0 + k * STEP, msg)
    rc = main(["replay", str(path), str(tmp_path / "out"), "--json", str(tmp_path / "s.json"), *model_args])
    assert rc == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["processed"] == 4 and summary["tracker_resets"] == 1 and summary["dropped"] == {}
    arrays = [m for _, _, m in read_messages(tmp_path / "out", topics=["/hcq/persons"])]
    first, second = ({p.id for p in arrays[k].persons} for k in (0, 2))
    assert first and second and not first & second  # after the reset: new ids, none reused
