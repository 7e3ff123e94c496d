"""`hcq-ros demo`: the main job, end to end on data anyone can generate.

With models (the shipped ``engines/hcq_small.*`` + ``engines/person_small.*``, or ``--detector/--person``):

1. a SynthHumans sequence is written as a dataset (``OUT/data``: MOTChallenge frames + gt, COCO json, part maps;
   the same code as ``hcq-ros synth --sequences 1``);
2. every frame goes through the full Perceptor (detector -> crops -> PersonNet -> tracker); a rosbag2 MCAP
   ``OUT/demo.mcap`` gets the input images (``/camera/image_raw``) and every output topic (``/hcq/persons``,
   ``/hcq/detections``, ``/hcq/markers``, ``/hcq/image_annotated``, ``/diagnostics``), and the annotated frames
   go to ``OUT/demo_annotated.mp4``;
3. the outputs are scored against the ground truth (``hcq_ros.evaluation.pipeline_eval``: IDF1/MOTA with
   motmetrics, detection/pose/mask AP with pycocotools, attributes, parts) and printed.

Without models (no trained checkpoints shipped yet) it says so and writes what needs no model: the sequence as
an MCAP bag of ``sensor_msgs/Image`` frames and a ground-truth overlay video. It never invents results.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from hcq_ros.data.schema import COCO_SKELETON, Sample
from hcq_ros.evaluation.cli import jsonable

DETECTOR_STEM, PERSON_STEM = "hcq_small", "person_small"
MODEL_SUFFIXES = (".trt.onnx", ".onnx", ".pt", ".engine", ".plan")


def add_arguments(parser) -> None:
    parser.add_argument("--out", type=Path, default=Path("out/demo"),
                        help="output folder (its demo files are replaced)")
    parser.add_argument("--frames", type=int, default=90, help="frames in the sequence")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--max-people", type=int, default=8, help="most people in view")
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--topic", default="/camera/image_raw")
    parser.add_argument("--engines", type=Path, default=Path("engines"),
                        help=f"where the shipped models are looked for ({DETECTOR_STEM}.*, {PERSON_STEM}.*)")
    parser.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "torch"])
    parser.add_argument("--detector", type=Path, default=None, help="HCQNet model (default: the shipped one)")
    parser.add_argument("--person", type=Path, default=None, help="PersonNet model (default: the shipped one)")
    parser.add_argument("--params", type=Path, default=None, metavar="YAML",
                        help="a node params file or a mapping of PerceptorConfig settings (default: the shipped "
                             "launch/params.yaml)")
    parser.add_argument("--json", type=Path, default=None, help="write the summary as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def find_model(engines: Path, stem: str) -> Path | None:
    """The first existing file of a model family in ``engines`` (any backend's form), else None."""
    for suffix in MODEL_SUFFIXES:
        path = engines / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


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


def _remove(path: Path) -> None:
    """A demo rerun replaces its own outputs (rosbag2 writers refuse to overwrite)."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def run_ground_truth(args) -> dict:
    """No models: the sequence as an image bag + a ground-truth overlay video (no perception results)."""
    from hcq_ros.data.synth import IdentityPool, SceneConfig, generate_sequence
    from hcq_ros.ros.bag import write_image_sequence

    bag_path, video_path = args.out / "demo.mcap", args.out / "demo_ground_truth.mp4"
    for stale in (bag_path, args.out / "demo_annotated.mp4", args.out / "data", args.out / "predictions"):
        _remove(stale)  # outputs of an earlier run with models would otherwise pass for this run's
    cfg = SceneConfig(width=args.width, height=args.height, max_people=args.max_people)
    t0 = time.perf_counter()
    frames = list(generate_sequence(args.seed, cfg, args.frames, camera=1, pool=IdentityPool(seed=args.seed, size=24),
                                    name="demo"))
    t_gen = time.perf_counter() - t0
    period_ns = int(1e9 / args.fps)
    write_image_sequence(bag_path, ((i * period_ns, s.image) for i, s in enumerate(frames)),
                         topic=args.topic, frame_id="camera")
    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), args.fps, (args.width, args.height))
    for s in frames:
        writer.write(cv2.cvtColor(draw_ground_truth(s), cv2.COLOR_RGB2BGR))
    writer.release()
    summary = {"mode": "ground_truth", "frames": len(frames), "persons": sum(len(s.persons) for s in frames),
               "tracks": len({p.track_id for s in frames for p in s.persons}), "generation_s": round(t_gen, 3),
               "bag": str(bag_path), "video": str(video_path), "topic": args.topic}
    print(f"demo: {summary['frames']} frames, {summary['persons']} person instances, {summary['tracks']} tracks "
          f"(ground truth)")
    print(f"  bag   -> {bag_path}  ({args.topic}, sensor_msgs/msg/Image)")
    print(f"  video -> {video_path}  (ground truth drawn)")
    return summary


def write_sequence_dataset(args, data_dir: Path) -> None:
    """One SynthHumans sequence in the dataset layout of ``hcq-ros synth --sequences 1``."""
    import argparse

    from hcq_ros.data.synth import cli as synth_cli

    parser = argparse.ArgumentParser()
    synth_cli.add_arguments(parser)
    synth_args = parser.parse_args(["--out", str(data_dir), "--sequences", "1", "--frames", str(args.frames),
                                    "--width", str(args.width), "--height", str(args.height), "--fps", str(args.fps),
                                    "--max-people", str(args.max_people), "--seed", str(args.seed),
                                    "--identities", "24", "--no-progress"])
    synth_cli.run(synth_args)


def perceptor_config(args, detector: Path, person: Path | None):
    from hcq_ros.pipeline import PerceptorConfig

    from hcq_ros.ros.node_params import load_perceptor_settings

    settings = load_perceptor_settings(args.params)
    settings.update(backend=args.backend, detector_model=str(detector))
    if person is not None:
        settings["person_model"] = str(person)
    else:
        settings["enable_person_net"] = False
    return PerceptorConfig.from_dict(settings)


def run_pipeline(args, detector: Path, person: Path | None) -> dict:
    """Models available: synthetic sequence -> Perceptor -> bag + annotated video + scores against the GT."""
    from hcq_ros.evaluation.coco_eval import load_coco_gt
    from hcq_ros.evaluation.pipeline_eval import run_sequences, score_sequences, write_predictions
    from hcq_ros.evaluation.predictions import GT_ANNOTATIONS
    from hcq_ros.pipeline import Perceptor
    from hcq_ros.ros.bag import BagWriter
    from hcq_ros.ros.replay import FrameRecorder, VideoRecorder
    from hcq_ros.sources import SourceFrame

    data_dir, pred_dir = args.out / "data", args.out / "predictions"
    bag_path, video_path = args.out / "demo.mcap", args.out / "demo_annotated.mp4"
    for path in (data_dir, pred_dir, bag_path, video_path, args.out / "demo_ground_truth.mp4"):
        _remove(path)
    perceptor = Perceptor(perceptor_config(args, detector, person))
    try:
        write_sequence_dataset(args, data_dir)
        coco = load_coco_gt(data_dir / GT_ANNOTATIONS)
        video = VideoRecorder(video_path, args.fps)
        start = time.perf_counter()
        with BagWriter(bag_path, storage="mcap") as bag:
            recorder = FrameRecorder(bag, video, input_topic=args.topic)

            def record(image, fr) -> None:
                source = SourceFrame(fr.stamp_ns, "camera", image, None, (image.shape[1], image.shape[0]),
                                     log_ns=fr.stamp_ns, index=fr.frame - 1)
                recorder.record(source, fr.result)

            sequences = run_sequences(perceptor, data_dir, coco, progress=not args.no_progress, on_frame=record)
            topics = dict(bag.counts)
        video.close()
        wall = time.perf_counter() - start
        pred = write_predictions(sequences, pred_dir, coco)
        metrics = score_sequences(sequences, data_dir, pred, coco)
    finally:
        perceptor.close()
    frames = [fr.result for s in sequences for fr in s.frames]
    track_ids = {p.track_id for f in frames for p in f.persons if p.track_id > 0}
    summary = {"mode": "pipeline", "frames": len(frames), "persons": sum(len(f.persons) for f in frames),
               "tracks": len(track_ids), "gt_persons": int(sum(len(s.gt_rows) for s in sequences)),
               "fps": round(len(frames) / wall, 2), "backends": dict(perceptor.reasons),
               "bag": str(bag_path), "video": str(video_path), "data": str(data_dir), "predictions": str(pred_dir),
               "topics": topics, "metrics": metrics}
    print(f"demo: {summary['frames']} frames through the full pipeline, {summary['persons']} person detections, "
          f"{summary['tracks']} tracks ({summary['gt_persons']} ground-truth boxes), {summary['fps']:.1f} frames/s")
    for role, reason in perceptor.reasons.items():
        print(f"  {role}: {reason}")
    print(f"  bag   -> {bag_path}  ({sum(topics.values())} messages: {', '.join(sorted(topics))})")
    print(f"  video -> {video_path}  (perception output drawn)")
    figures = [("IDF1", "mot_IDF1"), ("MOTA", "mot_MOTA"), ("ID switches", "id_switches"), ("box AP", "bbox_AP"),
               ("mask AP", "segm_AP"), ("pose AP", "keypoints_AP"), ("attribute acc", "attr_acc"),
               ("part mIoU", "parts_mIoU")]
    text = [f"{name} {_fmt(metrics.get(key))}" for name, key in figures if key in metrics]
    print("  against the ground truth: " + ", ".join(text))
    return summary


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def run(args) -> int:
    if args.frames < 1 or args.fps <= 0:
        print(f"hcq-ros demo: error: need --frames >= 1 and --fps > 0, got {args.frames}, {args.fps}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    detector = args.detector or find_model(args.engines, DETECTOR_STEM)
    person = args.person or find_model(args.engines, PERSON_STEM)
    try:
        if detector is None:
            print(f"demo: no shipped models found: {args.engines}/ has no {DETECTOR_STEM}.* (detector) "
                  f"{'' if person else f'and no {PERSON_STEM}.* (PersonNet) '}- the perception pipeline cannot "
                  f"run yet. Writing the ground-truth overlay instead (no perception results, no scores).")
            summary = run_ground_truth(args)
        else:
            if person is None:
                print(f"demo: no PersonNet model ({args.engines}/{PERSON_STEM}.*): running the detector and the "
                      f"IoU tracker only (no ReID, attributes or parts)")
            summary = run_pipeline(args, Path(detector), None if person is None else Path(person))
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"hcq-ros demo: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(jsonable(summary), indent=2))
    return 0
