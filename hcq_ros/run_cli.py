"""``hcq-ros run --source SRC --out OUT.mcap [--video OUT.mp4] [--newest-only]``: tracked people from a video
file, an image folder, a camera (``camera:N``) or a rosbag2, written as a rosbag2 with the same topics as
``hcq-ros replay`` (input images + ``/hcq/*`` + ``/diagnostics``) and optionally an annotated MP4.

``--newest-only`` runs the pipeline as the ROS node does: a producer hands frames to a worker thread that
always takes the newest one and skips (counts) the rest. File sources are then released at their frame rate,
as a camera would deliver them (``--realtime-fps`` to change it); without it every frame is processed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hcq_ros.ros.replay_cli import (add_output_arguments, add_perceptor_arguments, message_options,
                                    perceptor_config, run_with_perceptor)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True,
                        help="video file, image folder, camera:N, or rosbag2 (folder / .mcap / .db3)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output rosbag2 (must not exist); at least one of --out / --video")
    parser.add_argument("--video", type=Path, default=None, help="annotated MP4 output")
    parser.add_argument("--topic", default=None, help="image topic of a bag source (default its only one)")
    parser.add_argument("--frame-id", default="camera", help="frame_id of non-bag sources (default camera)")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate of an image folder (default 10) or of a video that states none (30)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop a camera after N frames")
    parser.add_argument("--newest-only", action="store_true",
                        help="process only the newest frame (live mode, skipped frames are counted)")
    parser.add_argument("--realtime-fps", type=float, default=None,
                        help="with --newest-only: rate at which file sources deliver frames (default their fps)")
    parser.add_argument("--no-input-images", action="store_true", help="do not copy the input images into --out")
    add_perceptor_arguments(parser)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hcq_ros.ros.replay import record_source
    from hcq_ros.sources import open_source

    def body(open_perceptor):
        if args.out is None and args.video is None:
            raise ValueError("give --out OUT.mcap and/or --video OUT.mp4")
        if args.out is not None and args.out.exists():
            raise FileExistsError(f"{args.out} exists; rosbag2 bags are never overwritten, choose a new path")
        if args.max_frames is not None and args.max_frames < 1:
            raise ValueError(f"--max-frames must be >= 1, got {args.max_frames}")
        config = perceptor_config(args)
        source = open_source(args.source, topic=args.topic, frame_id=args.frame_id, fps=args.fps,
                             max_pixels=config.max_image_pixels, max_frames=args.max_frames)
        print(f"source: {source.describe}", file=sys.stderr)
        perceptor = open_perceptor(config)
        pace = None
        if args.newest_only and not source.live:
            pace = args.realtime_fps or source.fps or 30.0
        return record_source(source, args.out, perceptor, storage=args.storage, options=message_options(args),
                             namespace=args.namespace, video_path=args.video, video_fps=source.fps or 15.0,
                             record_inputs=not args.no_input_images, progress=not args.no_progress,
                             newest_only=args.newest_only, pace_fps=pace)

    return run_with_perceptor("run", args, body)
