"""pip install for hcq_ros (off ROS). Inside a colcon workspace the same package is built by CMakeLists.txt."""
from setuptools import find_packages, setup

setup(
    name="hcq_ros",
    version="0.1.0",
    description="Real-time human perception for robots: detection, masks, pose, parts, attributes, ReID, tracking",
    python_requires=">=3.10",
    packages=find_packages(include=["hcq_ros", "hcq_ros.*"]),
    data_files=[("share/hcq_ros/msg", ["msg/Keypoint2D.msg", "msg/Attribute.msg", "msg/Person.msg",
                                       "msg/PersonArray.msg"])],
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "opencv-python-headless>=4.8",
        "PyYAML>=6",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "Pillow>=9",
        "pycocotools>=2.0.7",
        "motmetrics>=1.4",
        "lap>=0.5",
        "rosbags>=0.10",
        "rosbags-image>=0.9",
        "mcap>=1.1",
    ],
    extras_require={
        # torch is pinned: an unpinned requirement pulls the CUDA build (GBs) and replaces the CPU wheel.
        "train": ["torch==2.13.0", "onnx>=1.15", "onnxscript>=0.1"],
        "runtime": ["onnxruntime>=1.17"],
        "ros": ["rosbags>=0.10", "mcap>=1.1", "cyclonedds>=0.10"],
        "test": ["pytest>=7", "pytest-xdist>=3"],
    },
    entry_points={"console_scripts": ["hcq-ros=hcq_ros.cli:main"]},
)
