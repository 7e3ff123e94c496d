"""``hcq-ros replay IN OUT``: a rosbag2 with camera images in -> a new rosbag2 with the images plus every
perception topic (``/hcq/persons``, ``/hcq/detections``, ``/hcq/markers``, ``/hcq/image_annotated``,
``/diagnostics``; REP-155 ``/humans/bodies/...`` with ``--rep155``). See ``hcq_ros.ros.replay``.

The perceptor and output options here are shared with ``hcq-ros run`` (``add_perceptor_arguments``,
``add_output_arguments``, ``build_perceptor``, ``message_options``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hcq_ros.ros.replay import OUTPUT_NAMESPACE


def add_perceptor_arguments(parser: argparse.ArgumentParser) -> None:
    from hcq_ros.pipeline import default_model_paths

    detector, person = default_model_paths()
    group = parser.add_argument_group("perception")
    group.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "torch"],
                       help="inference backend (default auto: TensorRT with a GPU, else onnxruntime, else torch)")
    group.add_argument("--detector", default=str(detector), metavar="MODEL",
                       help=f"HCQNet model, any file of its family .pt/.onnx/.trt.onnx (default {detector})")
    group.add_argument("--person", default=str(person), metavar="MODEL",
                       help=f"PersonNet model (default {person})")
    group.add_argument("--input-size", type=int, nargs=2, metavar=("W", "H"), default=None,
                       help="detector input size, multiples of 32 (default 320 320)")
    group.add_argument("--score-threshold", type=float, default=None, help="person score threshold (default 0.5)")
    group.add_argument("--max-people", type=int, default=None, help="most persons per frame (default 20)")
    group.add_argument("--no-person-net", action="store_true",
                       help="detector only: no ReID / attributes / parts (tracking on IoU)")
    group.add_argument("--threads", type=int, default=0, help="CPU threads of the backends (0 = runtime default)")
    group.add_argument("--pipelined", action=argparse.BooleanOptionalAction, default=None,
                       help="run the detector one frame ahead on a second thread (same outputs, higher frame rate; "
                            "default: the params file's `pipelined`)")
    group.add_argument("--params", type=Path, metavar="YAML",
                       help="a node params file or a mapping of PerceptorConfig settings (default: the shipped "
                            "launch/params.yaml); command-line options override it")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"], help="output bag storage")
    group.add_argument("--namespace", default=OUTPUT_NAMESPACE, help=f"output topic namespace ({OUTPUT_NAMESPACE})")
    group.add_argument("--rep155", action="store_true", help="also write the REP-155 /humans/bodies topics")
    group.add_argument("--no-masks", action="store_true", help="leave masks out of PersonArray")
    group.add_argument("--no-parts", action="store_true", help="leave part maps out of PersonArray")
    group.add_argument("--no-embedding", action="store_true", help="leave ReID embeddings out of PersonArray")
    group.add_argument("--no-annotated", action="store_true", help="do not write /hcq/image_annotated")
    group.add_argument("--json", type=Path, metavar="OUT", help="write the summary as JSON here")
    group.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="input rosbag2 (folder, or a bare .mcap / .db3 file)")
    parser.add_argument("output", type=Path, help="output rosbag2 folder (must not exist)")
    parser.add_argument("--topic", default=None,
                        help="image topic (sensor_msgs/Image or CompressedImage; default the bag's only one)")
    parser.add_argument("--video", type=Path, default=None, help="also write the annotated frames as an MP4")
    parser.add_argument("--video-fps", type=float, default=15.0, help="frame rate of --video (default 15)")
    add_perceptor_arguments(parser)
    add_output_arguments(parser)


def perceptor_config(args: argparse.Namespace):
    """PerceptorConfig from --params YAML (default: the shipped launch/params.yaml) overridden by the options."""
    from hcq_ros.pipeline import PerceptorConfig

    from hcq_ros.ros.node_params import load_perceptor_settings

    data = load_perceptor_settings(getattr(args, "params", None))
    data.update(backend=args.backend, detector_model=str(args.detector), person_model=str(args.person))
    for name in ("input_size", "score_threshold", "max_people"):
        if getattr(args, name, None) is not None:
            data[name] = getattr(args, name)
    if args.no_person_net:
        data["enable_person_net"] = False
    if args.threads:
        data["threads"] = args.threads
    if getattr(args, "pipelined", None) is not None:
        data["pipelined"] = args.pipelined
    return PerceptorConfig.from_dict(data)


def build_perceptor(args: argparse.Namespace, config=None):
    """The Perceptor of ``config`` (default: from the command line); prints which backends it chose."""
    from hcq_ros.pipeline import Perceptor

    perceptor = Perceptor(config or perceptor_config(args))
    for role, reason in perceptor.reasons.items():
        print(f"{role}: {reason}", file=sys.stderr)
    return perceptor


def message_options(args: argparse.Namespace):
    from hcq_ros.ros.messages import MessageOptions

    return MessageOptions(rep155=args.rep155, include_masks=not args.no_masks, include_parts=not args.no_parts,
                          include_embedding=not args.no_embedding, image_annotated=not args.no_annotated)


def finish(summary, args: argparse.Namespace, extra: dict | None = None) -> None:
    """Print the summary and write it as JSON when asked."""
    print(summary.text())
    if getattr(args, "json", None) is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**summary.to_dict(), **(extra or {})}, indent=2), encoding="utf-8")
        print(f"summary written to {args.json}")


def run_with_perceptor(command: str, args: argparse.Namespace, body) -> int:
    """The shared frame of ``replay`` and ``run``: ``body(open_perceptor) -> summary``, where
    ``open_perceptor(config)`` builds the Perceptor (closed here whatever happens). A bad input or setting is one
    "hcq-ros COMMAND: error: ..." line and exit status 2; otherwise the summary is printed (``finish``) and 0."""
    opened = []

    def open_perceptor(config):
        opened.append(build_perceptor(args, config))
        return opened[-1]

    try:
        summary = body(open_perceptor)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        print(f"hcq-ros {command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        for perceptor in opened:
            perceptor.close()
    finish(summary, args, {"backends": opened[0].reasons})
    return 0


def run(args: argparse.Namespace) -> int:
    from hcq_ros.ros.replay import replay_bag
    from hcq_ros.sources import BagSource

    def body(open_perceptor):
        if args.output.exists():
            raise FileExistsError(f"{args.output} exists; rosbag2 bags are never overwritten, choose a new path")
        config = perceptor_config(args)
        BagSource(args.input, topic=args.topic)  # a bad input fails before any model is loaded
        return replay_bag(args.input, args.output, open_perceptor(config), topic=args.topic, storage=args.storage,
                          options=message_options(args), namespace=args.namespace, video_path=args.video,
                          video_fps=args.video_fps, progress=not args.no_progress)

    return run_with_perceptor("replay", args, body)
