"""Score the whole Perceptor (detector -> crops -> PersonNet -> tracker) on SynthHumans sequences.

``hcq-ros eval --pipeline --data SEQDIR`` where SEQDIR was written by ``hcq-ros synth --sequences K --frames T``:

1. every frame of every ``SEQDIR/mot/{seq}`` goes through ``Perceptor.process`` in order (tracker reset per
   sequence; stamps = (frame - 1) / the sequence's frame rate). The PersonFrames are cached (box, score,
   keypoints, mask, parts, attributes, embedding of every detection).
2. the outputs are written in the prediction formats of ``hcq_ros.evaluation.predictions``: ``mot/{seq}.txt``
   (confirmed tracks, detection boxes), ``detections.json`` (every published person: box, score, full-image
   mask RLE, keypoints, attributes, track id) and ``parts/`` (one full-image label map per frame, higher
   scores painted last) - so ``hcq-ros eval --gt SEQDIR --pred DIR`` gives the same numbers.
3. scored with the shared functions: motmetrics (``mot_IDF1``, ``mot_MOTA``, ``id_switches``, ...), pycocotools
   (``bbox_AP``, ``segm_AP``, ``keypoints_AP``, ... over the sequence frames only), attribute accuracy, part mIoU.

With ``tracked_only`` on (the node's default) the Perceptor runs with it off, so that the cache holds every
detection, and the scored outputs keep the people of confirmed tracks, which is what the product publishes (the
MOT rows are confirmed tracks either way).

``tracker_ablation``: the cached detections and embeddings are tracked again by a fresh ``Tracker`` per variant
of ``hcq_ros.tracking.simulate.ABLATION_VARIANTS`` (IoU only, + ReID association, + lost-track
re-identification) over the Perceptor's own tracker settings; only the tracker runs again.

Ground-truth ids (``gt_ids``): "appearance" (default) = the MOTChallenge gt.txt track ids, a person who leaves
and comes back is a new object; "identity" = the SynthHumans identity, one object however often it returns
(what re-identification aims at).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from pycocotools import mask as mask_utils

from hcq_ros.data.formats import read_image, save_json
from hcq_ros.data.formats.mot import read_mot_sequence
from hcq_ros.result import Person, PersonFrame

from .predictions import GT_ANNOTATIONS, GT_MOT, KINDS

GT_IDS = ("appearance", "identity")


@dataclass
class FrameResult:
    """One evaluated frame: its COCO image id (None when the COCO json lacks it), 1-based frame number, stamp
    and the Perceptor's output."""
    image_id: Optional[int]
    frame: int
    stamp_ns: int
    result: PersonFrame


@dataclass
class SequenceResult:
    name: str
    fps: float
    length: int
    size: tuple[int, int]
    gt_rows: np.ndarray          # [N, 6] frame, id, x, y, w, h
    frames: list[FrameResult]


def find_sequences(data_dir: Path) -> list[Path]:
    mot_dir = data_dir / GT_MOT
    if not mot_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no {GT_MOT}/ folder (write one with hcq-ros synth --sequences K)")
    seqs = sorted(p for p in mot_dir.iterdir() if (p / "seqinfo.ini").is_file())
    if not seqs:
        raise ValueError(f"{mot_dir}: no sequence folder with a seqinfo.ini")
    return seqs


def _gt_rows(seq, coco, image_ids: dict[int, int], gt_ids: str) -> np.ndarray:
    if gt_ids == "appearance":
        return np.stack([seq.gt[k] for k in ("frame", "id", "x", "y", "w", "h")], axis=1).astype(np.float64)
    if coco is None:
        raise ValueError("gt_ids='identity' needs the COCO annotations (identity per person)")
    rows = []
    for frame, image_id in image_ids.items():
        for ann in coco.imgToAnns.get(image_id, []):
            if ann.get("iscrowd", 0) or ann.get("identity", -1) < 0:
                continue
            rows.append((frame, int(ann["identity"]) + 1, *ann["bbox"]))  # +1: MOT ids are positive
    return np.asarray(rows, np.float64).reshape(-1, 6)


