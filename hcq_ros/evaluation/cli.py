"""``hcq-ros eval --gt DIR --pred PATH [--pred PATH ...] [--json OUT]``: score prediction files;
``hcq-ros eval --model CKPT --data DIR [--json OUT]``: run a checkpoint on a SynthHumans folder and score it;
``hcq-ros eval --pipeline --data SEQDIR [--backend ...] [--tracker-ablation] [--json OUT]``: run the whole Perceptor
over the sequences of a ``hcq-ros synth --sequences K`` folder and score tracking, detection/pose AP, attributes and
parts (``pipeline_eval``).

A checkpoint says which network it holds: a PersonNet (``person_config``) is scored by
``person_eval.evaluate_person_net`` (ReID, attributes, parts, crop pose on the folder's sequence frames), an HCQNet
(``hcq_config``) by ``detector.evaluate_detector`` (COCO AP at ``--input-size``, default the training run's
``data.image_size`` stored in the checkpoint, else 256). ``--model`` may also be a PersonNet ONNX export
(``X.onnx`` or the int8 ``X.int8.onnx``): the same PersonNet metrics, run through the onnxruntime backend
(``evaluate_onnx_person_net``); an HCQNet export by ``detector.evaluate_exported_detector`` (COCO AP at the
export's input size; the whole pipeline on sequences is ``--pipeline --detector X``).

Each ``--pred`` is sorted into its kind (``predictions.find_predictions``: detections json, part PNG folder,
ReID npz, MOT result folder, or a folder bundling several) and every metric that applies is computed with
the same scoring functions a model evaluation uses (``evaluate_detections``, ``evaluate_part_maps``, ...).
Prints a short table; ``--json`` writes every metric (None where a metric is undefined, e.g. AP without GT).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from hcq_ros.pipeline import POSE_SOURCES

from .attributes import evaluate_detection_attributes
from .coco_eval import evaluate_detections, load_coco_gt, validate_results
from .mot import evaluate_mot_dir
from .parts import evaluate_part_maps
from .predictions import GT_ANNOTATIONS, GT_MARKET, GT_MOT, find_predictions, load_detections
from .reid import evaluate_reid_npz

# Order of the printed table (other scalar keys follow).
HEADLINE = ("bbox_AP", "bbox_AP50", "segm_AP", "keypoints_AP", "keypoints_AP_nosmall", "bbox_best_F1_score",
            "parts_mIoU", "attr_acc", "crop_attr_acc", "reid_mAP", "reid_rank1", "reid_rank5", "pose_PCK",
            "mot_MOTA", "mot_IDF1", "id_switches")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", type=Path,
                        help="dataset folder (annotations/person_keypoints.json, parts/, mot/, market/)")
    parser.add_argument("--pred", action="append", type=Path, default=[], metavar="PATH",
                        help="predictions: detections .json, ReID .npz, folder of part PNGs, folder of MOT "
                             "{seq}.txt, or a folder bundling them (repeatable)")
    parser.add_argument("--model", type=Path, metavar="CKPT",
                        help="a PersonNet or HCQNet checkpoint (.pt), or a PersonNet export (.onnx / .int8.onnx, "
                             "onnxruntime), to run on --data instead of prediction files")
    parser.add_argument("--data", type=Path, metavar="DIR", help="SynthHumans folder the --model is scored on")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("W", "H"),
                        help="HCQNet input size for --model (default: from the checkpoint, else 256 256)")
    parser.add_argument("--frame-step", type=int, default=5,
                        help="PersonNet --model: evaluate frames with frame %% N == 0 (default 5)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write all metrics to this JSON file")
    parser.add_argument("--verbose", action="store_true",
                        help="print pycocotools' summaries and every scalar metric")
    group = parser.add_argument_group("--pipeline: the full Perceptor on --data SEQDIR (--input-size = detector size)")
    group.add_argument("--pipeline", action="store_true", help="evaluate the whole pipeline on --data's sequences")
    group.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "torch"])
    group.add_argument("--detector", default="engines/hcq_small.onnx", metavar="MODEL",
                       help="HCQNet model, any file of its family (default engines/hcq_small.onnx)")
    group.add_argument("--person", default="engines/person_small.onnx", metavar="MODEL",
                       help="PersonNet model (default engines/person_small.onnx)")
    group.add_argument("--params", type=Path, metavar="YAML",
                       help="a node params file or a mapping of PerceptorConfig settings (default: the shipped "
                            "launch/params.yaml)")
    group.add_argument("--score-threshold", type=float, default=None, help="Perceptor score threshold")
    group.add_argument("--pose-source", default=None, choices=list(POSE_SOURCES),
                       help="where the joints come from (default: the params file's pose_source)")
    group.add_argument("--tracker-ablation", action="store_true",
                       help="also track the cached detections with IoU only / + ReID / + re-identification")
    group.add_argument("--gt-ids", default="appearance", choices=["appearance", "identity"],
                       help="MOT ground-truth ids: per appearance (gt.txt, default) or per identity")
    group.add_argument("--max-frames", type=int, default=None, help="first N frames of each sequence only")
    group.add_argument("--save-predictions", type=Path, metavar="DIR",
                       help="where the MOT results / detections.json / parts go (default: beside --json)")


def collect_predictions(pred_paths: Sequence[str | Path]) -> dict[str, Path]:
    """{kind: path} over every ``--pred``; ValueError when two paths give the same kind."""
    kinds: dict[str, Path] = {}
    for pred in pred_paths:
        for kind, path in find_predictions(pred).items():
            if kind in kinds:
                raise ValueError(f"two {kind} predictions given: {kinds[kind]} and {path}")
            kinds[kind] = path
    return kinds


def score_detections(gt_coco, results: list, verbose: bool = False, source: str = "predictions") -> dict:
    """COCO AP + attribute accuracy of one COCO results list (what a model's detections also go through)."""
    kept, _ = validate_results(results, gt_coco, source)
    metrics = evaluate_detections(gt_coco, results, verbose=verbose, source=source)
    metrics.update(evaluate_detection_attributes(gt_coco, kept))
    return metrics


def evaluate_paths(gt_dir: str | Path, pred_paths: Sequence[str | Path], verbose: bool = False) -> dict:
    """Every metric that applies to the predictions at ``pred_paths`` against the dataset ``gt_dir``."""
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"ground-truth folder not found: {gt_dir}")
    kinds = collect_predictions(pred_paths)
    if not kinds:
        raise ValueError("no predictions given (use --pred PATH)")
    metrics: dict = {"inputs": {kind: str(path) for kind, path in kinds.items()}}
    coco = load_coco_gt(gt_dir / GT_ANNOTATIONS) if {"detections", "parts"} & set(kinds) else None
    if "detections" in kinds:
        path = kinds["detections"]
        metrics.update(score_detections(coco, load_detections(path), verbose, source=str(path)))
    if "parts" in kinds:
        metrics.update(evaluate_part_maps(gt_dir, kinds["parts"], coco))
    if "reid" in kinds:
        metrics.update(evaluate_reid_npz(gt_dir / GT_MARKET, kinds["reid"]))
    if "mot" in kinds:
        metrics.update(evaluate_mot_dir(gt_dir / GT_MOT, kinds["mot"]))
    return metrics


