"""Pick the product's score and tracker thresholds for a detector from tracking accuracy on SynthHumans sequences.

    hcq-ros calibrate --data SEQDIR [--detector engines/hcq_small.onnx] [--json OUT]

A detector's score scale is its own (a focal-loss HCQNet's best-F1 threshold is ~0.3, not 0.5), and the
thresholds that matter to a robot are the tracker's: which detections are published, which ones take part in
the first (appearance + IoU) association, which may start a track. So the Perceptor runs **once** over the
calibration sequences with a low publication floor (``--floor``), its detections and embeddings are cached, and
every combination of

    score_threshold (publication floor) <= high_score (first association) <= new_track_score (births)

is tracked again (``pipeline_eval.retrack``; only the tracker runs) and scored with motmetrics. The winner
maximises IDF1 (ties: MOTA). ``tracker.low_score`` is set to the publication floor, so every published detection
can still extend a track in the second (IoU-only) association, as in ByteTrack.

A second stage, at the chosen thresholds, sweeps how much the tracker trusts appearance (``appearance_settings``:
IoU only, or ReID with iou_weight x appearance_gate x re-identification of lost tracks on/off): the ReID
embedding of a detector's crop is only as good as its box, so the weight that helps depends on the detector.

Duplicate suppression (``nms_iou``, see ``HCQPostProcess``) is swept with the score thresholds: the cache is
made with it off and each ``NMS_GRID`` value is applied to the cached boxes, as the postprocessor would.

Use sequences that the reported figures are *not* computed on (another ``hcq-ros synth --seed``).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from hcq_ros.models.postprocess import suppress_duplicates

from .pipeline_eval import SequenceResult, filter_persons, mot_rows, retrack, run_sequences

NMS_GRID = (1.0, 0.8, 0.7, 0.6)
SCORE_GRID = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
NEW_TRACK_STEPS = (0.0, 0.05, 0.1, 0.2)
IOU_WEIGHTS = (0.5, 0.7, 0.9)
APPEARANCE_GATES = (0.3, 0.5, 0.8)
APPEARANCE_KEYS = ("use_reid", "iou_weight", "appearance_gate", "reidentify_lost")   # what the second stage sets


def appearance_settings(iou_weights=IOU_WEIGHTS, gates=APPEARANCE_GATES) -> list[dict]:
    """Tracker overrides of the appearance stage: IoU only, then ReID over the grid, re-identification on/off."""
    out = [{"use_reid": False, "reidentify_lost": False}]
    for weight in iou_weights:
        for gate in gates:
            for reidentify in (True, False):
                out.append({"use_reid": True, "iou_weight": float(weight), "appearance_gate": float(gate),
                            "reidentify_lost": reidentify})
    return out


def keep_above(sequences: list[SequenceResult], threshold: float) -> list[SequenceResult]:
    """Copies of the cached sequences with only the persons scoring >= threshold (as if published at it)."""
    return filter_persons(sequences, lambda p: p.score >= threshold)


def suppress_cached(sequences: list[SequenceResult], iou: float) -> list[SequenceResult]:
    """Copies of the cached sequences with each frame's duplicates dropped at ``iou`` (1.0: unchanged)."""
    if iou >= 1.0:
        return sequences
    out = []
    for seq in sequences:
        frames = []
        for fr in seq.frames:
            persons = fr.result.persons
            if len(persons) > 1:
                kept = suppress_duplicates(np.stack([p.box for p in persons]), [p.score for p in persons], iou)
                persons = [persons[k] for k in sorted(kept.tolist())]
            frames.append(replace(fr, result=replace(fr.result, persons=persons)))
        out.append(replace(seq, frames=frames))
    return out


def candidate_settings(score_grid=SCORE_GRID, new_track_steps=NEW_TRACK_STEPS) -> list[tuple[float, float, float]]:
    """(score_threshold, high_score, new_track_score) with floor <= high <= new <= 1, from the grid."""
    grid = sorted(set(float(s) for s in score_grid))
    out = []
    for floor in grid:
        for high in (h for h in grid if h >= floor):
            for step in new_track_steps:
                new = round(high + float(step), 4)
                if new <= 1.0:
                    out.append((floor, high, new))
    return out


