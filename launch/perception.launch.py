"""Launch the hcq_perception lifecycle node (configured and activated automatically) and, optionally, RViz.

    ros2 launch hcq_ros perception.launch.py image_topic:=/camera/image_raw
    ros2 launch hcq_ros perception.launch.py image_topic:=/cam1/image_raw/compressed namespace:=cam1 use_rviz:=false
    ros2 launch hcq_ros perception.launch.py params_file:=/path/to/my_params.yaml

Arguments: params_file (default: the installed share/hcq_ros/launch/params.yaml), image_topic (remapped to the
node's ``image`` input; a topic ending in /compressed is read as sensor_msgs/CompressedImage),
camera_info_topic, namespace (one node per camera: cam1, cam2, ...), use_rviz, fixed_frame (RViz; default: the
params file's default_frame_id), autostart (configure + activate; false leaves the node Unconfigured for a
lifecycle manager), use_sim_time (bags played with --clock).
"""
import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessStart
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

PACKAGE = "hcq_ros"
NODE_NAME = "hcq_perception"


def _frame_from_params(params_file):
    """default_frame_id of the hcq_perception block of a ROS 2 params file ("camera" when it has none)."""
    with open(params_file) as stream:
        document = yaml.safe_load(stream) or {}
    for key, block in document.items():
        if (str(key) == "/**" or str(key).rstrip("/").split("/")[-1] == NODE_NAME) and isinstance(block, dict):
            frame = (block.get("ros__parameters") or {}).get("default_frame_id")
            if frame:
                return str(frame)
    return "camera"


def _rviz(context, rviz_config):
    fixed_frame = LaunchConfiguration("fixed_frame").perform(context)
    if not fixed_frame:
        fixed_frame = _frame_from_params(LaunchConfiguration("params_file").perform(context))
    # Same namespace as the node: the rviz config's relative topics (image_annotated, markers) resolve to it.
    return [Node(package="rviz2", executable="rviz2", name="rviz2", namespace=LaunchConfiguration("namespace"),
                 arguments=["-d", rviz_config, "-f", fixed_frame], output="screen")]


def generate_launch_description():
    share = get_package_share_directory(PACKAGE)
    arguments = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "launch", "params.yaml"),
                              description="ROS 2 parameters file of the hcq_perception node"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="Input image topic (sensor_msgs/Image, or CompressedImage when it ends "
                                          "in /compressed)"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/camera_info",
                              description="CameraInfo topic (used when the parameter use_camera_info is true)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its topics (one per camera)"),
        DeclareLaunchArgument("use_rviz", default_value="false", description="Start RViz with perception.rviz"),
        DeclareLaunchArgument("fixed_frame", default_value="",
                              description="RViz fixed frame; empty = default_frame_id of the params file"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="Configure and activate the lifecycle node at start"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="Use the /clock topic (ros2 bag play --clock) as the node's time"),
    ]
    node = LifecycleNode(
        package=PACKAGE, executable="perception_node", name=NODE_NAME, namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), {"use_sim_time": LaunchConfiguration("use_sim_time")}],
        output="screen",
        remappings=[("image", LaunchConfiguration("image_topic")),
                    ("camera_info", LaunchConfiguration("camera_info_topic"))])
    autostart = IfCondition(LaunchConfiguration("autostart"))

    def change_state(transition_id):
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id))

    # Standard launch_ros lifecycle pattern: configure once the process runs (the action waits for the node's
    # change_state service), activate when configuring has ended in Inactive (not after a manual deactivate).
    configure_at_start = RegisterEventHandler(OnProcessStart(
        target_action=node, on_start=[change_state(Transition.TRANSITION_CONFIGURE)]), condition=autostart)
    activate_when_configured = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
        entities=[change_state(Transition.TRANSITION_ACTIVATE)]), condition=autostart)
    rviz = OpaqueFunction(function=_rviz, args=[os.path.join(share, "launch", "perception.rviz")],
                          condition=IfCondition(LaunchConfiguration("use_rviz")))
    return LaunchDescription([*arguments, configure_at_start, activate_when_configured, node, rviz])
