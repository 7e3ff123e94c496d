"""The ROS 2 node, launch file and RViz config, checked without ROS.

1. Static checks: imports (rclpy only in hcq_ros/ros/node.py; every ROS import declared in package.xml), the
   launch file's arguments and files, the RViz topics, CMake install rules, docs.
2. Importing hcq_ros.ros.node without rclpy gives an ImportError that says how to source ROS 2.
3. The node's logic driven through a minimal stand-in of the rclpy API (below; it mimics rclpy where the node
   relies on it: overrides win at declaration, set-parameter callbacks also see declarations, read-only
   parameters are refused before the callback, lifecycle publishers publish only while active): lifecycle,
   parameters (declared from params.yaml, descriptors, live changes, read-only refusals), publishers, the
   worker path from an image message to published messages with the input header, diagnostics, teardown.
   tests/test_node_rclpy.py runs the same node on real rclpy where ROS 2 is installed.
4. The launch description built with stand-in launch / launch_ros classes: lifecycle auto-activation pattern,
   remappings, rviz arguments.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import re
import stat
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

from hcq_ros.result import Person, PersonFrame
from hcq_ros.ros import messages, node_params

ROOT = Path(__file__).resolve().parents[1]
NODE_PY = ROOT / "hcq_ros" / "ros" / "node.py"
LAUNCH_PY = ROOT / "launch" / "perception.launch.py"
RVIZ = ROOT / "launch" / "perception.rviz"
SCRIPT = ROOT / "scripts" / "perception_node"
# python module -> rosdep key, for the modules whose key differs from the module name
ROSDEP_KEYS = {"numpy": "python3-numpy", "cv2": "python3-opencv", "yaml": "python3-yaml", "scipy": "python3-scipy"}


# ------------------------------------------------------------------------------------------------ static

def imported_modules(path: Path) -> set[str]:
    """Top-level names of every absolute import in a Python file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def package_xml_dependencies() -> set[str]:
    root = ET.parse(ROOT / "package.xml").getroot()
    tags = ("depend", "exec_depend", "build_depend", "buildtool_depend", "test_depend")
    return {element.text.strip() for tag in tags for element in root.iter(tag)}


def test_rclpy_is_imported_only_by_the_node():
    users = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "hcq_ros").rglob("*.py")
                   if "rclpy" in imported_modules(path))
    assert users == ["hcq_ros/ros/node.py"]


def test_package_xml_lists_every_ros_import():
    dependencies = package_xml_dependencies()
    third_party = set()
    for path in (NODE_PY, LAUNCH_PY, SCRIPT, ROOT / "hcq_ros" / "ros" / "node_params.py"):
        third_party |= imported_modules(path) - set(sys.stdlib_module_names) - {"hcq_ros", "__future__"}
    assert {"rclpy", "rcl_interfaces", "sensor_msgs", "launch", "launch_ros", "lifecycle_msgs"} <= third_party
    missing = sorted(m for m in third_party if ROSDEP_KEYS.get(m, m) not in dependencies)
    assert not missing, f"package.xml lacks {missing}"
    # message packages the node publishes through hcq_ros.ros.messages (rclpy imports <pkg>.msg for each)
    used = {pkg for name in ("messages.py", "message_factory.py")
            for pkg in re.findall(r'"([a-z_]+)/msg/[A-Za-z0-9]+"', (ROOT / "hcq_ros/ros" / name).read_text())}
    used |= {t.split("/")[0] for t in messages.TOPIC_TYPES.values()}
    missing = sorted(p for p in used - {"hcq_ros", "hri_msgs"} if p not in dependencies)
    assert not missing, f"package.xml lacks message packages {missing}"
    # hri_msgs is optional: imported lazily, documented in a comment, not a hard dependency
    assert "hri_msgs" not in dependencies and "hri_msgs" in (ROOT / "package.xml").read_text()
    tree = ast.parse(NODE_PY.read_text())
    top_level = {alias.name.split(".")[0] for stmt in tree.body if isinstance(stmt, (ast.Import, ast.ImportFrom))
                 for alias in stmt.names} | {stmt.module.split(".")[0] for stmt in tree.body
                                             if isinstance(stmt, ast.ImportFrom) and stmt.module}
    assert "cv_bridge" not in top_level, "cv_bridge is optional: import it where it is used"


