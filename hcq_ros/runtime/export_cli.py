"""``hcq-ros export --model CKPT --target onnxruntime|tensorrt|all [--out DIR] [--size W H] [--name NAME]``.

Writes ``<out>/<name>.onnx`` (onnxruntime: deformable attention as grid_sample) and/or ``<out>/<name>.trt.onnx``
(TensorRT: plugin nodes), each with a ``.json`` metadata sidecar; see ``hcq_ros.runtime.export``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from hcq_ros.runtime.export import TARGETS, describe_export, export_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="HCQNet or PersonNet checkpoint (.pt)")
    parser.add_argument("--target", choices=TARGETS + ("all",), required=True,
                        help="onnxruntime -> NAME.onnx, tensorrt -> NAME.trt.onnx, all -> both")
    parser.add_argument("--out", type=Path, default=Path("engines"), help="output folder (default engines/)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=None,
                        help="input size (default: detector training size / person crop size)")
    parser.add_argument("--name", default=None, help="file name stem (default: the checkpoint's stem)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--json", type=Path, metavar="OUT", default=None, help="write the export metadata here")


def run(args: argparse.Namespace) -> int:
    targets = TARGETS if args.target == "all" else (args.target,)
    results = []
    for target in targets:
        result = export_model(args.model, target, args.out, tuple(args.size) if args.size else None, args.name,
                              args.opset)
        print(describe_export(result))
        results.append(result.metadata)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results if len(results) > 1 else results[0], indent=2) + "\n",
                             encoding="utf-8")
        print(f"metadata written to {args.json}")
    return 0
