"""``hcq-ros export --model CKPT --target onnxruntime|tensorrt|onnxruntime-int8|all [--out DIR] [--size W H]
[--name NAME] [--calib N] [--calib-method M] [--keep-float MODULE ...] [--precision fp16|fp32]``.

Writes ``<out>/<name>.onnx`` (onnxruntime: deformable attention as grid_sample) and/or ``<out>/<name>.trt.onnx``
(TensorRT: plugin nodes), each with a ``.json`` metadata sidecar; see ``hcq_ros.runtime.export``.
``onnxruntime-int8`` writes ``<out>/<name>.int8.onnx`` + ``<name>.int8.json``: the onnxruntime export quantised to
int8 (QDQ) with ``--calib`` SynthHumans calibration samples (``hcq_ros.runtime.quantize``), the ops of the
``--keep-float`` modules left float32. ``torch-tensorrt`` compiles the checkpoint with torch-tensorrt into
``<out>/<name>.torchtrt.ep`` (``hcq_ros.runtime.torch_tensorrt_export``; needs torch_tensorrt, TensorRT and a GPU,
``--precision``). ``all`` = the two float ONNX targets.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hcq_ros.runtime.export import TARGETS, describe_export, export_model
from hcq_ros.runtime.quantize import DEFAULT_CALIB, DEFAULT_METHOD, INT8_TARGET, METHODS, export_int8
from hcq_ros.runtime.torch_tensorrt_export import PRECISIONS, TORCH_TRT_TARGET


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="HCQNet or PersonNet checkpoint (.pt)")
    parser.add_argument("--target", choices=TARGETS + (INT8_TARGET, TORCH_TRT_TARGET, "all"), required=True,
                        help="onnxruntime -> NAME.onnx, tensorrt -> NAME.trt.onnx, onnxruntime-int8 -> "
                             "NAME.int8.onnx, torch-tensorrt -> NAME.torchtrt.ep (GPU), all -> NAME.onnx and "
                             "NAME.trt.onnx")
    parser.add_argument("--out", type=Path, default=Path("engines"), help="output folder (default engines/)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=None,
                        help="input size (default: detector training size / person crop size)")
    parser.add_argument("--name", default=None, help="file name stem (default: the checkpoint's stem)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--calib", type=int, default=None, metavar="N",
                        help=f"onnxruntime-int8: calibration samples, detector frames / PersonNet crops (default "
                             f"{DEFAULT_CALIB['hcq']} / {DEFAULT_CALIB['person']})")
    parser.add_argument("--calib-method", choices=METHODS, default=DEFAULT_METHOD,
                        help=f"onnxruntime-int8: activation range calibration (default {DEFAULT_METHOD})")
    parser.add_argument("--keep-float", nargs="*", default=None, metavar="MODULE",
                        help="onnxruntime-int8: module paths whose Conv/MatMul/Gemm stay float32, e.g. "
                             "query_selection decoder (default: the model kind's DEFAULT_KEEP_FLOAT in "
                             "hcq_ros/runtime/quantize.py; an empty list quantises all)")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default=None,
                        help=f"{TORCH_TRT_TARGET}: TensorRT precision (default fp16)")
    parser.add_argument("--json", type=Path, metavar="OUT", default=None, help="write the export metadata here")


def run(args: argparse.Namespace) -> int:
    """Export; a missing/unreadable checkpoint or a bad setting -> one error line on stderr, exit code 2."""
    try:
        results = _export(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:   # RuntimeError: torch-tensorrt / GPU missing
        print(f"hcq-ros export: error: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results if len(results) > 1 else results[0], indent=2) + "\n",
                             encoding="utf-8")
        print(f"metadata written to {args.json}")
    return 0


def _export(args: argparse.Namespace) -> list[dict]:
    int8 = args.target == INT8_TARGET
    calib, method = getattr(args, "calib", None), getattr(args, "calib_method", DEFAULT_METHOD)
    keep_float = getattr(args, "keep_float", None)
    if not int8 and (calib is not None or method != DEFAULT_METHOD or keep_float is not None):
        raise ValueError(f"--calib / --calib-method / --keep-float only apply to --target {INT8_TARGET}")
    precision = getattr(args, "precision", None)
    if precision is not None and args.target != TORCH_TRT_TARGET:
        raise ValueError(f"--precision only applies to --target {TORCH_TRT_TARGET}")
    size = tuple(args.size) if args.size else None
    if args.target == TORCH_TRT_TARGET:
        from hcq_ros.runtime.torch_tensorrt_export import export_torch_tensorrt

        result = export_torch_tensorrt(args.model, args.out, size, args.name, precision or "fp16")
        print(f"{result.metadata['kind']} -> {result.onnx_path} (torch-tensorrt {result.metadata['precision']}, "
              f"{result.metadata['gpu']})\n  metadata: {result.metadata_path}")
        return [result.metadata]
    results = []
    for target in (TARGETS if args.target == "all" else (args.target,)):
        if int8:
            result = export_int8(args.model, args.out, size, args.name, args.opset, calib, method,
                                 keep_float=None if keep_float is None else tuple(keep_float))
            q = result.metadata["quantization"]
            print(describe_export(result) + f"\n  int8: {q['method']} calibration on {q['calibration_count']} "
                  f"{q['calibration_unit']} (SynthHumans seeds {q['calibration_seeds'][0]}.."
                  f"{q['calibration_seeds'][1]}), {q['quantize_nodes']} QuantizeLinear nodes, "
                  f"{q['float_nodes']} ops of {q['keep_float'] or 'no module'} left float32")
        else:
            result = export_model(args.model, target, args.out, size, args.name, args.opset)
            print(describe_export(result))
        results.append(result.metadata)
    return results
