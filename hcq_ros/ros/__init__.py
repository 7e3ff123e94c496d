"""ROS side of hcq_ros. Everything here except ``node`` works without a ROS installation.

- ``typestore``: rosbags typestore with the hcq_ros/msg types (from msg/*.msg) and the standard types we publish.
- ``image_conversion``: numpy <-> sensor_msgs/Image / CompressedImage for rosbags and rclpy message objects.
- ``bag``: rosbag2 (MCAP / sqlite3) writing and image reading with rosbags.
- ``node``: the rclpy lifecycle node; the only module that imports rclpy.

Submodules are not imported here so that ``import hcq_ros.ros.<x>`` stays cheap and ROS-free.
"""
