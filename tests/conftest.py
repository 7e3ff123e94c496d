"""Test-session settings: one intra-op thread per pytest worker (`make test` runs 2 workers on 2 cores;
more threads only oversubscribe the CPU)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
cv2.setNumThreads(1)