def track_and_score(sequences: list[SequenceResult], config) -> dict:
    """Re-track every cached sequence with ``config``: {IDF1, MOTA, IDs, FP, FN} over all of them."""
    from .mot import evaluate_mot

    results = {}
    for seq in sequences:
        ids, _ = retrack(seq.frames, config)
        results[seq.name] = (seq.gt_rows, mot_rows(seq.frames, ids), seq.length)
    m = evaluate_mot(results)
    return {"IDF1": m["mot_IDF1"], "MOTA": m["mot_MOTA"], "IDs": m["id_switches"], "FP": m["mot_FP"],
            "FN": m["mot_FN"]}


def sweep(sequences: list[SequenceResult], base_config, settings: list[tuple[float, float, float]],
          nms_grid=(1.0,)) -> list[dict]:
    """One row per nms_iou x setting: {nms_iou, score_threshold, high_score, new_track_score, IDF1, MOTA, IDs,
    FP, FN}."""
    rows = []
    for nms_iou in nms_grid:
        suppressed = suppress_cached(sequences, nms_iou)
        by_floor: dict[float, list[SequenceResult]] = {}
        for floor, high, new in settings:
            if floor not in by_floor:
                by_floor[floor] = keep_above(suppressed, floor)
            config = replace(base_config, low_score=floor, high_score=high, new_track_score=new)
            rows.append({"nms_iou": float(nms_iou), "score_threshold": floor, "high_score": high,
                         "new_track_score": new, **track_and_score(by_floor[floor], config)})
    return rows


def sweep_appearance(sequences: list[SequenceResult], base_config, thresholds: dict,
                     settings: list[dict]) -> list[dict]:
    """At the chosen ``thresholds`` row: one row per appearance setting ({overrides..., IDF1, MOTA, ...})."""
    kept = keep_above(suppress_cached(sequences, thresholds.get("nms_iou", 1.0)), thresholds["score_threshold"])
    base = replace(base_config, low_score=thresholds["score_threshold"], high_score=thresholds["high_score"],
                   new_track_score=thresholds["new_track_score"])
    return [{**setting, **track_and_score(kept, replace(base, **setting))} for setting in settings]


def best_row(rows: list[dict]) -> dict:
    """The row with the highest IDF1, then MOTA (None counts as -inf)."""
    if not rows:
        raise ValueError("no calibration rows to choose from")

    def key(r):
        return tuple(-np.inf if r[k] is None else r[k] for k in ("IDF1", "MOTA"))
    return max(rows, key=key)


def calibrate(perceptor, data_dir: str | Path, floor: float = 0.05, max_frames: int | None = None,
              progress: bool = True, score_grid=SCORE_GRID, nms_grid=NMS_GRID) -> dict:
    """Run the Perceptor once (publication floor ``floor``) and sweep the thresholds; see the module docstring.

    Returns {"best": thresholds row, "rows": [...], "best_appearance": appearance row (at those thresholds),
    "appearance_rows": [...], "sequences": n, "frames": n}."""
    from hcq_ros.tracking.tracker import TrackerConfig

    if perceptor.config.score_threshold > floor:
        raise ValueError(f"the Perceptor publishes from score {perceptor.config.score_threshold}, above the "
                         f"calibration floor {floor}: build it with score_threshold <= floor")
    grid = [s for s in score_grid if s >= floor]
    if not grid:
        raise ValueError(f"no score in the grid {list(score_grid)} is >= the floor {floor}")
    if getattr(perceptor.config, "nms_iou", 1.0) < 1.0:
        raise ValueError(f"the Perceptor drops duplicates at nms_iou {perceptor.config.nms_iou}: build it with "
                         f"nms_iou 1.0, the calibration applies each of {list(nms_grid)} to the cache")
    base = TrackerConfig.from_dict(perceptor.config.tracker)
    sequences = run_sequences(perceptor, data_dir, max_frames=max_frames, progress=progress)
    rows = sweep(sequences, base, candidate_settings(grid), nms_grid)
    best = best_row(rows)
    appearance_rows = sweep_appearance(sequences, base, best, appearance_settings())
    return {"best": best, "rows": rows, "best_appearance": best_row(appearance_rows),
            "appearance_rows": appearance_rows, "sequences": len(sequences),
            "frames": sum(len(s.frames) for s in sequences)}