def jsonable(value):
    """numpy scalars -> Python; NaN -> None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def format_table(metrics: dict, full: bool = False) -> str:
    """Two-column text table of the headline metrics (every scalar metric when ``full``)."""
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    keys = [k for k in HEADLINE if k in scalars]
    if full:
        keys += sorted(k for k in scalars if k not in HEADLINE)
    width = max((len(k) for k in keys), default=6)
    lines = [f"{'metric':<{width}}  value"]
    for key in keys:
        value = scalars[key]
        text = "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
        lines.append(f"{key:<{width}}  {text}")
    if len(keys) < len(scalars):
        lines.append(f"(+ {len(scalars) - len(keys)} more metrics and per-class/per-sequence tables in --json; "
                     f"all with --verbose)")
    return "\n".join(lines)


def evaluate_checkpoint(ckpt_path: str | Path, data_dir: str | Path, input_size: Sequence[int] | None = None,
                        frame_step: int = 5, verbose: bool = False) -> dict:
    """Load ``ckpt_path`` (PersonNet or HCQNet, told apart by its config key) and score it on ``data_dir``."""
    import torch

    ckpt_path, data_dir = Path(ckpt_path), Path(data_dir)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    if ckpt_path.name.endswith(".onnx"):
        from hcq_ros.runtime.export import read_export_metadata

        if read_export_metadata(ckpt_path).get("kind") == "hcq":
            from .detector import evaluate_exported_detector

            return {"model": "HCQNet", **evaluate_exported_detector(ckpt_path, data_dir / GT_ANNOTATIONS, data_dir,
                                                                     verbose=verbose)}
        return evaluate_onnx_person_net(ckpt_path, data_dir, frame_step)
    ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=False)
    from hcq_ros.models import hcq, person_net

    if isinstance(ckpt, dict) and person_net.CHECKPOINT_CONFIG_KEY in ckpt:
        from .person_eval import evaluate_person_net

        model = person_net.load_checkpoint(ckpt_path)
        return {"model": "PersonNet", **evaluate_person_net(model, data_dir, frame_step=frame_step)}
    if isinstance(ckpt, dict) and hcq.CHECKPOINT_CONFIG_KEY in ckpt:
        from .detector import evaluate_detector

        if input_size is None:
            stored = ((ckpt.get("config") or {}).get("data") or {}).get("image_size")
            input_size = tuple(stored) if stored else (256, 256)
        model = hcq.load_checkpoint(ckpt_path)
        metrics = evaluate_detector(model, data_dir / GT_ANNOTATIONS, data_dir, input_size=tuple(input_size),
                                    verbose=verbose)
        return {"model": "HCQNet", **metrics}
    raise ValueError(f"{ckpt_path}: neither a PersonNet ({person_net.CHECKPOINT_CONFIG_KEY!r}) nor an HCQNet "
                     f"({hcq.CHECKPOINT_CONFIG_KEY!r}) checkpoint")


def evaluate_onnx_person_net(onnx_path: str | Path, data_dir: str | Path, frame_step: int = 5) -> dict:
    """Score a PersonNet ONNX export (``.onnx`` fp32 or ``.int8.onnx``) on ``data_dir`` through the onnxruntime
    backend: ``person_eval.evaluate_person_net`` with normalised crops float32 [B, 3, H, W] -> the export's named
    outputs, (H, W) = the export's static crop size. A detector export or one without metadata -> ValueError."""
    from hcq_ros.runtime.export import export_kind_phrase, read_export_metadata
    from hcq_ros.runtime.onnxruntime_backend import OnnxRuntimeBackend

    from .person_eval import evaluate_person_net

    onnx_path = Path(onnx_path)
    meta = read_export_metadata(onnx_path)
    if meta.get("kind") != "person":
        held = export_kind_phrase(meta)
        raise ValueError(f"{onnx_path}: --model X.onnx scores PersonNet and HCQNet exports, this is {held}")
    backend = OnnxRuntimeBackend().load(onnx_path)
    try:
        shape = backend.input_shapes.get("crops") or ()
        if len(shape) != 4 or shape[2] is None or shape[3] is None:
            raise ValueError(f"{onnx_path}: PersonNet export without a static crop size (input shape {shape})")
        metrics = evaluate_person_net(lambda crops: backend.infer({"crops": crops}), data_dir, frame_step=frame_step,
                                      crop_size=(int(shape[3]), int(shape[2])))
    finally:
        backend.close()
    return {"model": "PersonNet", "file": str(onnx_path), "precision": meta.get("precision", "fp32"), **metrics}


