"""Multi-object tracking metrics (CLEAR MOT + identity metrics) with py-motmetrics, per sequence and overall.

Per frame, ground-truth boxes and tracker boxes are compared by IoU (pycocotools' box IoU; motmetrics
1.4.0's own ``iou_matrix`` calls ``np.asfarray``, removed in NumPy 2); pairs with IoU < 0.5 cannot match
(distance NaN), others have distance 1 - IoU. ``motmetrics.MOTAccumulator`` then does the CLEAR-MOT
matching (keeping last frame's correspondences) and ``motmetrics.metrics`` computes:
MOTA, IDF1, IDP, IDR, recall, precision, ID switches, fragmentations, FP, FN, mostly tracked/lost and
MOTP. ``mot_MOTP`` is reported as the mean IoU of matched pairs (= 1 - motmetrics' mean distance), so higher
is better, as in the MOTChallenge devkit.

Ground truth: ``hcq_ros.data.formats.mot.read_mot_sequence`` (rows with conf 0 or a non-pedestrian class are
dropped, as the MOTChallenge devkit ignores them; boxes unshifted). Predictions: ``{seq}.txt`` per GT
sequence (``predictions.load_mot_results``). Every GT sequence needs a result file; a result file for an
unknown sequence is an error. The overall row is motmetrics' ``OVERALL`` (counts summed over sequences).

HOTA is not reported (no ``mot_HOTA`` key): motmetrics 1.4.0, the installed and latest PyPI release, has no
HOTA/DetA/AssA metric (none in ``motmetrics/metrics.py``). The PyPI package ``trackeval`` (1.3.0) is a
third-party repackaging of the reference TrackEval code that requires the GUI ``opencv-python`` wheel, which
clashes with this project's ``opencv-python-headless`` (both install ``cv2``), so it is not a dependency.

Keys: ``mot_MOTA``, ``mot_IDF1``, ``id_switches``, ``mot_MOTP``, ``mot_IDP``, ``mot_IDR``, ``mot_recall``,
``mot_precision``, ``mot_FP``, ``mot_FN``, ``mot_fragmentations``, ``mot_MT``, ``mot_ML``, ``mot_num_gt_ids``,
``mot_per_sequence`` ({seq: the same keys without the ``mot_`` prefix}).
"""
from __future__ import annotations

import math
from pathlib import Path

import motmetrics as mm
import numpy as np
from pycocotools import mask as mask_utils

from hcq_ros.data.formats.mot import read_mot_sequence

from .predictions import load_mot_results

MATCH_IOU = 0.5
# our name -> motmetrics metric name
_METRICS = {
    "MOTA": "mota", "IDF1": "idf1", "IDs": "num_switches", "MOTP": "motp", "IDP": "idp", "IDR": "idr",
    "recall": "recall", "precision": "precision", "FP": "num_false_positives", "FN": "num_misses",
    "fragmentations": "num_fragmentations", "MT": "mostly_tracked", "ML": "mostly_lost",
    "num_gt_ids": "num_unique_objects",
}


def _frame_slices(rows: np.ndarray, where: str) -> dict[int, np.ndarray]:
    """{frame: rows [n, 6] of that frame}; ValueError naming ``where`` for a repeated id in a frame."""
    rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    out = {}
    frames, starts = np.unique(rows[:, 0].astype(np.int64), return_index=True)
    for frame, chunk in zip(frames, np.split(rows, starts[1:])):
        if len(np.unique(chunk[:, 1])) != len(chunk):
            raise ValueError(f"{where}: frame {frame} has the same track id twice")
        out[int(frame)] = chunk
    return out


