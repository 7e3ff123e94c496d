"""Frame sources of `hcq-ros run`: video file, image folder, camera:N, rosbag2; dispatch and clear errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from hcq_ros.ros.bag import BagError, BagWriter, make_header, write_image_sequence
from hcq_ros.ros.image_conversion import rgb_to_compressed_msg, rgb_to_image_msg
from hcq_ros.sources import BagSource, CameraSource, FolderSource, VideoSource, open_source

T0 = 1_700_000_000_000_000_000


def images(n: int, h: int = 24, w: int = 32) -> list[np.ndarray]:
    """Distinct flat-colour frames (survive video compression well enough to tell apart)."""
    return [np.full((h, w, 3), (20 + 50 * i) % 256, np.uint8) for i in range(n)]


def test_folder_is_read_in_sorted_order_and_bad_files_are_error_frames(tmp_path):
    frames = images(3)
    for name, rgb in zip(("b.png", "a.png", "c.jpg"), frames):
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (tmp_path / "bb.png").write_bytes(b"not a png")  # sorts between b.png and c.jpg
    (tmp_path / "notes.txt").write_text("ignored")
    source = open_source(tmp_path, fps=5.0)
    assert isinstance(source, FolderSource) and source.total == 4
    got = list(source.frames())
    assert [f.index for f in got] == [0, 1, 2, 3]
    assert [f.stamp_ns for f in got] == [0, 200_000_000, 400_000_000, 600_000_000]
    np.testing.assert_array_equal(got[0].rgb, frames[1])  # a.png first
    np.testing.assert_array_equal(got[1].rgb, frames[0])
    assert got[2].rgb is None and "bb.png" in got[2].error
    assert got[3].error is None and got[3].image_size == (32, 24)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        open_source(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        open_source(tmp_path / "empty")
    with pytest.raises(ValueError, match="only applies to bag"):
        open_source(tmp_path, topic="/cam")


def test_video_file(tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20.0, (32, 24))
    for rgb in images(5):
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    source = open_source(path)
    assert isinstance(source, VideoSource) and source.fps == pytest.approx(20.0) and source.total == 5
    got = list(source.frames())
    assert len(got) == 5 and all(f.error is None and f.rgb.shape == (24, 32, 3) for f in got)
    assert [f.stamp_ns for f in got] == [k * 50_000_000 for k in range(5)]
    means = [f.rgb.mean() for f in got]
    assert means == sorted(means) and means[-1] - means[0] > 100  # the frames in order
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="cannot open"):
        open_source(junk)


def test_camera_spec_errors():
    with pytest.raises(ValueError, match="camera:N"):
        open_source("camera:front")
    with pytest.raises(ValueError, match="cannot open camera device 97"):
        CameraSource(97)


def test_bag_source_uses_header_stamps_and_keeps_the_messages(tmp_path):
    path = tmp_path / "bag"
    frames = images(3)
    with BagWriter(path) as bag:
        bag.add_topic("/cam/compressed", "sensor_msgs/msg/CompressedImage")
        for k, rgb in enumerate(frames):
            stamp = 0 if k == 2 else T0 + k  # an unset header stamp falls back to the log time
            bag.write("/cam/compressed", T0 + 1000 * k, rgb_to_compressed_msg(rgb, make_header(stamp, "cam"), "png"))
    source = open_source(path / "bag.mcap")  # a bare .mcap file works too
    assert isinstance(source, BagSource) and source.input_type == "sensor_msgs/msg/CompressedImage"
    assert source.input_topic == "/cam/compressed" and source.total == 3
    got = list(source.frames())
    assert [f.stamp_ns for f in got] == [T0, T0 + 1, T0 + 2000]
    assert [f.log_ns for f in got] == [T0, T0 + 1000, T0 + 2000]
    assert all(f.frame_id == "cam" and f.msg is not None and f.header is f.msg.header for f in got)
    np.testing.assert_array_equal(got[1].rgb, frames[1])


def test_bag_source_errors(tmp_path):
    two = tmp_path / "two"
    with BagWriter(two) as bag:
        for topic in ("/a/image", "/b/image"):
            bag.add_topic(topic, "sensor_msgs/msg/Image")
            bag.write(topic, T0, rgb_to_image_msg(images(1)[0], make_header(T0, "cam")))
        bag.add_topic("/info", "std_msgs/msg/String")
    with pytest.raises(BagError, match="several image topics"):
        open_source(two)
    assert open_source(two, topic="/b/image").input_topic == "/b/image"
    with pytest.raises(BagError, match="has no image topic '/info'"):
        open_source(two, topic="/info")
    with pytest.raises(BagError, match="has no topic '/nope'"):
        open_source(two, topic="/nope")
    write_image_sequence(tmp_path / "big", [(T0, np.zeros((20, 20, 3), np.uint8))])
    (frame,) = BagSource(tmp_path / "big", max_pixels=100).frames()
    assert frame.rgb is None and "exceeds max_pixels" in frame.error and frame.image_size == (20, 20)