def evaluate_pipeline_args(args: argparse.Namespace) -> dict:
    """Build the Perceptor from the command line and run ``pipeline_eval.evaluate_pipeline``."""
    import tempfile

    from hcq_ros.pipeline import Perceptor, PerceptorConfig

    from .pipeline_eval import evaluate_pipeline

    from hcq_ros.ros.node_params import load_perceptor_settings

    settings = load_perceptor_settings(args.params)
    settings.update(backend=args.backend, detector_model=str(args.detector), person_model=str(args.person))
    if args.input_size is not None:
        settings["input_size"] = args.input_size
    if args.score_threshold is not None:
        settings["score_threshold"] = args.score_threshold
    if args.pose_source is not None:
        settings["pose_source"] = args.pose_source
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {args.max_frames}")
    perceptor = Perceptor(PerceptorConfig.from_dict(settings))
    try:
        pred_dir = args.save_predictions
        if pred_dir is None and args.json is not None:
            pred_dir = args.json.with_name(args.json.stem + "_predictions")
        with tempfile.TemporaryDirectory(prefix="hcq_pipeline_eval_") as scratch:
            metrics = evaluate_pipeline(perceptor, args.data, pred_dir or scratch, gt_ids=args.gt_ids,
                                        ablation=args.tracker_ablation, max_frames=args.max_frames,
                                        verbose=args.verbose)
        if pred_dir is None:  # written to a scratch folder that is gone now
            metrics["pipeline"].pop("predictions", None)
        return metrics
    finally:
        perceptor.close()


def run(args: argparse.Namespace) -> int:
    model, data = getattr(args, "model", None), getattr(args, "data", None)
    try:
        if getattr(args, "pipeline", False):
            if data is None or model is not None or args.gt is not None or args.pred:
                raise ValueError("--pipeline takes --data SEQDIR (and model options), not --model/--gt/--pred")
            metrics = jsonable(evaluate_pipeline_args(args))
        elif model is not None or data is not None:
            if model is None or data is None or args.gt is not None or args.pred:
                raise ValueError("use either --model CKPT --data DIR, or --gt DIR --pred PATH")
            metrics = jsonable(evaluate_checkpoint(model, data, getattr(args, "input_size", None),
                                                    getattr(args, "frame_step", 5), getattr(args, "verbose", False)))
        elif args.gt is None:
            raise ValueError("--gt DIR is required (or --model CKPT --data DIR)")
        else:
            metrics = jsonable(evaluate_paths(args.gt, args.pred, verbose=getattr(args, "verbose", False)))
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"hcq-ros eval: error: {e}", file=sys.stderr)
        return 2
    print(format_table(metrics, full=getattr(args, "verbose", False)))
    if metrics.get("tracker_ablation"):
        from .pipeline_eval import ablation_table
        print(ablation_table(metrics["tracker_ablation"]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(metrics, indent=2, allow_nan=False), encoding="utf-8")
        print(f"metrics written to {args.json}")
    return 0
