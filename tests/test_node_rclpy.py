"""hcq_perception on real ROS 2 (rclpy, Humble or newer). Skipped where ROS 2 is not installed and sourced.

To run: build the package in a colcon workspace, ``source install/setup.bash``, then from the workspace root
``python3 -m pytest -q src/hcq_ros/tests/test_node_rclpy.py`` (not from the source tree: there ``hcq_ros``
would resolve to the sources, which lack the generated ``hcq_ros.msg``), or ``colcon test --packages-select
hcq_ros``. The models are
replaced by a stand-in Perceptor so that the test checks the ROS side only: lifecycle, parameters with their
descriptors, topics, and an image in -> PersonArray out with the input header.
"""
from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

from hcq_ros.result import Person, PersonFrame
from hcq_ros.ros import node_params

_MISSING = [name for name in ("rclpy", "hcq_ros.msg") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(_MISSING), reason=f"ROS 2 not available here ({', '.join(_MISSING)} missing): source "
                           "/opt/ros/<distro>/setup.bash and the workspace's install/setup.bash to run these")


class OnePersonPerceptor:
    """Stand-in for hcq_ros.pipeline.Perceptor: one confirmed person (track 7) in every frame."""

    def __init__(self, config):
        self.config, self.closed = config, False

    def detect(self, image, stamp_ns=0, frame_id=""):   # the Perceptor's two halves: detect, then describe
        return (image, stamp_ns, frame_id)

    def describe(self, detections):
        return self.process(*detections)

    def process(self, image_rgb, stamp_ns=0, frame_id=""):
        keypoints = np.zeros((17, 3), np.float32)
        person = Person(track_id=7, score=0.9, box=[4, 6, 30, 40], keypoints=keypoints,
                        mask=np.ones((34, 26), bool), embedding=np.full(4, 0.5, np.float32))
        return PersonFrame(stamp_ns, frame_id, (image_rgb.shape[1], image_rgb.shape[0]), [person], {"detector": 1.0})

    def set_runtime_options(self, **options):
        pass

    def close(self):
        self.closed = True


@pytest.fixture
def ros():
    import rclpy
    rclpy.init()
    yield rclpy
    if rclpy.ok():
        rclpy.shutdown()


def test_configure_declares_parameters_and_publishers(ros):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from hcq_ros.ros.node import PerceptionNode
    node = PerceptionNode(parameter_overrides=[Parameter("score_threshold", value=0.4)])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert all(node.has_parameter(name) for name in node_params.SPECS)
        assert node.get_parameter("score_threshold").value == 0.4
        descriptor = node.describe_parameter("score_threshold")
        assert descriptor.floating_point_range[0].to_value == 1.0 and not descriptor.read_only
        assert node.describe_parameter("backend").read_only
        refused = node.set_parameters([Parameter("backend", value="torch")])[0]
        assert not refused.successful and "read-only" in refused.reason
        assert not node.set_parameters([Parameter("mask_threshold", value=1.5)])[0].successful
        assert node.set_parameters([Parameter("score_threshold", value=0.6)])[0].successful
        topics = dict(node.get_publisher_names_and_types_by_node(node.get_name(), node.get_namespace()))
        assert topics["/persons"] == ["hcq_ros/msg/PersonArray"]
        assert topics["/detections"] == ["vision_msgs/msg/Detection2DArray"]
        assert topics["/markers"] == ["visualization_msgs/msg/MarkerArray"]
        assert topics["/image_annotated"] == ["sensor_msgs/msg/Image"]
        assert topics["/diagnostics"] == ["diagnostic_msgs/msg/DiagnosticArray"]
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    finally:
        node.destroy_node()


def test_active_node_publishes_persons_with_the_input_header(ros, monkeypatch):
    from builtin_interfaces.msg import Time
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    import hcq_ros.pipeline as pipeline
    from hcq_ros.msg import PersonArray
    from hcq_ros.ros.image_conversion import rgb_to_image_msg
    from hcq_ros.ros.node import PerceptionNode

    monkeypatch.setattr(pipeline, "Perceptor", OnePersonPerceptor)
    node = PerceptionNode(parameter_overrides=[Parameter("image_decoder", value="numpy")])
    peer = ros.create_node("hcq_perception_test_peer")
    received = []
    peer.create_subscription(PersonArray, "persons", received.append, 10)
    camera = peer.create_publisher(Image, "image", qos_profile_sensor_data)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    executor.add_node(peer)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        image = rgb_to_image_msg(np.zeros((48, 64, 3), np.uint8), Header(stamp=Time(sec=5, nanosec=7),
                                                                          frame_id="cam"), image_type=Image)
        deadline = time.monotonic() + 15.0
        while not received and time.monotonic() < deadline:  # until discovery has matched both ends
            camera.publish(image)
            executor.spin_once(timeout_sec=0.05)
        assert received, "no PersonArray within 15 s"
        persons = received[0]
        assert (persons.header.stamp.sec, persons.header.stamp.nanosec, persons.header.frame_id) == (5, 7, "cam")
        assert [p.id for p in persons.persons] == ["7"]
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    finally:
        node.stop_pipeline()
        executor.shutdown()
        node.destroy_node()
        peer.destroy_node()
