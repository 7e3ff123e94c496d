"""The ROS 2 lifecycle node ``hcq_perception`` (DESIGN.md §10); the only hcq_ros module that imports rclpy.

States (REP-2006 managed node, rclpy.lifecycle, Humble or newer):
- configure: declare the parameters of hcq_ros.ros.node_params (defaults from launch/params.yaml, descriptors
  with ranges, read-only where a change needs a restart), read them, create the lifecycle publishers
  ``persons``, ``detections``, ``markers``, ``image_annotated`` (under the node namespace) and ``/diagnostics``.
- activate: build the Perceptor (backends, TensorRT engine cache: the first activation on a new GPU may
  build engines for minutes, see ``hcq-ros build-engine``), start the worker thread, subscribe to ``image``
  (sensor_msgs/Image or CompressedImage; sensor-data QoS: best effort, keep last 1) and ``camera_info``.
- deactivate: unsubscribe, join the worker, free the Perceptor. cleanup: destroy the publishers.
- shutdown / error: all of the above from any state.

The subscription callback only hands the message to a ``FrameWorker`` (newest-frame slot): decoding, inference
and publishing happen on the worker thread, older frames are dropped and counted. Outputs reuse the input
header. /diagnostics reports fps, latencies, dropped frames and per-stage milliseconds every
``diagnostics_period`` seconds. Thresholds, enabled tasks and output switches change live
(``ros2 param set``); the rest is read-only and needs cleanup + configure.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import threading
import time
import traceback
from typing import Any, Callable, Optional

try:
    import rclpy
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
    from rclpy.executors import ExternalShutdownException
    from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.utilities import remove_ros_args
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image
except ImportError as _exc:
    raise ImportError(
        "hcq_ros.ros.node needs ROS 2 (rclpy, Humble or newer): source it first, e.g. "
        "`source /opt/ros/humble/setup.bash && source ~/ros2_ws/install/setup.bash` (see docs/ros2.md). "
        "Everything else in hcq_ros works without ROS (hcq-ros run / replay write rosbag2 files). "
        f"Import failed: {_exc}") from _exc

from hcq_ros.ros import frame_slot, node_params
from hcq_ros.ros.image_conversion import ImageDecodeError, msg_to_rgb
from hcq_ros.ros.messages import TOPIC_TYPES, MessageFactory, MessageOptions, frame_to_diagnostics, \
    frame_to_messages

NODE_NAME = node_params.NODE_NAME
# Sensor-data input: never queue old frames in DDS either (the worker keeps only the newest anyway).
SENSOR_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                        durability=DurabilityPolicy.VOLATILE)
REP155_LINGER_S = 5.0  # a body's REP-155 publishers are destroyed this long after its last message
_STATUS = "diagnostic_msgs/msg/DiagnosticStatus"


def _descriptor(spec: node_params.ParamSpec) -> ParameterDescriptor:
    """ParameterDescriptor of a table entry: description, read_only, numeric range, choices as text."""
    descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only,
                                     additional_constraints=node_params.constraints_text(spec))
    if spec.kind == "float" and spec.minimum is not None:
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=float(spec.minimum), to_value=float(spec.maximum), step=float(spec.step))]
    elif spec.kind == "int" and spec.minimum is not None:
        descriptor.integer_range = [IntegerRange(
            from_value=int(spec.minimum), to_value=int(spec.maximum), step=int(spec.step))]
    return descriptor


def _transition(method: Callable[..., Any]) -> Callable[..., Any]:
    """rclpy turns an exception in a transition callback into ERROR without a word: log it first."""
    @functools.wraps(method)
    def wrapper(self: "PerceptionNode", state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return method(self, state)
        except Exception as exc:  # noqa: BLE001 - reported, then the state machine goes to ErrorProcessing
            self.get_logger().error(f"{method.__name__} failed: {exc}\n{traceback.format_exc()}")
            return TransitionCallbackReturn.ERROR
    return wrapper


class PerceptionNode(LifecycleNode):
    """Lifecycle node running the hcq_ros Perceptor on the newest image of ``image``."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any):
        super().__init__(node_name, **kwargs)
        self._values: dict[str, Any] = {}
        self._lock = threading.Lock()        # the Perceptor is shared by the worker and the parameter callback
        self._perceptor: Any = None
        self._worker: Optional[frame_slot.FrameWorker] = None
        self._publishers: dict[str, Any] = {}
        self._rep155_publishers: dict[str, Any] = {}
        self._rep155_seen: dict[str, float] = {}
        self._rep155 = False
        self._subscriptions: list[Any] = []
        self._diagnostics_timer: Any = None
        self._factory: Optional[MessageFactory] = None
        self._decode: Callable[[Any], Any] = msg_to_rgb
        self._decoder_name = ""
        self._image_topic = ""
        self._camera_info: Any = None
        self._last_frame: Any = None
        self._last_stamp_ns: Optional[int] = None
        self._errors_reported = 0
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ------------------------------------------------------------------------------------------- lifecycle
    @_transition
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        defaults = node_params.load_defaults()
        for spec in node_params.PARAMS:
            if not self.has_parameter(spec.name):  # a second configure (after cleanup) keeps the declarations
                self.declare_parameter(spec.name, defaults[spec.name], _descriptor(spec))
        values = {spec.name: self.get_parameter(spec.name).value for spec in node_params.PARAMS}
        problems = [reason for name, value in values.items() if (reason := node_params.check_value(name, value))]
        if problems:
            self.get_logger().error("invalid parameters: " + "; ".join(problems))
            return TransitionCallbackReturn.FAILURE
        self._values = {name: node_params.normalize(node_params.SPECS[name], v) for name, v in values.items()}
        self._factory = MessageFactory.rclpy()
        self._decode, self._decoder_name = self._make_decoder(self._values["image_decoder"])
        self._rep155 = self._values["publish_rep155"] and self._hri_msgs_available()
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self._values["output_qos_depth"],
                         reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        for key, topic in node_params.OUTPUT_TOPICS.items():
            msg_type = self._factory.type(TOPIC_TYPES[key])
            self._publishers[key] = self.create_lifecycle_publisher(msg_type, topic, qos)
        self.get_logger().info(
            f"configured: image decoder {self._decoder_name}; outputs {sorted(node_params.OUTPUT_TOPICS)}"
            f"{' + REP-155 /humans/bodies' if self._rep155 else ''}")
        return super().on_configure(state)

    @_transition
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        from hcq_ros.pipeline import Perceptor, PerceptorConfig  # heavy (torch / onnxruntime / TensorRT)
        config_dict = node_params.perceptor_config_dict(self._values)
        started = time.monotonic()
        try:
            config = PerceptorConfig.from_dict(config_dict)
            # relative model paths (the shipped defaults too) also resolve in share/hcq_ros: the cwd is arbitrary
            config = dataclasses.replace(config, detector_model=node_params.resolve_data_path(config.detector_model),
                                         person_model=node_params.resolve_data_path(config.person_model))
            perceptor = Perceptor(config)
        except Exception as exc:  # noqa: BLE001 - bad model path, missing backend: stay inactive, say why
            self.get_logger().error(f"cannot build the Perceptor ({type(exc).__name__}: {exc}); "
                                    f"config: {config_dict}")
            return TransitionCallbackReturn.FAILURE
        with self._lock:
            self._perceptor = perceptor
            self._last_stamp_ns = None
        self.get_logger().info(f"Perceptor ready in {time.monotonic() - started:.1f} s: detector "
                               f"{config.detector_model}, person net {config.person_model}, backend "
                               f"{self._values['backend']!r}, input {self._values['input_size']}")
        window_s = max(5.0, self._values["diagnostics_period"])
        if config.pipelined:   # decode + detector on one thread, PersonNet + tracker + publishing on another
            self._worker = frame_slot.FrameWorker(self._detect_image, on_error=self._on_worker_error,
                                                  window_s=window_s, then=self._describe_and_publish)
        else:
            self._worker = frame_slot.FrameWorker(self._process_image, on_error=self._on_worker_error,
                                                  window_s=window_s)
        self._worker.start()
        self._errors_reported = 0
        result = super().on_activate(state)  # enables the lifecycle publishers
        image_type, transport = self._image_type()
        self._subscriptions.append(self.create_subscription(
            image_type, node_params.INPUT_TOPICS["image"], self._on_image, SENSOR_QOS))
        self._image_topic = self.resolve_topic_name(node_params.INPUT_TOPICS["image"])  # after remapping
        if self._values["use_camera_info"]:
            self._subscriptions.append(self.create_subscription(
                CameraInfo, node_params.INPUT_TOPICS["camera_info"], self._on_camera_info, SENSOR_QOS))
        self._diagnostics_timer = self.create_timer(self._values["diagnostics_period"], self._publish_diagnostics)
        self.get_logger().info(f"active: {image_type.__name__} ({transport}) on {self._image_topic}")
        return result

    @_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        return super().on_deactivate(state)

    @_transition
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._destroy_outputs()
        return super().on_cleanup(state)

    @_transition
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._destroy_outputs()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """After a failed transition: release everything and go back to Unconfigured."""
        try:
            self._stop_processing()
            self._destroy_outputs()
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f"error recovery failed: {exc}")
            return TransitionCallbackReturn.FAILURE  # -> Finalized
        return TransitionCallbackReturn.SUCCESS

    def stop_pipeline(self) -> None:
        """Join the worker and close the Perceptor without touching ROS entities (safe after the context was
        shut down by Ctrl-C; destroy_node() takes care of the rest)."""
        if self._worker is not None and not self._worker.stop():
            self.get_logger().warning("worker thread did not stop within 10 s")
        self._worker = None
        with self._lock:
            perceptor, self._perceptor = self._perceptor, None
            if perceptor is not None:
                perceptor.close()

    def _stop_processing(self) -> None:
        for subscription in self._subscriptions:
            self.destroy_subscription(subscription)
        self._subscriptions = []
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        self.stop_pipeline()  # after the unsubscribe: no new frames; the one in progress finishes
        for publisher in self._rep155_publishers.values():
            self.destroy_publisher(publisher)
        self._rep155_publishers, self._rep155_seen = {}, {}
        self._last_frame = self._camera_info = None

    def _destroy_outputs(self) -> None:
        for publisher in self._publishers.values():
            self.destroy_lifecycle_publisher(publisher)
        self._publishers = {}

    # ------------------------------------------------------------------------------------------- parameters
    def _on_set_parameters(self, parameters: list[Any]) -> SetParametersResult:
        """Validate every change (types, ranges, choices; read-only ones are refused with the reason) and
        apply the live ones. Also called by rclpy while declaring, where read-only values are accepted."""
        changes = {}
        for parameter in parameters:
            if parameter.name not in node_params.SPECS:
                continue  # use_sim_time and other parameters rclpy owns
            declared = self.has_parameter(parameter.name)
            reason = (node_params.check_runtime_change if declared else node_params.check_value)(
                parameter.name, parameter.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            if declared:
                changes[parameter.name] = node_params.normalize(node_params.SPECS[parameter.name], parameter.value)
        if changes:
            try:
                with self._lock:
                    options = node_params.runtime_options(changes)
                    if options and self._perceptor is not None:
                        self._perceptor.set_runtime_options(**options)
                    self._values.update(changes)
            except Exception as exc:  # noqa: BLE001 - e.g. an option the backend cannot change
                return SetParametersResult(successful=False, reason=f"Perceptor refused {changes}: {exc}")
            self.get_logger().info(f"parameters changed: {changes}")
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------------------------------- input
    def _make_decoder(self, choice: str) -> tuple[Callable[[Any], Any], str]:
        """Image message -> uint8 [H, W, 3] RGB: cv_bridge (when importable or asked for) with the numpy
        conversion as fallback for what cv_bridge cannot convert to rgb8 (8UC3, yuyv, ...)."""
        if choice == "numpy":
            return msg_to_rgb, "numpy (hcq_ros.ros.image_conversion)"
        try:
            from cv_bridge import CvBridge, CvBridgeError
        except ImportError as exc:
            if choice == "cv_bridge":
                raise RuntimeError(f"image_decoder is 'cv_bridge' but cv_bridge does not import ({exc}): "
                                   "sudo apt install ros-$ROS_DISTRO-cv-bridge, or set image_decoder: numpy") from exc
            self.get_logger().info(f"cv_bridge not importable ({exc}): using the numpy image conversion")
            return msg_to_rgb, "numpy (cv_bridge missing)"
        bridge = CvBridge()

        def decode(msg: Any) -> Any:
            try:
                if isinstance(msg, CompressedImage):
                    return bridge.compressed_imgmsg_to_cv2(msg, desired_encoding="rgb8")
                return bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
            except (CvBridgeError, TypeError, ValueError) as exc:
                try:
                    return msg_to_rgb(msg)
                except ImageDecodeError as fallback:
                    raise ImageDecodeError(f"cv_bridge: {exc}; numpy: {fallback}") from fallback
        return decode, "cv_bridge"

    def _image_type(self) -> tuple[type, str]:
        transport = self._values["image_transport"]
        if transport == "auto":  # image_transport convention: <base>/compressed carries CompressedImage
            resolved = self.resolve_topic_name(node_params.INPUT_TOPICS["image"])
            transport = "compressed" if resolved.rstrip("/").endswith("/compressed") else "raw"
        return (CompressedImage if transport == "compressed" else Image), transport

    def _hri_msgs_available(self) -> bool:
        if importlib.util.find_spec("hri_msgs") is None:
            self.get_logger().error("publish_rep155 is true but hri_msgs is not installed: the REP-155 topics "
                                    "are disabled (sudo apt install ros-$ROS_DISTRO-hri-msgs, then restart)")
            return False
        return True

    def _on_image(self, msg: Any) -> None:
        worker = self._worker
        if worker is not None:
            worker.submit(msg)

    def _on_camera_info(self, msg: Any) -> None:
        self._camera_info = msg

    def _on_worker_error(self, exc: BaseException) -> None:
        # one call site per severity: rclpy's throttled logging refuses a severity change at the same line
        if isinstance(exc, ImageDecodeError):
            self.get_logger().warning(f"image not decodable: {exc}", throttle_duration_sec=5.0)
        else:
            self.get_logger().error(f"frame failed: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0)

    # ------------------------------------------------------------------------------------------- worker
    def _message_options(self) -> MessageOptions:
        values = self._values
        annotated = self._publishers.get("image_annotated")
        return MessageOptions(
            detections=values["publish_detections"], markers=values["publish_markers"],
            # the overlay is the costliest output: draw it only for a listener
            image_annotated=values["publish_annotated_image"] and annotated is not None
            and annotated.get_subscription_count() > 0,
            diagnostics=False,  # /diagnostics is published by the timer, at diagnostics_period
            rep155=self._rep155, include_masks=values["enable_masks"], include_parts=values["enable_parts"],
            include_embedding=values["enable_reid"])

    def _process_image(self, msg: Any) -> dict[str, float]:
        """Worker thread: decode, perceive, publish one image; returns per-frame measurements in ms."""
        return self._describe_and_publish(self._detect_image(msg))

    def _detect_image(self, msg: Any) -> Optional[tuple]:
        """First stage: decode and run the detector. It runs outside the lock (the parameter callback only
        swaps thresholds; deactivate joins this thread before it closes the Perceptor)."""
        started = time.perf_counter()
        rgb = self._decode(msg)
        decoded = time.perf_counter()
        header = msg.header  # reused for every output
        if not header.frame_id:
            header.frame_id = self._values["default_frame_id"]
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        perceptor = self._perceptor
        if perceptor is None:  # deactivated meanwhile
            return None
        detections = perceptor.detect(rgb, stamp_ns=stamp_ns, frame_id=header.frame_id)
        return header, rgb, stamp_ns, detections, ((decoded - started) * 1e3, (time.perf_counter() - decoded) * 1e3)

    def _describe_and_publish(self, staged: Optional[tuple]) -> dict[str, float]:
        """Second stage, in frame order: stamp rules, PersonNet + tracker, publish; per-frame measurements in ms."""
        if staged is None:
            return {}
        header, rgb, stamp_ns, detections, (decode_ms, detect_ms) = staged
        started = time.perf_counter()
        with self._lock:
            if self._perceptor is None:  # deactivated meanwhile
                return {}
            if self._last_stamp_ns is not None and stamp_ns < self._last_stamp_ns:
                # a bag loop or a reset sim clock: the tracker needs increasing stamps (ids are never reused)
                self.get_logger().warning("image stamps went back in time: resetting the tracker")
                self._perceptor.reset()
            self._last_stamp_ns = stamp_ns
            frame = self._perceptor.describe(detections)
            options = self._message_options()
        perceived = time.perf_counter()
        messages = frame_to_messages(frame, rgb if options.image_annotated else None, header, self._factory,
                                     options)
        for key, message in messages.items():
            if key.startswith("/"):
                self._publish_rep155(key, message)
            elif key in self._publishers:
                self._publishers[key].publish(message)
        self._expire_rep155()
        if frame.dropped is not None:
            self.get_logger().warning(f"frame rejected: {frame.dropped}", throttle_duration_sec=5.0)
        info = self._camera_info
        if info is not None and (info.width, info.height) != (rgb.shape[1], rgb.shape[0]):
            self.get_logger().warning(f"camera_info is {info.width}x{info.height} but images are "
                                      f"{rgb.shape[1]}x{rgb.shape[0]}", throttle_duration_sec=30.0)
        self._last_frame = frame
        done = time.perf_counter()
        return {"decode_ms": decode_ms, "perceptor_ms": detect_ms + (perceived - started) * 1e3,
                "publish_ms": (done - perceived) * 1e3,
                "stamp_latency_ms": (self.get_clock().now().nanoseconds - stamp_ns) / 1e6}

    def _publish_rep155(self, topic: str, message: Any) -> None:
        """REP-155 topics are per body id, so their publishers come and go with the tracks (plain publishers:
        they only exist while the node is active)."""
        publisher = self._rep155_publishers.get(topic)
        if publisher is None:
            publisher = self.create_publisher(type(message), topic, self._values["output_qos_depth"])
            self._rep155_publishers[topic] = publisher
        publisher.publish(message)
        self._rep155_seen[topic] = time.monotonic()

    def _expire_rep155(self) -> None:
        now = time.monotonic()
        for topic, seen in list(self._rep155_seen.items()):
            if now - seen > REP155_LINGER_S:
                self.destroy_publisher(self._rep155_publishers.pop(topic))
                del self._rep155_seen[topic]

    # ------------------------------------------------------------------------------------------- diagnostics
    def _publish_diagnostics(self) -> None:
        worker, publisher = self._worker, self._publishers.get("diagnostics")
        if worker is None or publisher is None or self._factory is None:
            return
        snapshot = worker.snapshot()
        level, message = frame_slot.health(snapshot, self._errors_reported,
                                           stale_after_s=max(2.0, 2 * self._values["diagnostics_period"]))
        self._errors_reported = snapshot.errors
        stats: dict[str, Any] = {
            "fps": snapshot.fps, "latency_ms": snapshot.mean_ms.get("stamp_latency_ms", 0.0),
            "node_latency_ms": snapshot.latency_ms, "node_latency_max_ms": snapshot.latency_max_ms,
            "dropped_frames": snapshot.dropped, "received_frames": snapshot.received,
            "processed_frames": snapshot.processed, "failed_frames": snapshot.errors,
            **{name: ms for name, ms in snapshot.mean_ms.items() if name != "stamp_latency_ms"},
            "input_topic": self._image_topic, "image_decoder": self._decoder_name,
        }
        header = self._factory.make("std_msgs/msg/Header", stamp=self.get_clock().now().to_msg(),
                                    frame_id=self._values["default_frame_id"])
        frame = self._last_frame
        name = self.get_fully_qualified_name()
        if frame is not None:  # persons, stats, then the last frame's <stage>_ms timings; WARN if it was rejected
            array = frame_to_diagnostics(frame, header, self._factory, stats, name=name)
            if level != "OK":  # no input / failures outrank the last frame's own state
                array.status[0].level = self._factory.constant(_STATUS, level)
                array.status[0].message = message
        else:
            values = [self._factory.make("diagnostic_msgs/msg/KeyValue", key=key, value=str(value))
                      for key, value in stats.items()]
            array = self._factory.make("diagnostic_msgs/msg/DiagnosticArray", header=header, status=[
                self._factory.make(_STATUS, level=self._factory.constant(_STATUS, level), name=name,
                                   message=message, hardware_id=self._values["default_frame_id"],
                                   values=values)])
        publisher.publish(array)


def main(args: Optional[list[str]] = None) -> int:
    """``ros2 run hcq_ros perception_node [--autostart] [--ros-args ...]``: spin the node until Ctrl-C.

    Without --autostart the node waits Unconfigured for a lifecycle manager (the launch file configures and
    activates it; by hand: ``ros2 lifecycle set /hcq_perception configure`` then ``activate``)."""
    rclpy.init(args=args)
    parser = argparse.ArgumentParser(prog="perception_node", description="hcq_ros perception lifecycle node")
    parser.add_argument("--autostart", action="store_true", help="configure and activate at start")
    options = parser.parse_args(remove_ros_args(args=args)[1:])
    node = PerceptionNode()
    try:
        if options.autostart and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.stop_pipeline()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
