"""``hcq-ros build-engine --onnx engines/hcq_small.trt.onnx [--precision fp16|fp32|int8] [--calib-images DIR]``.

Builds (or finds in the engine cache) the TensorRT engine for this GPU and TensorRT version, e.g. once at
Jetson start-up so that the node starts without the minutes-long build. Needs TensorRT and a CUDA GPU.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hcq_ros.runtime.engine_cache import PRECISIONS
from hcq_ros.runtime.tensorrt_build import DEFAULT_BATCH_PROFILE, DEFAULT_WORKSPACE_MIB


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", type=Path, required=True, help="TensorRT-form export (*.trt.onnx)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp16", help="default fp16")
    parser.add_argument("--calib-images", type=Path, default=None,
                        help="INT8 calibration images (default: generated SynthHumans frames)")
    parser.add_argument("--calib-count", type=int, default=256, help="INT8 calibration samples (default 256)")
    parser.add_argument("--batch-profile", type=int, nargs=3, metavar=("MIN", "OPT", "MAX"),
                        default=list(DEFAULT_BATCH_PROFILE), help="dynamic batch profile (person net)")
    parser.add_argument("--workspace-mib", type=int, default=DEFAULT_WORKSPACE_MIB, help="builder workspace")
    parser.add_argument("--cache-dir", type=Path, default=None, help="engine cache (default ~/.cache/hcq_ros/engines)")
    parser.add_argument("--engine", type=Path, default=None, help="write the engine to this file instead")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index")
    parser.add_argument("--verbose", action="store_true", help="TensorRT verbose log")
    parser.add_argument("--json", type=Path, metavar="OUT", default=None, help="write a build summary here")


def run(args: argparse.Namespace) -> int:
    from hcq_ros.runtime.tensorrt_backend import TensorRTBackend

    if args.precision != "int8" and args.calib_images is not None:
        raise ValueError("--calib-images is only used with --precision int8")
    start = time.perf_counter()
    backend = TensorRTBackend(precision=args.precision, cache_dir=args.cache_dir, engine_path=args.engine,
                              batch_profile=args.batch_profile, workspace_mib=args.workspace_mib,
                              calib_images=args.calib_images, calib_count=args.calib_count, device=args.device,
                              verbose=args.verbose)
    try:
        backend.load(args.onnx)
        summary = {"onnx": str(args.onnx), "precision": args.precision, "result": backend.reason,
                   "tensorrt_version": backend.trt.__version__, "seconds": round(time.perf_counter() - start, 1),
                   "inputs": {n: list(backend.input_shapes[n]) for n in backend.input_names},
                   "profile": {n: [list(lo), list(hi)] for n, (lo, hi) in backend.shape_bounds.items()},
                   "outputs": backend.output_names}
    finally:
        backend.close()
    print(f"{args.onnx}: {summary['result']} in {summary['seconds']} s (TensorRT {summary['tensorrt_version']}, "
          f"{args.precision})")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0
