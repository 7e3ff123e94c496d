"""Multi-person tracking (DESIGN.md §9): Kalman box filter, IoU + ReID association, lost-track re-identification.

    from hcq_ros.tracking import Tracker, TrackerConfig
    tracker = Tracker(TrackerConfig.from_dict(params))
    outputs = tracker.update(boxes, scores, embeddings, stamp_ns)   # one TrackOutput per detection, in order
"""
from hcq_ros.tracking.kalman import BoxKalmanFilter
from hcq_ros.tracking.tracker import TrackerConfig, TrackInfo, Tracker, TrackOutput, TrackStatus

__all__ = ["BoxKalmanFilter", "TrackInfo", "TrackOutput", "TrackStatus", "Tracker", "TrackerConfig"]
