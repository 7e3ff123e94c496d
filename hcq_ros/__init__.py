"""hcq_ros: real-time human perception (detection, masks, pose, parts, attributes, ReID, tracking)."""
__version__ = "0.1.0"