def accumulate_sequence(gt_rows: np.ndarray, pred_rows: np.ndarray, num_frames: int = 0,
                        iou_threshold: float = MATCH_IOU, where: str = "sequence") -> mm.MOTAccumulator:
    """motmetrics accumulator for one sequence; rows are ``[N, 6]`` (frame, id, x, y, w, h), frames 1-based.

    Frames 1..max(num_frames, last GT/predicted frame) are all fed (empty frames count as frames).
    """
    gt_frames = _frame_slices(np.asarray(gt_rows, np.float64).reshape(-1, 6), f"{where} (ground truth)")
    pred_frames = _frame_slices(np.asarray(pred_rows, np.float64).reshape(-1, 6), f"{where} (predictions)")
    last = max([num_frames, *gt_frames, *pred_frames])
    empty = np.zeros((0, 6))
    acc = mm.MOTAccumulator(auto_id=False)
    for frame in range(1, last + 1):
        gt, pred = gt_frames.get(frame, empty), pred_frames.get(frame, empty)
        if len(gt) and len(pred):
            iou = np.asarray(mask_utils.iou(gt[:, 2:6], pred[:, 2:6], [0] * len(pred)))  # [G, P]
            distance = np.where(iou >= iou_threshold, 1.0 - iou, np.nan)
        else:
            distance = np.zeros((len(gt), len(pred)))
        acc.update(gt[:, 1].astype(np.int64).tolist(), pred[:, 1].astype(np.int64).tolist(), distance,
                   frameid=frame)
    return acc


def _clean(value) -> float | None:
    """Float, None for NaN (motmetrics gives NaN for e.g. MOTA without GT; JSON has no NaN)."""
    value = float(value)
    return None if math.isnan(value) else value


def evaluate_mot(sequences: dict[str, tuple[np.ndarray, np.ndarray, int]],
                 iou_threshold: float = MATCH_IOU) -> dict:
    """Metrics of ``{seq: (gt_rows [N, 6], pred_rows [M, 6], num_frames)}`` (rows: frame, id, x, y, w, h)."""
    if not sequences:
        raise ValueError("no MOT sequences to evaluate")
    names = sorted(sequences)
    accumulators = [accumulate_sequence(*sequences[n], iou_threshold=iou_threshold, where=n) for n in names]
    handler = mm.metrics.create()
    summary = handler.compute_many(accumulators, names=names, metrics=list(_METRICS.values()),
                                   generate_overall=True)

    def row(name: str) -> dict:
        values = {ours: _clean(summary.loc[name, theirs]) for ours, theirs in _METRICS.items()}
        values["MOTP"] = None if values["MOTP"] is None else 1.0 - values["MOTP"]  # mean IoU of matches
        for key in ("IDs", "FP", "FN", "fragmentations", "MT", "ML", "num_gt_ids"):
            values[key] = int(values[key] or 0)
        return values

    overall = row("OVERALL")
    out = {f"mot_{k}": v for k, v in overall.items() if k != "IDs"}
    out["id_switches"] = overall["IDs"]
    out["mot_per_sequence"] = {n: row(n) for n in names}
    return out


def evaluate_mot_dir(gt_mot_dir: str | Path, pred_dir: str | Path, iou_threshold: float = MATCH_IOU) -> dict:
    """Score ``pred_dir/{seq}.txt`` against every ``gt_mot_dir/{seq}/`` that has a ``seqinfo.ini``."""
    gt_mot_dir, pred_dir = Path(gt_mot_dir), Path(pred_dir)
    if not gt_mot_dir.is_dir():
        raise FileNotFoundError(f"MOT ground-truth folder not found: {gt_mot_dir}")
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"MOT result folder not found: {pred_dir}")
    seq_dirs = sorted(p for p in gt_mot_dir.iterdir() if (p / "seqinfo.ini").is_file())
    if not seq_dirs:
        raise ValueError(f"{gt_mot_dir}: no sequence folder with a seqinfo.ini")
    unknown = sorted({p.stem for p in pred_dir.glob("*.txt")} - {p.name for p in seq_dirs})
    if unknown:
        raise ValueError(f"{pred_dir}: result files for unknown sequences {unknown} "
                         f"(ground truth has {[p.name for p in seq_dirs]})")
    sequences = {}
    for seq_dir in seq_dirs:
        seq = read_mot_sequence(seq_dir)
        gt = np.stack([seq.gt[k] for k in ("frame", "id", "x", "y", "w", "h")], axis=1).astype(np.float64)
        sequences[seq_dir.name] = (gt, load_mot_results(pred_dir / f"{seq_dir.name}.txt"), seq.length)
    return evaluate_mot(sequences, iou_threshold)
