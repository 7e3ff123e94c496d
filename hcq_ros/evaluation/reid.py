"""ReID mAP and CMC (rank-1/5/10) with the Market-1501 protocol, vectorised over queries.

Protocol (as Market-1501's evaluation code and torchreid/fast-reid):
- Embeddings are L2-normalised; distance = cosine distance ``1 - q·g`` (ranks exactly as Euclidean distance
  on the normalised vectors). Ties keep gallery order (stable sort).
- For each query, gallery crops of the same identity AND the same camera are removed from its ranking
  (they are "junk": the same track, too easy). Crops of identity -1 (Market's junk boxes) never enter the
  ranking (``read_market`` skips them); identity 0000 (distractors) stays in the gallery as negatives.
- A query with no remaining true match is skipped (counted in ``reid_skipped_queries``).
- CMC rank-k: fraction of queries whose first true match is within the first k remaining crops.
- AP: non-interpolated average precision over the ranked remaining gallery (mean of precision@hit over
  all true matches); mAP = mean AP over scored queries.
Keys: ``reid_mAP``, ``reid_rank1``, ``reid_rank5``, ``reid_rank10``, ``reid_num_queries``,
``reid_skipped_queries`` (+ ``crop_attr_acc``/``crop_attr_per_attribute`` when the npz has attributes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from hcq_ros.data.formats import read_market
from hcq_ros.data.formats.market import SPLIT_DIRS
from hcq_ros.data.schema import attributes_to_indices

from .attributes import AttributeAccuracy
from .predictions import load_reid_npz


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``float [N, D]`` scaled to unit length (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def evaluate_reid(query_embeddings: np.ndarray, query_ids: np.ndarray, query_cams: np.ndarray,
                  gallery_embeddings: np.ndarray, gallery_ids: np.ndarray, gallery_cams: np.ndarray,
                  ranks: Sequence[int] = (1, 5, 10), chunk: int = 256) -> dict:
    """mAP / CMC of queries ``[Q, D]`` (ids, cams ``[Q]``) against a gallery ``[G, D]`` (ids, cams ``[G]``).

    Works on ``chunk`` queries at a time so that memory stays ``O(chunk * G)``.
    """
    q, g = l2_normalise(query_embeddings), l2_normalise(gallery_embeddings)
    q_ids, q_cams = np.asarray(query_ids), np.asarray(query_cams)
    g_ids, g_cams = np.asarray(gallery_ids), np.asarray(gallery_cams)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"query and gallery embeddings must be [Q, D] and [G, D], "
                         f"got {list(q.shape)} and {list(g.shape)}")
    if len(q_ids) != len(q) or len(q_cams) != len(q) or len(g_ids) != len(g) or len(g_cams) != len(g):
        raise ValueError("ids and cameras must have one entry per embedding")
    ranks = tuple(int(k) for k in ranks)
    hits_at = np.zeros(len(ranks), dtype=np.int64)
    ap_sum, scored = 0.0, 0
    for start in range(0, len(q), chunk):
        stop = min(start + chunk, len(q))
        distance = 1.0 - q[start:stop] @ g.T                                   # [B, G]
        order = np.argsort(distance, axis=1, kind="stable")
        same_id = g_ids[order] == q_ids[start:stop, None]                       # [B, G] in ranked order
        kept = ~(same_id & (g_cams[order] == q_cams[start:stop, None]))         # drop same id + same camera
        good = same_id & kept
        num_good = good.sum(axis=1)
        has_match = num_good > 0
        kept_rank = np.cumsum(kept, axis=1)                                     # 1-based rank among kept crops
        first_rank = kept_rank[np.arange(len(good)), np.argmax(good, axis=1)]   # rank of the first true match
        for i, k in enumerate(ranks):
            hits_at[i] += int((has_match & (first_rank <= k)).sum())
        precision_at_hits = np.where(good, np.cumsum(good, axis=1) / np.maximum(kept_rank, 1), 0.0)
        ap = precision_at_hits.sum(axis=1)[has_match] / num_good[has_match]
        ap_sum += float(ap.sum())
        scored += int(has_match.sum())
    out = {"reid_mAP": ap_sum / scored if scored else None}
    for k, hits in zip(ranks, hits_at):
        out[f"reid_rank{k}"] = float(hits / scored) if scored else None
    out["reid_num_queries"] = scored
    out["reid_skipped_queries"] = len(q) - scored
    return out


def evaluate_reid_npz(market_dir: str | Path, npz_path: str | Path) -> dict:
    """Score a ``reid.npz`` (see ``predictions``) on ``market_dir``'s query vs bounding_box_test split."""
    market_dir, npz_path = Path(market_dir), Path(npz_path)
    preds = load_reid_npz(npz_path)
    row_of = {name: i for i, name in enumerate(preds.names)}
    splits = {split: read_market(market_dir, split) for split in ("query", "test")}
    if not splits["query"] or not splits["test"]:
        raise ValueError(f"{market_dir}: query and bounding_box_test must both hold crops")
    rows = {}
    for split, items in splits.items():
        names = [f"{SPLIT_DIRS[split]}/{item.path.name}" for item in items]
        missing = [n for n in names if n not in row_of]
        if missing:
            raise ValueError(f"{npz_path}: no embedding for {len(missing)} of {len(names)} {split} crops, "
                             f"e.g. {missing[0]!r}")
        rows[split] = np.array([row_of[n] for n in names], dtype=np.int64)
    known = {f"{SPLIT_DIRS[s]}/{item.path.name}" for s, items in splits.items() for item in items}
    for name in preds.names:
        if name not in known and not (market_dir / name).is_file():
            raise ValueError(f"{npz_path}: crop {name!r} does not exist under {market_dir}")

    def ids_cams(items) -> tuple[np.ndarray, np.ndarray]:
        return np.array([it.identity for it in items]), np.array([it.camera for it in items])

    out = evaluate_reid(preds.embeddings[rows["query"]], *ids_cams(splits["query"]),
                        preds.embeddings[rows["test"]], *ids_cams(splits["test"]))
    if preds.attributes is not None:
        accuracy = AttributeAccuracy()
        for split, items in splits.items():
            labelled = [i for i, item in enumerate(items) if item.attributes]
            if labelled:
                gt = np.stack([attributes_to_indices(items[i].attributes) for i in labelled])
                accuracy.update_indices(gt, preds.attributes[rows[split][labelled]])
        out.update(accuracy.result("crop_attr"))
    return out