def test_launch_file_arguments_and_files():
    source = LAUNCH_PY.read_text()
    tree = ast.parse(source, filename=str(LAUNCH_PY))
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    declared = {c.args[0].value for c in calls if c.func.id == "DeclareLaunchArgument"}
    used = {c.args[0].value for c in calls if c.func.id == "LaunchConfiguration"}
    assert {"params_file", "image_topic", "namespace", "use_rviz"} <= declared
    assert used <= declared, f"undeclared launch arguments {used - declared}"
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    for name in ("params.yaml", "perception.rviz"):
        assert name in strings and (ROOT / "launch" / name).is_file()
    assert "perception_node" in strings and SCRIPT.is_file() and SCRIPT.stat().st_mode & stat.S_IXUSR
    package_name = ET.parse(ROOT / "package.xml").getroot().findtext("name")
    assert package_name in strings and node_params.NODE_NAME in strings


def test_rviz_config_shows_the_node_outputs():
    config = yaml.safe_load(RVIZ.read_text())
    displays = config["Visualization Manager"]["Displays"]
    plugin_types = {"rviz_default_plugins/Image": "sensor_msgs/msg/Image",
                    "rviz_default_plugins/MarkerArray": "visualization_msgs/msg/MarkerArray"}
    shown = {}
    for display in displays:
        topic = display["Topic"]["Value"]
        key = next(k for k, v in node_params.OUTPUT_TOPICS.items() if v == topic)  # a node output, relative
        assert not topic.startswith("/"), "relative, so it follows the namespace rviz runs in"
        assert plugin_types[display["Class"]] == messages.TOPIC_TYPES[key]
        shown[key] = display
    assert set(shown) == {"image_annotated", "markers"}
    fixed_frame = config["Visualization Manager"]["Global Options"]["Fixed Frame"]
    assert fixed_frame == node_params.load_defaults()["default_frame_id"]


def test_cmake_installs_launch_files_and_scripts():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"foreach\(share_dir launch", cmake) and "DESTINATION share/${PROJECT_NAME}" in cmake
    assert re.search(r'file\(GLOB HCQ_ROS_SCRIPTS "\$\{CMAKE_CURRENT_SOURCE_DIR\}/scripts/\*"\)', cmake)
    assert "install(PROGRAMS ${HCQ_ROS_SCRIPTS} DESTINATION lib/${PROJECT_NAME})" in cmake
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3")
    assert imported_modules(SCRIPT) == {"sys", "hcq_ros"}  # a thin wrapper


def test_docs_cover_install_run_and_pitfalls():
    text = (ROOT / "docs" / "ros2.md").read_text()
    for needle in ("rosdep install", "colcon build", "source install/setup.bash", "rosidl_python#141",
                   "ros2 bag play", "hcq-ros replay", "hcq-ros build-engine", "namespace:=cam1",
                   "best effort, keep last 1", "perception.launch.py", "use_rviz"):
        assert needle in text, needle
    for topic in node_params.OUTPUT_TOPICS.values():
        assert f"`{topic}`" in text


def test_import_without_rclpy_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "rclpy", None)  # as if not installed, even where it is
    monkeypatch.delitem(sys.modules, "hcq_ros.ros.node", raising=False)
    with pytest.raises(ImportError) as info:
        importlib.import_module("hcq_ros.ros.node")
    message = str(info.value)
    assert "ROS 2" in message and "source /opt/ros/" in message and "docs/ros2.md" in message
    for module in ("hcq_ros.ros.node_params", "hcq_ros.ros.frame_slot", "hcq_ros.ros.messages"):
        importlib.import_module(module)  # the rest of hcq_ros.ros stays importable


# ------------------------------------------------------------------------------------------------ stand-ins

class Record:
    """Stand-in for a ROS class: keeps its constructor arguments (also as attributes)."""
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        self.__dict__.update(kwargs)