def run_sequences(perceptor, data_dir: str | Path, coco=None, gt_ids: str = "appearance",
                  max_frames: Optional[int] = None, progress: bool = True,
                  on_frame: Optional[Callable[[np.ndarray, FrameResult], None]] = None) -> list[SequenceResult]:
    """Run the Perceptor over every sequence of ``data_dir``; on_frame(image, frame_result) after each frame."""
    from tqdm import tqdm

    from hcq_ros.pipeline_stages import run_stages

    if gt_ids not in GT_IDS:
        raise ValueError(f"gt_ids must be one of {GT_IDS}, got {gt_ids!r}")
    data_dir = Path(data_dir)
    by_frame: dict[tuple[str, int], int] = {}
    if coco is not None:
        by_frame = {(str(info.get("sequence", "")), int(info.get("frame", 0))): i for i, info in coco.imgs.items()}
    sequences = [read_mot_sequence(p) for p in find_sequences(data_dir)]
    total = sum(min(s.length, max_frames or s.length) for s in sequences)
    out = []
    with tqdm(total=total, desc="pipeline eval", unit="frame", disable=not progress, leave=False) as bar:
        for seq in sequences:
            perceptor.reset()
            length = min(seq.length, max_frames or seq.length)
            period = 1e9 / seq.fps
            frames, image_ids = [], {}
            inputs = ((frame, read_image(seq.image_dir / f"{frame:06d}{seq.image_ext}"),
                       int(round((frame - 1) * period))) for frame in range(1, length + 1))
            # pipelined: image reading + detector one frame ahead
            outputs = run_stages(inputs, lambda x, name=seq.name: (x, perceptor.detect(x[1], x[2], name)),
                                 lambda staged: (staged[0], perceptor.describe(staged[1])),
                                 pipelined=bool(getattr(perceptor.config, "pipelined", False)))
            for (frame, image, stamp), result in outputs:
                image_id = by_frame.get((seq.name, frame))
                if image_id is not None:
                    image_ids[frame] = image_id
                record = FrameResult(image_id, frame, stamp, result)
                frames.append(record)
                if on_frame is not None:
                    on_frame(image, record)
                bar.update(1)
            gt = _gt_rows(seq, coco, image_ids, gt_ids)
            out.append(SequenceResult(seq.name, seq.fps, length, seq.size, gt[gt[:, 0] <= length], frames))
    return out


def filter_persons(sequences: list[SequenceResult], keep: Callable[[Person], bool]) -> list[SequenceResult]:
    """Copies of cached sequences with only the persons ``keep`` accepts (the cache itself is unchanged)."""
    return [replace(seq, frames=[replace(fr, result=replace(fr.result, persons=[p for p in fr.result.persons
                                                                                 if keep(p)]))
                                 for fr in seq.frames]) for seq in sequences]


# ------------------------------------------------------------------------------------------ prediction files
def mot_rows(frames: list[FrameResult], track_ids: Optional[list[list[int]]] = None) -> np.ndarray:
    """[M, 6] MOT rows of the confirmed tracks (detection boxes); track_ids: per frame per person ids that
    replace the Perceptor's (tracker ablation)."""
    rows = []
    for k, fr in enumerate(frames):
        for j, p in enumerate(fr.result.persons):
            tid = p.track_id if track_ids is None else track_ids[k][j]
            if tid > 0:
                x0, y0, x1, y1 = (float(v) for v in p.box)
                rows.append((fr.frame, tid, x0, y0, x1 - x0, y1 - y0))
    return np.asarray(rows, np.float64).reshape(-1, 6)


def write_mot(path: Path, rows: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{int(r[0])},{int(r[1])},{r[2]:.3f},{r[3]:.3f},{r[4]:.3f},{r[5]:.3f},1,-1,-1,-1\n"
                            for r in rows), encoding="utf-8")


