"""Test-session settings: one intra-op thread per pytest worker (`make test` runs 2 workers on 2 cores;
more threads only oversubscribe the CPU). torch/cv2 are optional here so that `colcon test` on a ROS machine
without torch still collects the ROS tests."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch
except ImportError:  # pragma: no cover - ROS machines without the training extra
    torch = None
else:
    torch.set_num_threads(1)
try:
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None
else:
    cv2.setNumThreads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long soak/load runs (set HCQ_RUN_SLOW=1 to run them)")