class SetParametersResult(Record):
    successful, reason = False, ""


class StandinPublisher:
    def __init__(self, msg_type, topic, qos, lifecycle):
        self.msg_type, self.topic, self.qos, self.lifecycle = msg_type, topic, qos, lifecycle
        self.enabled, self.subscribers, self.published = not lifecycle, 0, []

    def publish(self, msg):
        if self.enabled:  # rclpy's LifecyclePublisher drops messages while inactive
            self.published.append(msg)

    def get_subscription_count(self):
        return self.subscribers


class StandinLifecycleNode:
    """The part of rclpy.lifecycle.LifecycleNode (+ rclpy.node.Node) the node uses, with rclpy's semantics."""

    def __init__(self, node_name, *, parameter_overrides=None, remaps=None, **kwargs):
        self.name, self.overrides, self.remaps = node_name, dict(parameter_overrides or {}), remaps or {}
        self.declared, self.descriptors, self.callbacks = {}, {}, []
        self.publishers, self.subscriptions, self.timers, self.logs, self.transitions = [], [], [], [], []
        self.destroyed = False

    def add_on_set_parameters_callback(self, callback):
        self.callbacks.append(callback)

    def _run_callbacks(self, parameters):
        for callback in self.callbacks:
            result = callback(parameters)
            if not result.successful:
                return result
        return SetParametersResult(successful=True)

    def declare_parameter(self, name, value, descriptor):
        assert name not in self.declared, f"{name} declared twice (rclpy raises ParameterAlreadyDeclared)"
        parameter = Record(name=name, value=self.overrides.get(name, value))
        result = self._run_callbacks([parameter])
        if not result.successful:
            raise ValueError(f"InvalidParameterValueException: {result.reason}")
        self.declared[name], self.descriptors[name] = parameter, descriptor
        return parameter

    def has_parameter(self, name):
        return name in self.declared

    def get_parameter(self, name):
        return self.declared[name]

    def param(self, name, value):
        return Record(name=name, value=value)

    def set_parameters(self, parameters):
        results = []
        for parameter in parameters:
            if self.descriptors[parameter.name].read_only:
                result = SetParametersResult(successful=False,
                                             reason=f"Trying to set a read-only parameter: {parameter.name}.")
            else:
                result = self._run_callbacks([parameter])
                if result.successful:
                    self.declared[parameter.name] = parameter
            results.append(result)
        return results

    def create_lifecycle_publisher(self, msg_type, topic, qos):
        self.publishers.append(StandinPublisher(msg_type, topic, qos, lifecycle=True))
        return self.publishers[-1]

    def create_publisher(self, msg_type, topic, qos):
        self.publishers.append(StandinPublisher(msg_type, topic, qos, lifecycle=False))
        return self.publishers[-1]

    def destroy_lifecycle_publisher(self, publisher):
        self.publishers.remove(publisher)

    destroy_publisher = destroy_lifecycle_publisher

    def create_subscription(self, msg_type, topic, callback, qos):
        self.subscriptions.append(Record(msg_type=msg_type, topic=topic, callback=callback, qos=qos))
        return self.subscriptions[-1]

    def destroy_subscription(self, subscription):
        self.subscriptions.remove(subscription)

    def create_timer(self, period, callback):
        self.timers.append(Record(period=period, callback=callback))
        return self.timers[-1]

    def destroy_timer(self, timer):
        self.timers.remove(timer)

    def get_logger(self):
        logs = self.logs

        def log(level):
            return lambda message, **kwargs: logs.append((level, message))
        return Record(debug=log("DEBUG"), info=log("INFO"), warning=log("WARN"), error=log("ERROR"))

    def logged(self, level, text):
        return any(lvl == level and text in message for lvl, message in list(self.logs))

    def get_clock(self):
        from hcq_ros.ros.typestore import get_typestore
        stamp = time.time_ns()
        now = Record(nanoseconds=stamp, to_msg=lambda: get_typestore().types["builtin_interfaces/msg/Time"](
            sec=stamp // 10**9, nanosec=stamp % 10**9))
        return Record(now=lambda: now)

    def resolve_topic_name(self, topic):
        return self.remaps.get(topic, "/" + topic)

    def get_fully_qualified_name(self):
        return "/" + self.name

    def destroy_node(self):
        self.destroyed = True

    # default transition callbacks of rclpy.lifecycle: (de)activate the managed lifecycle publishers
    def on_configure(self, state):
        return self.Return.SUCCESS

    on_cleanup = on_shutdown = on_error = on_configure

    def on_activate(self, state):
        for publisher in self.publishers:
            publisher.enabled = True
        return self.Return.SUCCESS

    def on_deactivate(self, state):
        for publisher in self.publishers:
            publisher.enabled = not publisher.lifecycle
        return self.Return.SUCCESS

    def _trigger(self, transition):
        self.transitions.append(transition)
        result = getattr(self, f"on_{transition}")(Record(label=transition, state_id=0))
        if result == self.Return.ERROR:  # ErrorProcessing
            self.on_error(Record(label="errorprocessing", state_id=0))
        return result

    def trigger_configure(self):
        return self._trigger("configure")

    def trigger_activate(self):
        return self._trigger("activate")

    def trigger_deactivate(self):
        return self._trigger("deactivate")

    def trigger_cleanup(self):
        return self._trigger("cleanup")

    def trigger_shutdown(self):
        return self._trigger("shutdown")


def install_rclpy_standins(monkeypatch):
    """Put stand-in rclpy, rcl_interfaces and sensor_msgs modules into sys.modules; returns their state."""
    import enum
    import types
    state = types.SimpleNamespace(spun=[], shutdown_called=False)
    Return = enum.Enum("TransitionCallbackReturn", "SUCCESS FAILURE ERROR")
    StandinLifecycleNode.Return = Return

    def module(name, **attributes):
        mod = types.ModuleType(name)
        mod.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    def spin(node):
        state.spun.append(node)
        raise KeyboardInterrupt  # Ctrl-C

    def shutdown():
        state.shutdown_called = True

    def remove_ros_args(args=None):
        args = list(args)
        return args[:args.index("--ros-args")] if "--ros-args" in args else args

    module("rclpy", init=lambda args=None: None, spin=spin, ok=lambda: not state.shutdown_called, shutdown=shutdown)
    module("rclpy.executors", ExternalShutdownException=type("ExternalShutdownException", (Exception,), {}))
    module("rclpy.lifecycle", LifecycleNode=StandinLifecycleNode, LifecycleState=Record,
           TransitionCallbackReturn=Return)
    module("rclpy.qos", QoSProfile=Record, HistoryPolicy=enum.Enum("HistoryPolicy", "KEEP_LAST KEEP_ALL"),
           ReliabilityPolicy=enum.Enum("ReliabilityPolicy", "RELIABLE BEST_EFFORT"),
           DurabilityPolicy=enum.Enum("DurabilityPolicy", "VOLATILE TRANSIENT_LOCAL"))
    module("rclpy.utilities", remove_ros_args=remove_ros_args)
    module("rcl_interfaces")
    module("rcl_interfaces.msg", ParameterDescriptor=Record, FloatingPointRange=Record, IntegerRange=Record,
           SetParametersResult=SetParametersResult)
    module("sensor_msgs")
    state.Image, state.CompressedImage, state.CameraInfo = (type(n, (Record,), {}) for n in
                                                            ("Image", "CompressedImage", "CameraInfo"))
    module("sensor_msgs.msg", Image=state.Image, CompressedImage=state.CompressedImage, CameraInfo=state.CameraInfo)
    return state


class StandinTracker:
    def __init__(self):
        self.resets = 0

    def reset(self):
        self.resets += 1


class FakePerceptor:
    """Stands in for hcq_ros.pipeline.Perceptor: one person (track 7) per frame unless ``empty``."""
    instances: list = []
    fail_with = None
    empty = False

    def __init__(self, config):
        if FakePerceptor.fail_with is not None:
            raise FakePerceptor.fail_with
        self.config, self.closed, self.runtime_changes, self.tracker = config, False, [], StandinTracker()
        FakePerceptor.instances.append(self)

    def detect(self, image, stamp_ns=0, frame_id=""):   # the Perceptor's two halves: detect, then describe
        return (image, stamp_ns, frame_id)

    def describe(self, detections):
        return self.process(*detections)

    def process(self, image_rgb, stamp_ns=0, frame_id=""):
        height, width = image_rgb.shape[:2]
        keypoints = np.zeros((17, 3), np.float32)
        keypoints[5:7] = [[10, 12, 0.9], [24, 12, 0.8]]  # shoulders
        persons = [] if FakePerceptor.empty else [Person(
            track_id=7, score=0.9, box=[4, 6, 30, 40], keypoints=keypoints, mask=np.ones((34, 26), bool),
            embedding=np.full(4, 0.5, np.float32))]
        return PersonFrame(stamp_ns, frame_id, (width, height), persons, {"detector": 5.0, "tracker": 0.5})

    def set_runtime_options(self, **options):
        from hcq_ros.pipeline import RUNTIME_OPTIONS
        if set(options) - set(RUNTIME_OPTIONS):
            raise ValueError(f"cannot change {sorted(set(options) - set(RUNTIME_OPTIONS))} at runtime")
        self.runtime_changes.append(options)

    def reset(self):
        self.tracker.reset()

    def close(self):
        self.closed = True


def install_launch_standins(monkeypatch, share_dir: Path):
    """Stand-in launch / launch_ros / lifecycle_msgs / ament_index_python modules for the launch file."""
    import types
    state = types.SimpleNamespace(configurations=[])

    class LaunchConfiguration(Record):
        def __init__(self, name, **kwargs):
            super().__init__(name, **kwargs)
            self.name = name
            state.configurations.append(self)

        def perform(self, context):
            return context[self.name]

    def classes(*names):
        return {name: type(name, (Record,), {}) for name in names}

    def module(name, **attributes):
        mod = types.ModuleType(name)
        mod.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, mod)

    def share(package):
        assert package == "hcq_ros"
        return str(share_dir)

    state.Transition = type("Transition", (), {"TRANSITION_CONFIGURE": 1, "TRANSITION_ACTIVATE": 3})
    module("launch", LaunchDescription=type("LaunchDescription", (), {
        "__init__": lambda self, entities: setattr(self, "entities", list(entities))}))
    module("launch.actions", **classes("DeclareLaunchArgument", "EmitEvent", "OpaqueFunction", "RegisterEventHandler"))
    module("launch.conditions", **classes("IfCondition"))
    module("launch.event_handlers", **classes("OnProcessStart"))
    module("launch.events", matches_action=lambda action: Record(target=action))
    module("launch.substitutions", LaunchConfiguration=LaunchConfiguration)
    module("launch_ros")
    module("launch_ros.actions", **classes("LifecycleNode", "Node"))
    module("launch_ros.event_handlers", **classes("OnStateTransition"))
    module("launch_ros.events")
    module("launch_ros.events.lifecycle", **classes("ChangeState"))
    module("lifecycle_msgs")
    module("lifecycle_msgs.msg", Transition=state.Transition)
    module("ament_index_python")
    module("ament_index_python.packages", get_package_share_directory=share)
    return state


# ------------------------------------------------------------------------------------------------ node logic

@pytest.fixture
def node_module(monkeypatch):
    standins = install_rclpy_standins(monkeypatch)
    import hcq_ros.pipeline as pipeline
    monkeypatch.setattr(pipeline, "Perceptor", FakePerceptor)
    monkeypatch.setattr(messages.MessageFactory, "rclpy", classmethod(lambda cls: cls.rosbags()))
    monkeypatch.delitem(sys.modules, "hcq_ros.ros.node", raising=False)
    module = importlib.import_module("hcq_ros.ros.node")
    module.standins = standins
    yield module
    sys.modules.pop("hcq_ros.ros.node", None)  # built on the stand-ins: never let another test see it
    import hcq_ros.ros
    hcq_ros.ros.__dict__.pop("node", None)


def image_msg(stamp_ns: int, frame_id: str = "cam_optical", encoding: str = "rgb8"):
    from hcq_ros.ros.bag import make_header
    from hcq_ros.ros.image_conversion import rgb_to_image_msg
    msg = rgb_to_image_msg(np.full((48, 64, 3), 90, np.uint8), make_header(stamp_ns, frame_id))
    msg.encoding = encoding
    return msg


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_node_lifecycle_parameters_and_outputs(node_module, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a ROS node's working directory is arbitrary
    SUCCESS, FAILURE = node_module.TransitionCallbackReturn.SUCCESS, node_module.TransitionCallbackReturn.FAILURE
    node = node_module.PerceptionNode(parameter_overrides={"score_threshold": 0.4, "image_decoder": "numpy"})
    assert node.trigger_configure() == SUCCESS
    defaults = node_params.load_defaults()
    assert list(node.declared) == list(defaults), "the node declares exactly the parameters of params.yaml"
    for spec in node_params.PARAMS:
        descriptor = node.descriptors[spec.name]
        assert descriptor.read_only == spec.read_only and descriptor.description == spec.description
    assert node.descriptors["score_threshold"].floating_point_range[0].to_value == 1.0
    assert node.descriptors["tracker.min_hits"].integer_range[0].from_value == 1
    assert node.get_parameter("score_threshold").value == 0.4  # launch / command-line override wins
    outputs = {p.topic: p for p in node.publishers}
    assert set(outputs) == set(node_params.OUTPUT_TOPICS.values())
    assert all(p.lifecycle and not p.enabled for p in outputs.values())
    assert outputs["persons"].msg_type.__msgtype__ == "hcq_ros/msg/PersonArray"
    assert outputs["persons"].qos.reliability.name == "RELIABLE" and outputs["persons"].qos.depth == 5

    # parameter changes: read-only refused with the reason, values validated, live ones accepted
    assert "read-only" in node.set_parameters([node.param("backend", "torch")])[0].reason
    assert "outside" in node.set_parameters([node.param("mask_threshold", 1.5)])[0].reason
    assert node.set_parameters([node.param("score_threshold", 0.6)])[0].successful

    assert node.trigger_activate() == SUCCESS
    perceptor = FakePerceptor.instances[-1]
    assert perceptor.config.score_threshold == 0.6 and perceptor.config.tracker["min_hits"] == 3
    assert Path(perceptor.config.detector_model).is_absolute()  # shipped default found in the package
    assert perceptor.config.pipelined and node._worker._then is not None   # params.yaml: the two-stage worker
    (image_sub,) = node.subscriptions
    assert image_sub.topic == "image" and image_sub.msg_type is node_module.standins.Image
    assert image_sub.qos.reliability.name == "BEST_EFFORT" and image_sub.qos.depth == 1
    assert all(p.enabled for p in outputs.values())

    image_sub.callback(image_msg(1_000_000_000))
    wait_for(lambda: outputs["persons"].published)
    persons = outputs["persons"].published[0]
    assert persons.header.stamp.sec == 1 and persons.header.frame_id == "cam_optical"  # input header reused
    assert [p.id for p in persons.persons] == ["7"]
    assert outputs["detections"].published[0].detections[0].id == "7"
    assert outputs["markers"].published and not outputs["image_annotated"].published  # nobody listens
    assert not outputs["/diagnostics"].published  # timer-driven, not per frame

    outputs["image_annotated"].subscribers = 1
    results = node.set_parameters([node.param("publish_markers", False), node.param("enable_parts", False)])
    assert all(r.successful for r in results)
    assert perceptor.runtime_changes[-1] == {"enable_parts": False}
    markers_before = len(outputs["markers"].published)
    image_sub.callback(image_msg(2_000_000_000, frame_id=""))
    wait_for(lambda: len(outputs["persons"].published) == 2)
    assert outputs["persons"].published[1].header.frame_id == "camera"  # default_frame_id fills an empty one
    assert outputs["image_annotated"].published[0].encoding == "rgb8"
    assert len(outputs["markers"].published) == markers_before

    image_sub.callback(image_msg(1_500_000_000))  # time went back (bag loop): the tracker restarts
    wait_for(lambda: len(outputs["persons"].published) == 3)
    assert perceptor.tracker.resets == 1 and node.logged("WARN", "back in time")

    image_sub.callback(image_msg(3_000_000_000, encoding="16UC1"))  # depth: rejected, counted, logged
    wait_for(lambda: node.logged("WARN", "image not decodable"))
    (timer,) = node.timers
    assert timer.period == 1.0
    timer.callback()
    diagnostics = outputs["/diagnostics"].published[-1]
    status = diagnostics.status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert status.name == "/hcq_perception" and status.level == 2 and "failed" in status.message
    assert values["processed_frames"] == "3" and values["failed_frames"] == "1" and values["persons"] == "1"
    for key in ("fps", "latency_ms", "dropped_frames", "decode_ms", "perceptor_ms", "detector_ms"):
        assert key in values, key
    timer.callback()
    assert outputs["/diagnostics"].published[-1].status[0].level == 0  # no new failures

    assert node.trigger_deactivate() == SUCCESS
    assert perceptor.closed and not node.subscriptions and not node.timers and node._worker is None
    assert not any(p.enabled for p in outputs.values())
    assert node.trigger_cleanup() == SUCCESS and not node.publishers
    assert node.trigger_configure() == SUCCESS  # parameters stay declared; publishers come back
    assert len(node.publishers) == len(node_params.OUTPUT_TOPICS)
    assert node.trigger_shutdown() == SUCCESS and not node.publishers
    assert FAILURE != SUCCESS


def test_node_compressed_input_rep155_and_failures(node_module, monkeypatch):
    SUCCESS, FAILURE = node_module.TransitionCallbackReturn.SUCCESS, node_module.TransitionCallbackReturn.FAILURE
    node = node_module.PerceptionNode(parameter_overrides={"publish_rep155": True, "use_camera_info": True},
                                      remaps={"image": "/cam1/image_raw/compressed"})
    assert node.trigger_configure() == SUCCESS
    if importlib.util.find_spec("hri_msgs") is None:
        assert node.logged("ERROR", "hri_msgs is not installed") and node._rep155 is False
    node._rep155 = True  # as with hri_msgs installed (the rosbags factory used here has its types)
    assert node.trigger_activate() == SUCCESS
    image_sub, info_sub = node.subscriptions
    assert image_sub.msg_type is node_module.standins.CompressedImage and info_sub.topic == "camera_info"

    # REP-155: per-body publishers appear with the track and go once it has not been seen for a while
    from hcq_ros.ros.bag import make_header
    from hcq_ros.ros.image_conversion import rgb_to_compressed_msg
    monkeypatch.setattr(node_module, "REP155_LINGER_S", 0.05)
    info_sub.callback(Record(width=64, height=40))  # differs from the 64 x 48 images: warned
    image_sub.callback(rgb_to_compressed_msg(np.zeros((48, 64, 3), np.uint8), make_header(10**9, "cam")))
    rep155 = lambda: {p.topic: p for p in node.publishers if p.topic.startswith("/humans")}  # noqa: E731
    wait_for(lambda: len(rep155()) == 3)
    assert set(rep155()) == {"/humans/bodies/tracked", "/humans/bodies/7/roi", "/humans/bodies/7/skeleton2d"}
    assert list(rep155()["/humans/bodies/tracked"].published[0].ids) == ["7"]
    assert node.logged("WARN", "camera_info is 64x40 but images are 64x48")
    time.sleep(0.1)
    FakePerceptor.empty = True
    try:
        image_sub.callback(rgb_to_compressed_msg(np.zeros((48, 64, 3), np.uint8), make_header(2 * 10**9, "cam")))
        wait_for(lambda: set(rep155()) == {"/humans/bodies/tracked"})
    finally:
        FakePerceptor.empty = False
    assert node.trigger_deactivate() == SUCCESS and not rep155()

    FakePerceptor.fail_with = FileNotFoundError("engines/missing.onnx")
    try:
        assert node.trigger_activate() == FAILURE
    finally:
        FakePerceptor.fail_with = None
    assert node.logged("ERROR", "engines/missing.onnx") and not node.subscriptions

    bad = node_module.PerceptionNode(parameter_overrides={"score_threshold": 1})  # int for a float
    assert bad.trigger_configure() == node_module.TransitionCallbackReturn.ERROR
    assert bad.logged("ERROR", "expected a float") and not bad.publishers


def test_main_autostart_and_clean_exit(node_module):
    standins = node_module.standins
    assert node_module.main(["perception_node", "--autostart", "--ros-args", "-p", "x:=1"]) == 0
    (node,) = standins.spun
    assert node.transitions == ["configure", "activate"]
    assert node.destroyed and node._worker is None and FakePerceptor.instances[-1].closed
    assert standins.shutdown_called


# ------------------------------------------------------------------------------------------------ launch

def test_launch_description_auto_activates_the_lifecycle_node(monkeypatch):
    launch = install_launch_standins(monkeypatch, share_dir=ROOT)
    spec = importlib.util.spec_from_file_location("perception_launch", LAUNCH_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    entities = description.entities
    arguments = {e.args[0]: e.kwargs for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    assert Path(arguments["params_file"]["default_value"]) == ROOT / "launch" / "params.yaml"
    assert {c.name for c in launch.configurations} <= set(arguments)
    (node,) = [e for e in entities if type(e).__name__ == "LifecycleNode"]
    assert node.kwargs["package"] == "hcq_ros" and node.kwargs["executable"] == "perception_node"
    assert node.kwargs["name"] == node_params.NODE_NAME and "namespace" in node.kwargs  # required on Humble
    remaps = {src: dst.name for src, dst in node.kwargs["remappings"]}
    assert remaps["image"] == "image_topic"
    params_file, overrides = node.kwargs["parameters"]
    assert params_file.name == "params_file" and overrides["use_sim_time"].name == "use_sim_time"

    handlers = [e.args[0] for e in entities if type(e).__name__ == "RegisterEventHandler"]
    on_start = next(h for h in handlers if type(h).__name__ == "OnProcessStart")
    assert on_start.kwargs["target_action"] is node
    (configure,) = on_start.kwargs["on_start"]
    assert configure.kwargs["event"].kwargs["transition_id"] == launch.Transition.TRANSITION_CONFIGURE
    assert configure.kwargs["event"].kwargs["lifecycle_node_matcher"].target is node
    on_inactive = next(h for h in handlers if type(h).__name__ == "OnStateTransition")
    assert on_inactive.kwargs["target_lifecycle_node"] is node
    assert (on_inactive.kwargs["start_state"], on_inactive.kwargs["goal_state"]) == ("configuring", "inactive")
    (activate,) = on_inactive.kwargs["entities"]
    assert activate.kwargs["event"].kwargs["transition_id"] == launch.Transition.TRANSITION_ACTIVATE

    (rviz_action,) = [e for e in entities if type(e).__name__ == "OpaqueFunction"]
    assert rviz_action.kwargs["condition"].args[0].name == "use_rviz"
    context = {"fixed_frame": "", "params_file": str(ROOT / "launch" / "params.yaml"), "namespace": "cam1"}
    (rviz,) = rviz_action.kwargs["function"](context, *rviz_action.kwargs["args"])
    assert rviz.kwargs["executable"] == "rviz2" and rviz.kwargs["namespace"].name == "namespace"
    args = rviz.kwargs["arguments"]
    assert Path(args[args.index("-d") + 1]) == RVIZ and args[args.index("-f") + 1] == "camera"
    (rviz,) = rviz_action.kwargs["function"]({**context, "fixed_frame": "base_link"}, *rviz_action.kwargs["args"])
    assert rviz.kwargs["arguments"][-1] == "base_link"
    assert os.path.basename(LAUNCH_PY) == "perception.launch.py"