def full_image_map(person: Person, grid_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A box-grid map ([bh, bw], Person contract) placed into a zero full image [H, W] (size = (W, H))."""
    from hcq_ros.ros.visualization import grid_crop, clipped_grid

    w, h = size
    out = np.zeros((h, w), dtype=grid_map.dtype)
    x0, y0, x1, y1, _, _ = clipped_grid(person, w, h)
    out[y0:y1, x0:x1] = grid_crop(grid_map, person, w, h, "map")
    return out


def person_to_coco(image_id: int, person: Person, size: tuple[int, int], track_id: int) -> dict:
    """One COCO results entry (predictions.py format) of a published person."""
    x0, y0, x1, y1 = (float(v) for v in person.box)
    entry = {"image_id": int(image_id), "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
             "score": float(person.score), "keypoints": [float(v) for v in person.keypoints.reshape(-1)],
             "track_id": int(track_id)}
    if person.mask is not None:  # masks are on for every person or for none (enable_masks)
        full = full_image_map(person, person.mask, size) if person.mask.size else np.zeros((size[1], size[0]), bool)
        rle = mask_utils.encode(np.asfortranarray(full.astype(np.uint8)))
        entry["segmentation"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    if person.attributes:
        entry["attributes"] = {name: value for name, (value, _) in person.attributes.items()}
    return entry


def part_label_map(persons: list[Person], size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W] part labels of a frame: persons painted in increasing score order (the most confident on
    top), only their labelled (> 0) pixels."""
    w, h = size
    out = np.zeros((h, w), np.uint8)
    for p in sorted(persons, key=lambda q: q.score):
        if p.parts is not None and p.parts.size:
            full = full_image_map(p, p.parts, size)
            out[full > 0] = full[full > 0]
    return out


def write_predictions(sequences: list[SequenceResult], out_dir: Path, coco=None) -> dict[str, Path]:
    """mot/{seq}.txt, detections.json and parts/ (when the Perceptor produced part maps) under ``out_dir``."""
    import cv2

    from .parts import prediction_path

    written = {}
    for seq in sequences:
        write_mot(out_dir / KINDS["mot"] / f"{seq.name}.txt", mot_rows(seq.frames))
    written["mot"] = out_dir / KINDS["mot"]
    if coco is None:
        return written
    results = [person_to_coco(fr.image_id, p, seq.size, p.track_id) for seq in sequences for fr in seq.frames
               if fr.image_id is not None for p in fr.result.persons]
    save_json(out_dir / KINDS["detections"], results)
    written["detections"] = out_dir / KINDS["detections"]
    if any(p.parts is not None for seq in sequences for fr in seq.frames for p in fr.result.persons):
        for seq in sequences:
            for fr in seq.frames:
                parts_file = coco.imgs[fr.image_id].get("parts_file") if fr.image_id is not None else None
                if parts_file:
                    target = prediction_path(out_dir / KINDS["parts"], parts_file)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if not cv2.imwrite(str(target), part_label_map(fr.result.persons, seq.size)):
                        raise OSError(f"cannot write {target}")
        written["parts"] = out_dir / KINDS["parts"]
    return written


# ------------------------------------------------------------------------------------------ tracker ablation
def retrack(frames: list[FrameResult], config) -> tuple[list[list[int]], float]:
    """Track the cached detections again with a fresh Tracker(config) -> (per frame per person track ids, mean
    tracker ms per frame). Embeddings are used when every person of the stream has one."""
    from hcq_ros.tracking.tracker import Tracker

    tracker = Tracker(config)
    dims = {p.embedding.size for fr in frames for p in fr.result.persons}
    use_embeddings = len(dims) == 1 and 0 not in dims
    ids, seconds = [], 0.0
    for fr in frames:
        persons = fr.result.persons
        if fr.result.dropped is not None:
            ids.append([])
            continue
        boxes = np.asarray([p.box for p in persons], np.float64).reshape(-1, 4)
        scores = np.asarray([p.score for p in persons], np.float64)
        embeddings = np.stack([p.embedding for p in persons]) if use_embeddings and persons else None
        start = time.perf_counter()
        outputs = tracker.update(boxes, scores, embeddings, stamp_ns=fr.stamp_ns)
        seconds += time.perf_counter() - start
        ids.append([o.track_id for o in outputs])
    return ids, 1000.0 * seconds / max(1, len(frames))


def tracker_ablation(sequences: list[SequenceResult], base_config) -> list[dict]:
    """One row per ABLATION_VARIANTS entry: {variant, IDF1, MOTA, IDs, IDP, IDR, FP, FN, frag, ms}."""
    from hcq_ros.tracking.simulate import ABLATION_VARIANTS

    from .mot import evaluate_mot

    rows = []
    for variant, switches in ABLATION_VARIANTS.items():
        config = replace(base_config, **switches)
        results, timings = {}, []
        for seq in sequences:
            ids, ms = retrack(seq.frames, config)
            results[seq.name] = (seq.gt_rows, mot_rows(seq.frames, ids), seq.length)
            timings.append(ms)
        m = evaluate_mot(results)
        rows.append({"variant": variant, "IDF1": m["mot_IDF1"], "MOTA": m["mot_MOTA"], "IDs": m["id_switches"],
                     "IDP": m["mot_IDP"], "IDR": m["mot_IDR"], "FP": m["mot_FP"], "FN": m["mot_FN"],
                     "frag": m["mot_fragmentations"], "ms": round(float(np.mean(timings)), 3)})
    return rows


# ------------------------------------------------------------------------------------------ scoring
def score_sequences(sequences: list[SequenceResult], data_dir: Path, pred: dict[str, Path], coco=None,
                    verbose: bool = False) -> dict:
    """MOT metrics (against each sequence's gt rows) + COCO AP / attributes / parts on the frames run."""
    from .cli import score_detections
    from .detector import _subset
    from .mot import evaluate_mot
    from .parts import evaluate_part_maps
    from .predictions import load_detections

    metrics = evaluate_mot({s.name: (s.gt_rows, mot_rows(s.frames), s.length) for s in sequences})
    if coco is not None and "detections" in pred:
        ids = sorted(fr.image_id for s in sequences for fr in s.frames if fr.image_id is not None)
        sub = _subset(coco, ids)
        metrics.update(score_detections(sub, load_detections(pred["detections"]), verbose,
                                        source=str(pred["detections"])))
        if "parts" in pred and any(sub.imgs[i].get("parts_file") for i in ids):
            metrics.update(evaluate_part_maps(data_dir, pred["parts"], sub, ids))
    return metrics


def evaluate_pipeline(perceptor, data_dir: str | Path, pred_dir: str | Path, *, gt_ids: str = "appearance",
                      ablation: bool = False, max_frames: Optional[int] = None, verbose: bool = False,
                      progress: bool = True) -> dict:
    """Run, write predictions under ``pred_dir`` and score (see the module docstring). Returns the metrics
    plus ``pipeline`` (frames, dropped, persons, fps, mean stage ms, backends) and, with ``ablation``,
    ``tracker_ablation`` rows."""
    from hcq_ros.tracking.tracker import TrackerConfig

    from .coco_eval import load_coco_gt

    data_dir, pred_dir = Path(data_dir), Path(pred_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    coco = load_coco_gt(data_dir / GT_ANNOTATIONS) if (data_dir / GT_ANNOTATIONS).is_file() else None
    tracked_only = bool(getattr(perceptor.config, "tracked_only", False))
    if tracked_only:
        perceptor.set_runtime_options(tracked_only=False)   # cache every detection (tracker ablation)
    start = time.perf_counter()
    try:
        all_detections = run_sequences(perceptor, data_dir, coco, gt_ids, max_frames, progress)
    finally:
        if tracked_only:
            perceptor.set_runtime_options(tracked_only=True)
    wall = time.perf_counter() - start
    # what tracked_only publishes: the persons of confirmed tracks
    sequences = filter_persons(all_detections, lambda p: p.track_id > 0) if tracked_only else all_detections
    pred = write_predictions(sequences, pred_dir, coco)
    metrics = score_sequences(sequences, data_dir, pred, coco, verbose)
    frames = [fr.result for s in sequences for fr in s.frames]
    processed = [f for f in frames if f.dropped is None]
    stages: dict[str, float] = {}
    for f in processed:
        for stage, ms in f.timings_ms.items():
            stages[stage] = stages.get(stage, 0.0) + ms / len(processed)
    metrics["pipeline"] = {
        "sequences": len(sequences), "frames": len(frames), "dropped": len(frames) - len(processed),
        "persons": sum(len(f.persons) for f in processed), "gt_ids": gt_ids, "fps": round(len(frames) / wall, 2),
        "stage_ms": {k: round(v, 2) for k, v in stages.items()}, "backends": dict(perceptor.reasons),
        "predictions": {k: str(v) for k, v in pred.items()}}
    if ablation:
        base = TrackerConfig.from_dict(perceptor.config.tracker)
        metrics["tracker_ablation"] = tracker_ablation(all_detections, base)
    return metrics


def ablation_table(rows: list[dict]) -> str:
    """Markdown table of tracker_ablation rows."""
    lines = ["| variant | IDF1 | MOTA | ID switches | FP | FN | tracker ms/frame |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["variant"], *("n/a" if r[k] is None else f"{r[k]:.3f}" for k in ("IDF1", "MOTA")),
                 str(r["IDs"]), str(r["FP"]), str(r["FN"]), f"{r['ms']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
