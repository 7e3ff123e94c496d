"""`hcq-ros demo`: the main job, end to end on data anyone can generate.

Today: a SynthHumans sequence is generated and written as a rosbag2 MCAP with ``sensor_msgs/Image`` frames on
``/camera/image_raw``, plus a ground-truth MP4 preview with the annotations drawn. The full perception pipeline
(detector, crops, PersonNet, tracker -> PersonArray topics) is added to this same command by the pipeline issue.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np

from hcq_ros.data.schema import COCO_SKELETON, Sample


def add_arguments(parser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    parser.add_argument("--frames", type=int, default=90, help="frames in the sequence")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--topic", default="/camera/image_raw")
    parser.add_argument("--json", type=Path, default=None, help="write the summary as JSON here")


def draw_ground_truth(sample: Sample) -> np.ndarray:
    """Annotated copy of the frame: mask tint, box, skeleton and track id per person. Returns uint8 [H, W, 3] RGB."""
    img = sample.image.copy()
    for p in sample.persons:
        colour = np.array([(37 * (p.track_id + 3)) % 255, (91 * (p.track_id + 5)) % 255, 200], dtype=np.float32)
        if p.mask is not None:
            img[p.mask] = (0.6 * img[p.mask] + 0.4 * colour).astype(np.uint8)
        x0, y0, x1, y1 = [int(round(v)) for v in p.box]
        c = tuple(int(v) for v in colour)
        cv2.rectangle(img, (x0, y0), (x1, y1), c, 1)
        kp = p.keypoints
        for a, b in COCO_SKELETON:
            if kp[a - 1, 2] > 0 and kp[b - 1, 2] > 0:
                cv2.line(img, (int(kp[a - 1, 0]), int(kp[a - 1, 1])), (int(kp[b - 1, 0]), int(kp[b - 1, 1])), c, 1)
        cv2.putText(img, str(p.track_id), (x0, max(8, y0 - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, c, 1)
    return img


def run(args) -> int:
    from hcq_ros.data.synth import IdentityPool, SceneConfig, generate_sequence
    from hcq_ros.ros.bag import write_image_sequence

    args.out.mkdir(parents=True, exist_ok=True)
    bag_path = args.out / "demo.mcap"
    video_path = args.out / "demo_ground_truth.mp4"
    if bag_path.exists():
        # rosbag2 writers refuse to overwrite; a demo rerun replaces its own output.
        import shutil
        shutil.rmtree(bag_path) if bag_path.is_dir() else bag_path.unlink()

    cfg = SceneConfig(width=args.width, height=args.height)
    pool = IdentityPool(seed=args.seed, size=24)
    t0 = time.perf_counter()
    frames = list(generate_sequence(args.seed, cfg, args.frames, camera=1, pool=pool, name="demo"))
    t_gen = time.perf_counter() - t0

    period_ns = int(1e9 / args.fps)
    write_image_sequence(bag_path, ((i * period_ns, s.image) for i, s in enumerate(frames)),
                         topic=args.topic, frame_id="camera")

    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), args.fps,
                             (args.width, args.height))
    for s in frames:
        writer.write(cv2.cvtColor(draw_ground_truth(s), cv2.COLOR_RGB2BGR))
    writer.release()

    tracks = {p.track_id for s in frames for p in s.persons}
    summary = {
        "frames": len(frames),
        "persons": sum(len(s.persons) for s in frames),
        "tracks": len(tracks),
        "generation_s": round(t_gen, 3),
        "bag": str(bag_path),
        "video": str(video_path),
        "topic": args.topic,
    }
    print(f"demo: {summary['frames']} frames, {summary['persons']} person instances, {summary['tracks']} tracks")
    print(f"  bag   -> {bag_path}  ({args.topic}, sensor_msgs/msg/Image)")
    print(f"  video -> {video_path}  (ground truth drawn)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    return 0