def params_snippet(best: dict, appearance: dict | None = None) -> str:
    """The launch/params.yaml lines for the chosen thresholds (and appearance settings)."""
    nms = f"nms_iou: {best['nms_iou']}\n" if "nms_iou" in best else ""
    text = (f"score_threshold: {best['score_threshold']}\n" + nms +
            f"tracker:\n  high_score: {best['high_score']}\n  low_score: {best['score_threshold']}\n"
            f"  new_track_score: {best['new_track_score']}\n")
    for name in APPEARANCE_KEYS:
        if appearance is not None and name in appearance:
            value = appearance[name]
            text += f"  {name}: {str(value).lower() if isinstance(value, bool) else value}\n"
    return text



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="SynthHumans sequences (hcq-ros synth --sequences)")
    parser.add_argument("--detector", default="engines/hcq_small.onnx", help="HCQNet model (any file of its family)")
    parser.add_argument("--person", default="engines/person_small.onnx", help="PersonNet model")
    parser.add_argument("--backend", default="onnxruntime", choices=("auto", "tensorrt", "onnxruntime", "torch"))
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("W", "H"), default=(320, 320))
    parser.add_argument("--floor", type=float, default=0.05, help="lowest score the Perceptor publishes while "
                        "caching (every grid value below it is skipped)")
    parser.add_argument("--max-frames", type=int, default=None, help="frames per sequence (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="write every row and the choice here")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from hcq_ros.pipeline import Perceptor, PerceptorConfig

    if not 0.0 <= args.floor < 1.0:
        raise SystemExit(f"--floor must be in [0, 1), got {args.floor}")
    config = PerceptorConfig.from_dict({"backend": args.backend, "detector_model": args.detector,
                                        "person_model": args.person, "input_size": args.input_size,
                                        "score_threshold": args.floor, "max_people": 50,
                                        "nms_iou": 1.0})
    perceptor = Perceptor(config)
    try:
        result = calibrate(perceptor, args.data, floor=args.floor, max_frames=args.max_frames,
                           progress=not args.no_progress)
    finally:
        perceptor.close()
    result["command"] = {"data": str(args.data), "detector": args.detector, "person": args.person,
                         "backend": args.backend, "input_size": list(args.input_size), "floor": args.floor}
    top = sorted(result["rows"], key=lambda r: -(r["IDF1"] or -1.0))[:5]
    print(f"{result['sequences']} sequences, {result['frames']} frames; best 5 of {len(result['rows'])} settings:")
    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"
    for r in top:
        print(f"  nms {r['nms_iou']:.2f}  score {r['score_threshold']:.2f}  high {r['high_score']:.2f}"
              f"  new {r['new_track_score']:.2f}"
              f"  ->  IDF1 {fmt(r['IDF1'])}  MOTA {fmt(r['MOTA'])}  IDs {r['IDs']}  FP {r['FP']}  FN {r['FN']}")
    print("appearance at those thresholds (best 5 of %d):" % len(result["appearance_rows"]))
    for r in sorted(result["appearance_rows"], key=lambda r: -(r["IDF1"] or -1.0))[:5]:
        setting = ", ".join(f"{k} {r[k]}" for k in APPEARANCE_KEYS if k in r)
        print(f"  {setting}  ->  IDF1 {fmt(r['IDF1'])}  MOTA {fmt(r['MOTA'])}  IDs {r['IDs']}")
    print("launch/params.yaml:\n" + params_snippet(result["best"], result["best_appearance"]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
        print(f"written to {args.json}")
    return 0
